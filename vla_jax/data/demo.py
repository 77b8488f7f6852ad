"""The embedded demo dataset: a procedurally generated pick-up task in RLDS format.

Each scene holds three blocks of different colours on a table; the instruction
names one ("pick up the red block") and a scripted end-effector moves over that
block, descends, closes its gripper and lifts. The right action depends on both
the image (where the blocks are) and the instruction (which one), so a policy
that ignores either cannot do well.

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
from vla_jax.errors import DataError

NAME = "vla_demo"
VERSION = "1.3.0"  # bump whenever the generator changes
MANIFEST = "vla_jax_manifest.json"
IMAGE_SIZE = 64
CONTROL_FREQUENCY_HZ = 10.0
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 200),
}
TEMPLATES = ("pick up the {} block", "grab the {} block", "lift the {} cube", "pick the {} one up")
BLOCK_HALF = 0.06  # block half-width, world units
WRIST_VIEW = 0.36  # side of the wrist camera's view, world units
MAX_XY_STEP = 0.06
Z_STEP = 0.5
MAX_STEPS = 60
CONFIG_NAME = "default"
TRAIN_EPISODES = 2000
VAL_EPISODES = 50
NUM_SHARDS = 8  # record files per split, so hosts of a multi-host run read disjoint files


def _render(blocks, colors, ee, gripper_open, view, size, shade) -> np.ndarray:
    """Renders the table seen through ``view = (x0, y0, width)`` as uint8 [size, size, 3]."""
    x0, y0, width = view
    coords = (np.arange(size) + 0.5) / size * width
    xs = x0 + coords[None, :]  # image column -> world x
    ys = y0 + coords[:, None]  # image row -> world y
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.array([170, 160, 140], np.float32) * shade
    for (bx, by), color in zip(blocks, colors):
        inside = (np.abs(xs - bx) <= BLOCK_HALF) & (np.abs(ys - by) <= BLOCK_HALF)
        image[inside] = color
    ex, ey, ez = ee
    arm = 0.012 + 0.012 * ez  # the marker grows with height
    cross = ((np.abs(xs - ex) <= arm * 2.5) & (np.abs(ys - ey) <= arm * 0.6)) | (
        (np.abs(ys - ey) <= arm * 2.5) & (np.abs(xs - ex) <= arm * 0.6)
    )
    image[cross] = (250, 250, 250) if gripper_open else (20, 20, 20)
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def generate_episode(rng: np.random.Generator) -> dict:
    """One scripted episode: RLDS-layout ``steps`` plus the scene it was drawn from."""
    names = rng.choice(list(COLORS), size=3, replace=False)
    blocks = []
    while len(blocks) < 3:
        candidate = rng.uniform(0.12, 0.88, size=2)
        if all(np.linalg.norm(candidate - b) > 0.25 for b in blocks):
            blocks.append(candidate)
    start_blocks = [b.copy() for b in blocks]
    target = int(rng.integers(3))
    instruction = str(rng.choice(TEMPLATES)).format(names[target])
    colors = [COLORS[n] for n in names]
    shade = rng.uniform(0.85, 1.15)
    pos = np.array([*rng.uniform(0.05, 0.95, size=2), 1.0])
    gripper = 1.0
    phase = "move"
    steps = []
    while len(steps) < MAX_STEPS:
        to_target = blocks[target] - pos[:2]
        dz = 0.0
        if phase == "move" and np.linalg.norm(to_target) < 0.02:
            phase = "descend"
        if phase == "descend" and pos[2] <= 0.0:
            phase = "grasp"
        if phase == "grasp" and gripper == 0.0:
            phase = "lift"
        if phase == "lift" and pos[2] >= 1.0:
            break
        dxy = to_target if phase in ("move", "descend") else np.zeros(2)
        norm = np.linalg.norm(dxy)
        if norm > MAX_XY_STEP:
            dxy = dxy * (MAX_XY_STEP / norm)
        dxy = dxy + rng.normal(0.0, 0.004, size=2)
        if phase == "descend":
            dz = -Z_STEP
        elif phase == "lift":
            dz = Z_STEP
        gripper_command = 0.0 if phase in ("grasp", "lift") else 1.0
        action = np.array([dxy[0], dxy[1], dz, gripper_command], np.float32)
        state = np.array([pos[0], pos[1], pos[2], gripper], np.float32)
        wrist_view = (pos[0] - WRIST_VIEW / 2, pos[1] - WRIST_VIEW / 2, WRIST_VIEW)
        steps.append(
            {
                "observation": {
                    "image": _jpeg(_render(blocks, colors, pos, gripper > 0.5, (0, 0, 1), IMAGE_SIZE, shade)),
                    "wrist_image": _jpeg(_render(blocks, colors, pos, gripper > 0.5, wrist_view, IMAGE_SIZE, shade)),
                    "state": state,
                },
                "action": action,
                "language_instruction": instruction,
            }
        )
        pos = pos + np.array([dxy[0], dxy[1], dz])
        pos[2] = np.clip(pos[2], 0.0, 1.0)
        gripper = gripper_command
        if phase == "lift":  # the grasped block travels with the gripper
            blocks[target] = pos[:2].copy()
    scene = {
        "target_color": str(names[target]),
        "block_colors": [str(n) for n in names],
        "block_positions": start_blocks,
    }
    last = len(steps) - 1
    for i, step in enumerate(steps):
        step.update(
            is_first=i == 0,
            is_last=i == last,
            is_terminal=i == last,
            reward=np.float32(i == last),
            discount=np.float32(1.0),
        )
    return {"steps": steps, **scene}


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
                        },
                    }
                ),
                description="vla_jax procedural pick-up demo: state [x, y, z, gripper], action [dx, dy, dz, gripper].",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {
                "train": self._generate_examples("train", TRAIN_EPISODES, seed=0),
                "val": self._generate_examples("val", VAL_EPISODES, seed=1),
            }

        def _generate_examples(self, split, num_episodes, seed):
            for index in range(num_episodes):
                episode = generate_episode(np.random.default_rng([seed, index]))
                key = f"{split}_{index:06d}"
                yield (
                    key,
                    {
                        "steps": episode["steps"],
                        "episode_metadata": {"file_path": key, "target_color": episode["target_color"]},
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
    source = inspect.getsource(_render) + inspect.getsource(generate_episode)
    constants = repr(
        (
            IMAGE_SIZE,
            COLORS,
            TEMPLATES,
            BLOCK_HALF,
            WRIST_VIEW,
            MAX_XY_STEP,
            Z_STEP,
            MAX_STEPS,
            TRAIN_EPISODES,
            VAL_EPISODES,
            NUM_SHARDS,
        )
    )
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
