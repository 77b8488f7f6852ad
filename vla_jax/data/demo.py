"""The embedded demo dataset: the demo task's scripted rollouts in RLDS format.

Each scene holds three blocks of different colours on a table; the instruction
names one ("pick up the red block") and a scripted end-effector moves over that
block, descends, closes its gripper and lifts. The right action depends on both
the image (where the blocks are) and the instruction (which one), so a policy
that ignores either cannot do well. Every episode is the expert of
:mod:`vla_jax.envs.demo` rolled out in that environment from a recorded seed
(``episode_metadata/seed``): closed-loop evaluation runs the same task.

A second builder config, ``absolute``, is another robot on the same task, the
fine-tuning example: its actions are absolute end-effector targets ``[x, y, z,
gripper]`` (where the gripper is after the step) and it has one camera, the
table view; 400 training episodes from other scenes (seeds 10,000+).

The dataset is written with tensorflow-datasets as a real RLDS builder directory
(``vla_demo/<config>/<version>``) into a cache dir on first use and reused after.
A manifest of file sizes and SHA-256 digests, written last, guards the cache:
a missing or mismatching manifest is reported as a corrupt cache, never read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
import pathlib
import shutil
import sys
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
ABSOLUTE = "absolute"  # the builder config of the second robot (absolute targets, one camera)
CONFIGS = {  # builder config -> (train episodes, val episodes, split seeds)
    CONFIG_NAME: (TRAIN_EPISODES, VAL_EPISODES, SPLIT_SEEDS),
    ABSOLUTE: (400, VAL_EPISODES, {"train": 10_000, "val": env_base.VAL_SEED_BASE + 5_000}),
}


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


def generate_absolute_episode(seed: int) -> dict:
    """The same rollout as the second robot records it: absolute ``[x, y, z, gripper]`` targets, one camera.

    The target of step ``t`` is where the end effector is after it (the next
    state's position; the environment clips moves to the table's unit cube).
    """
    episode = generate_episode(seed)
    steps = episode["steps"]
    for i, step in enumerate(steps):
        state = step["observation"]["state"]
        after = steps[i + 1]["observation"]["state"] if i + 1 < len(steps) else None
        delta = step["action"]
        position = after[:3] if after is not None else np.clip(state[:3] + delta[:3], 0.0, 1.0)
        step["action"] = np.array([*position, delta[3]], np.float32)
        del step["observation"]["wrist_image"]
    return episode


@functools.cache  # TFDS registers the class by name: define it once per process
def _builder_class():
    """The TFDS builder, defined lazily so that importing this module stays cheap."""
    import tensorflow_datasets as tfds

    class VlaDemo(tfds.core.GeneratorBasedBuilder):
        """Procedural language-conditioned pick-up task (RLDS)."""

        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in CONFIGS]

        def _info(self):
            image = tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="jpeg")
            cameras = (
                {"image": image} if self.builder_config.name == ABSOLUTE else {"image": image, "wrist_image": image}
            )
            action = "[x, y, z, gripper] targets" if self.builder_config.name == ABSOLUTE else "[dx, dy, dz, gripper]"
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "steps": tfds.features.Dataset(
                            {
                                "observation": {
                                    **cameras,
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
                description=f"vla_jax procedural pick-up demo: state [x, y, z, gripper], action {action}.",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            train, val, _ = CONFIGS[self.builder_config.name]
            return {"train": self._generate_examples("train", train), "val": self._generate_examples("val", val)}

        def _generate_examples(self, split, num_episodes):
            absolute = self.builder_config.name == ABSOLUTE
            for index in range(num_episodes):
                seed = CONFIGS[self.builder_config.name][2][split] + index
                episode = generate_absolute_episode(seed) if absolute else generate_episode(seed)
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


def generator_fingerprint(config_name: str = CONFIG_NAME) -> str:
    """Hash of the generator's source: a cache made by other code is not this dataset."""
    source = inspect.getsource(demo_env) + inspect.getsource(generate_episode) + inspect.getsource(_jpeg)
    constants = repr((TRAIN_EPISODES, VAL_EPISODES, NUM_SHARDS, SPLIT_SEEDS))
    if config_name != CONFIG_NAME:
        if config_name not in CONFIGS:
            return f"unknown config {config_name!r}"
        source += inspect.getsource(generate_absolute_episode)
        constants += repr(CONFIGS[config_name])
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
    if generator != generator_fingerprint(manifest.get("config", CONFIG_NAME)):
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


def builder_dir(data_dir: str | os.PathLike, config_name: str = CONFIG_NAME) -> pathlib.Path:
    return pathlib.Path(data_dir) / NAME / config_name / VERSION


def ensure_demo_dataset(data_dir: str | os.PathLike | None = None, config_name: str = CONFIG_NAME) -> pathlib.Path:
    """Returns the demo's RLDS builder dir under ``data_dir``, generating it on first use.

    Generation happens in a temporary directory that is renamed into place only
    once complete and checksummed, so an interrupted run leaves nothing behind
    that could be mistaken for a dataset.
    """
    data_dir = pathlib.Path(data_dir) if data_dir else cache_dir() / "datasets"
    if config_name not in CONFIGS:
        raise DataError(f"demo dataset: no builder config {config_name!r}; it has {sorted(CONFIGS)}")
    target = builder_dir(data_dir, config_name)
    if target.exists():
        verify_cache(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".vla_demo-", dir=target.parent))
    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        # Progress goes to stderr (TFDS prints its own lines too): stdout may be a command's --json output.
        with contextlib.redirect_stdout(sys.stderr):
            print(f"vla_jax: generating the demo dataset ({config_name}) into {target} (once)", flush=True)
            builder = _builder_class()(data_dir=str(staging), config=config_name)
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=NUM_SHARDS))
        built = pathlib.Path(builder.data_dir)
        manifest = {
            "name": NAME, "version": VERSION, "config": config_name, "generator": generator_fingerprint(config_name),
            "files": _file_digests(built),
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
