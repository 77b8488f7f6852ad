"""The embedded demo dataset: the demo task's scripted rollouts in RLDS format.

Each scene holds three blocks of different colours on a table; the instruction
names one ("pick up the red block") and a scripted end-effector moves over that
block, descends, closes its gripper and lifts. The right action depends on both
the image (where the blocks are) and the instruction (which one), so a policy
that ignores either cannot do well. Every episode is the expert of
:mod:`vla_jax.envs.demo` rolled out in that environment from a recorded seed
(``episode_metadata/seed``): closed-loop evaluation runs the same task.

The dataset is written with tensorflow-datasets as a real RLDS builder directory
(``vla_demo/<config>/1.0.0``) into a cache dir on first use and reused after.
A manifest of file sizes and SHA-256 digests, written last, guards the cache:
a missing or mismatching manifest is reported as a corrupt cache, never read.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from vla_jax.data import cache_dir
from vla_jax.envs import base as env_base
from vla_jax.envs import demo as demo_env
from vla_jax.errors import DataError

NAME = "vla_demo"
VERSION = "1.4.0"  # bump whenever the generator changes
MANIFEST = "vla_jax_manifest.json"
IMAGE_SIZE = demo_env.IMAGE_SIZE
CONTROL_FREQUENCY_HZ = demo_env.CONTROL_FREQUENCY_HZ
CONFIG_NAME = "default"
TRAIN_EPISODES = 2000
VAL_EPISODES = 50
NUM_SHARDS = 8  # record files per split, so hosts of a multi-host run read disjoint files
SPLIT_SEEDS = {"train": 0, "val": env_base.VAL_SEED_BASE}  # episode i of a split is the env's seed base + i


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def generate_episode(seed: int) -> dict:
    """The scripted expert's episode in the demo environment from ``seed``, in RLDS layout, plus its scene."""
    episode = demo_env.expert_episode(seed, IMAGE_SIZE)
    if not episode["success"]:
        raise DataError(f"demo dataset: the scripted expert failed the episode of seed {seed}")
    steps = []
    last = len(episode["steps"]) - 1
    for i, step in enumerate(episode["steps"]):
        obs = step["observation"]
        steps.append(
            {
                "observation": {
                    "image": _jpeg(obs["image/primary"]),
                    "wrist_image": _jpeg(obs["image/wrist"]),
                    "state": obs["state"],
                },
                "action": step["action"],
                "language_instruction": episode["instruction"],
                "is_first": i == 0,
                "is_last": i == last,
                "is_terminal": i == last,
                "reward": np.float32(i == last),
                "discount": np.float32(1.0),
            }
        )
    return {"steps": steps, "target_color": episode["target_color"], "block_colors": episode["block_colors"]}


def _builder_class():
    """The TFDS builder, defined lazily so that importing this module stays cheap."""
    import tensorflow_datasets as tfds

    class VlaDemo(tfds.core.GeneratorBasedBuilder):
        """Procedural language-conditioned pick-up task (RLDS)."""

        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=CONFIG_NAME)]

        def _info(self):
            image = tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg")
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "steps": tfds.features.Dataset(
                            {
                                "observation": {
                                    "image": image,
                                    "wrist_image": image,
                                    "state": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                                },
                                "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                                "language_instruction": tfds.features.Text(),
                                "reward": tfds.features.Scalar(dtype=np.float32),
                                "discount": tfds.features.Scalar(dtype=np.float32),
                                "is_first": tfds.features.Scalar(dtype=np.bool_),
                                "is_last": tfds.features.Scalar(dtype=np.bool_),
                                "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                            }
                        ),
                        "episode_metadata": {
                            "file_path": tfds.features.Text(),
                            "target_color": tfds.features.Text(),
                            "seed": tfds.features.Scalar(dtype=np.int64),
                        },
                    }
                ),
                description="vla_jax procedural pick-up demo: state [x, y, z, gripper], action [dx, dy, dz, gripper].",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {
                "train": self._generate_examples("train", TRAIN_EPISODES),
                "val": self._generate_examples("val", VAL_EPISODES),
            }

        def _generate_examples(self, split, num_episodes):
            for index in range(num_episodes):
                seed = SPLIT_SEEDS[split] + index
                episode = generate_episode(seed)
                key = f"{split}_{index:06d}"
                yield (
                    key,
                    {
                        "steps": episode["steps"],
                        "episode_metadata": {"file_path": key, "target_color": episode["target_color"], "seed": seed},
                    },
                )

    return VlaDemo


def _file_digests(directory: pathlib.Path) -> dict[str, dict]:
    digests = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digests[str(path.relative_to(directory))] = {
                "bytes": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
    return digests


def generator_fingerprint() -> str:
    """Hash of the generator's source: a cache made by other code is not this dataset."""
    source = inspect.getsource(demo_env) + inspect.getsource(generate_episode) + inspect.getsource(_jpeg)
    constants = repr((TRAIN_EPISODES, VAL_EPISODES, NUM_SHARDS, SPLIT_SEEDS))
    return hashlib.sha256((source + constants).encode()).hexdigest()[:16]


def verify_cache(builder_dir: pathlib.Path) -> None:
    """Raises DataError naming the first problem if the cached dataset is not intact."""
    manifest_path = builder_dir / MANIFEST
    fix = f"delete {builder_dir} to regenerate it"
    if not manifest_path.is_file():
        raise DataError(f"demo dataset cache at {builder_dir} is corrupt: no {MANIFEST} (interrupted write?); {fix}")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected, generator = manifest["files"], manifest["generator"]
    except (ValueError, KeyError) as e:
        raise DataError(f"demo dataset cache at {builder_dir} is corrupt: unreadable {MANIFEST} ({e}); {fix}") from None
    if generator != generator_fingerprint():
        raise DataError(f"demo dataset cache at {builder_dir} was made by another version of the generator; {fix}")
    actual = _file_digests(builder_dir)
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            raise DataError(f"demo dataset cache at {builder_dir} is corrupt: file {name} is missing; {fix}")
        if got != want:
            raise DataError(
                f"demo dataset cache at {builder_dir} is corrupt: file {name} has {got['bytes']} bytes "
                f"(sha256 {got['sha256'][:12]}), expected {want['bytes']} (sha256 {want['sha256'][:12]}); {fix}"
            )


def builder_dir(data_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(data_dir) / NAME / CONFIG_NAME / VERSION


def ensure_demo_dataset(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Returns the demo's RLDS builder dir under ``data_dir``, generating it on first use.

    Generation happens in a temporary directory that is renamed into place only
    once complete and checksummed, so an interrupted run leaves nothing behind
    that could be mistaken for a dataset.
    """
    data_dir = pathlib.Path(data_dir) if data_dir else cache_dir() / "datasets"
    target = builder_dir(data_dir)
    if target.exists():
        verify_cache(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".vla_demo-", dir=target.parent))
    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        print(f"vla_jax: generating the demo dataset into {target} (once)", flush=True)
        builder = _builder_class()(data_dir=str(staging), config=CONFIG_NAME)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=NUM_SHARDS))
        built = pathlib.Path(builder.data_dir)
        manifest = {
            "name": NAME, "version": VERSION, "generator": generator_fingerprint(), "files": _file_digests(built),
        }  # fmt: skip
        (built / MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.rename(built, target)
        except OSError:
            if not target.exists():  # not a concurrent writer winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    verify_cache(target)
    return target
