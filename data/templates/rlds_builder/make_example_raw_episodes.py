"""Writes a few synthetic raw episodes in the layout ``my_robot_dataset_builder.py`` reads.

The worked example of the builder template::

    python make_example_raw_episodes.py /tmp/my_robot_raw
    python my_robot_dataset_builder.py --raw-dir /tmp/my_robot_raw --data-dir /tmp/rlds

Each episode is a scripted end-effector moving to a random goal, closing its
gripper half-way, seen by a fixed camera and a wrist camera. The shapes match
the builder's ``IMAGE_SHAPE``, ``STATE_DIM`` and ``ACTION_DIM``.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

IMAGE_SHAPE = (64, 64, 3)
STATE_DIM = 8
ACTION_DIM = 7
INSTRUCTIONS = ("pick up the red cup", "push the block to the left", "open the drawer", "stack the blue cube")


def _frame(center: np.ndarray, color: tuple[int, int, int], size: int) -> np.ndarray:
    """A smooth background with a square marker at ``center`` (in [0, 1]^2): uint8 [size, size, 3]."""
    ramp = np.linspace(60, 180, size, dtype=np.float32)
    image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 120.0)], -1)
    row, col = (np.clip(center, 0.0, 1.0) * (size - 1)).astype(int)
    half = max(size // 16, 1)
    image[max(row - half, 0) : row + half + 1, max(col - half, 0) : col + half + 1] = color
    return image.astype(np.uint8)


def make_episode(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One synthetic episode as the arrays of a raw ``.npz`` file."""
    length = int(rng.integers(12, 25))
    start, goal = rng.uniform(0.1, 0.9, size=3), rng.uniform(0.1, 0.9, size=3)
    positions = start + (goal - start) * np.linspace(0.0, 1.0, length + 1)[:, None]
    positions = positions + rng.normal(0.0, 0.005, size=positions.shape)
    euler = np.cumsum(rng.normal(0.0, 0.02, size=(length + 1, 3)), axis=0)
    gripper = (np.arange(length) < length // 2).astype(np.float32)  # open (1) then closed (0)
    fingers = np.repeat(0.04 * gripper[:, None], 2, axis=1)

    state = np.concatenate([positions[:-1], euler[:-1], fingers], axis=1).astype(np.float32)
    action = np.concatenate([np.diff(positions, axis=0), np.diff(euler, axis=0), gripper[:, None]], axis=1)
    size = IMAGE_SHAPE[0]
    image = np.stack([_frame(p[:2], (230, 40, 40), size) for p in positions[:-1]])
    wrist_image = np.stack([_frame(goal[:2] - p[:2] + 0.5, (40, 40, 230), size) for p in positions[:-1]])
    return {
        "image": image,
        "wrist_image": wrist_image,
        "state": state,
        "action": action.astype(np.float32),
        "language_instruction": np.array(INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]),
    }


def write_example_raw_episodes(
    raw_dir: str | pathlib.Path, num_train: int = 4, num_val: int = 2, seed: int = 0
) -> list[pathlib.Path]:
    """Writes ``raw_dir/{train,val}/episode_NNNN.npz`` and returns the paths written."""
    raw_dir = pathlib.Path(raw_dir)
    paths = []
    for split, count in (("train", num_train), ("val", num_val)):
        (raw_dir / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            episode = make_episode(np.random.default_rng([seed, index, split == "val"]))
            path = raw_dir / split / f"episode_{index:04d}.npz"
            np.savez(path, **episode)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", help="where to write train/ and val/")
    parser.add_argument("--train", type=int, default=4, help="number of train episodes")
    parser.add_argument("--val", type=int, default=2, help="number of val episodes")
    args = parser.parse_args()
    for path in write_example_raw_episodes(args.raw_dir, args.train, args.val):
        print(path)


if __name__ == "__main__":
    main()
