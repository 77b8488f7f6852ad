"""Tiny RLDS datasets of different layouts, written on the fly, with their specs.

Actions and states hold known values (``episode * 1000 + step * 10 + dim``-style
ramps plus noise) so tests can compare pipeline output with the raw arrays.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zlib

import numpy as np

from vla_jax.data import specs
from vla_jax.data.rlds_writer import write_rlds

IMAGE = 16


@dataclasses.dataclass(frozen=True)
class Layout:
    spec: specs.DatasetSpec
    cameras: dict  # raw key -> channels
    depth: tuple = ()
    state_dim: int = 0
    language: bool = True
    lengths: tuple = (5, 8, 12, 7, 9, 6, 10, 11)


def _episode(layout: Layout, index: int, length: int, rng: np.random.Generator) -> dict:
    action_dim = layout.spec.action_dim
    action = (index * 100 + np.arange(length)[:, None] + np.arange(action_dim)[None, :] / 10.0).astype(np.float32)
    action += rng.normal(scale=0.01, size=action.shape).astype(np.float32)
    for d in layout.spec.gripper_dims:
        action[:, d] = (np.arange(length) % 2).astype(np.float32)  # 1=open, 0=closed
    observation = {
        key: rng.integers(0, 255, (length, IMAGE, IMAGE + 4 * i, 3), dtype=np.uint8)
        for i, key in enumerate(layout.cameras)
    }
    for key in layout.depth:
        observation[key] = rng.integers(0, 5000, (length, IMAGE, IMAGE, 1), dtype=np.uint16)
    if layout.state_dim:
        observation["state"] = rng.normal(size=(length, layout.state_dim)).astype(np.float32) + index
    steps = {
        "observation": observation,
        "action": action,
        "is_first": np.arange(length) == 0,
        "is_last": np.arange(length) == length - 1,
        "is_terminal": np.arange(length) == length - 1,
        "reward": np.zeros(length, np.float32),
        "discount": np.ones(length, np.float32),
    }
    if layout.language:
        steps["language_instruction"] = np.array([f"task {index % 3} of {layout.spec.name}"] * length)
    return {"steps": steps, "episode_metadata": {"file_path": f"{layout.spec.name}/episode_{index}"}}


def layouts() -> dict[str, Layout]:
    def spec(name, **kw):
        return specs.DatasetSpec(name=name, version="1.0.0", val_split=None, val_fraction=0.25, **kw)

    eef7 = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
    joints = tuple(f"{arm}_{j}" for arm in ("left", "right") for j in [*map(str, range(6)), "gripper"])
    return {
        "one_camera": Layout(
            spec("tiny_one_camera", action_space="eef_delta", action_dims=eef7,
                 normalize_action=(True,) * 6 + (False,), control_frequency_hz=10.0,
                 cameras={"primary": "image"}, state_keys=("state",), state_encoding="eef_pos_euler"),
            cameras={"image": 3}, state_dim=8,
        ),
        "cameras_depth": Layout(
            spec("tiny_cameras_depth", action_space="eef_delta", action_dims=eef7,
                 normalize_action=(True,) * 6 + (False,), control_frequency_hz=15.0,
                 cameras={"primary": "image", "secondary": "image_side", "wrist": "wrist_image"},
                 depth_cameras={"primary": "depth"}, state_keys=("state",), state_encoding="eef_pos_euler"),
            cameras={"image": 3, "image_side": 3, "wrist_image": 3}, depth=("depth",), state_dim=7,
        ),
        "bimanual_no_language": Layout(
            spec("tiny_bimanual", action_space="bimanual_joint_position", action_dims=joints,
                 normalize_action=tuple("gripper" not in j for j in joints), control_frequency_hz=50.0,
                 cameras={"primary": "image", "wrist": "wrist_image"}, state_keys=("state",),
                 state_encoding="joint_bimanual", language_key=None),
            cameras={"image": 3, "wrist_image": 3}, state_dim=14, language=False,
        ),
    }  # fmt: skip


def build(root: pathlib.Path, layout: Layout, num_shards: int | None = 4) -> dict:
    """Writes ``layout``'s dataset under ``root`` and registers its spec; returns the raw episodes."""
    rng = np.random.default_rng(zlib.crc32(layout.spec.name.encode()))
    episodes = [_episode(layout, i, n, rng) for i, n in enumerate(layout.lengths)]
    write_rlds(root, layout.spec.name, {"train": episodes}, version=layout.spec.version, num_shards=num_shards)
    specs.register(layout.spec)
    return {"episodes": episodes}
