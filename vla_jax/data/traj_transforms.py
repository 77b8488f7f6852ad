"""Transforms of whole standardized trajectories (leading time axis ``T``).

In pipeline order: filters -> resample to a target control rate -> normalize ->
pad to the unified action/state width -> goal relabeling -> action chunks ->
observation history -> subsample. Random choices are stateless, seeded from the
run seed and the trajectory's position in the stream.
"""

from __future__ import annotations

import tensorflow as tf

from vla_jax.data.specs import ACTION_SPACES, DatasetSpec
from vla_jax.data.statistics import DatasetStatistics, normalize


def has_language(traj: dict) -> tf.Tensor:
    """Filter predicate: the trajectory has a non-empty instruction."""
    return tf.reduce_any(tf.strings.length(traj["language_instruction"]) > 0)


def actions_within(traj: dict, max_abs: float) -> tf.Tensor:
    """Filter predicate: every (raw, standardized) action value is finite and within ``max_abs``."""
    action = traj["action"]
    return tf.reduce_all(tf.math.is_finite(action)) & tf.reduce_all(tf.abs(action) <= max_abs)


def resample_stride(spec: DatasetSpec, target_hz: float) -> int:
    """How many native steps make one step at ``target_hz`` (1 if the dataset is not faster)."""
    if target_hz <= 0:
        return 1
    return max(1, round(spec.control_frequency_hz / target_hz))


def resample(traj: dict, spec: DatasetSpec, stride: int) -> dict:
    """Merges every ``stride`` steps into one, so datasets share one control rate.

    Observations are those of the group's first step. Delta action dims are
    summed over the group; absolute dims and grippers take the group's last
    value (the command in force at the end). The tail group may be shorter.
    """
    if stride <= 1:
        return traj
    length = tf.shape(traj["action"])[0]
    starts = tf.range(0, length, stride)
    out = tf.nest.map_structure(lambda x: tf.gather(x, starts), {k: v for k, v in traj.items() if k != "action"})
    group = tf.minimum(starts[:, None] + tf.range(stride)[None, :], length - 1)
    valid = (starts[:, None] + tf.range(stride)[None, :]) < length
    steps = tf.gather(traj["action"], group)  # [T', stride, A]
    summed = tf.reduce_sum(tf.where(valid[..., None], steps, 0.0), axis=1)
    last = tf.gather(traj["action"], tf.minimum(starts + stride, length) - 1)
    delta = ACTION_SPACES[spec.action_space_id].delta
    is_summed = tf.constant([delta and i not in spec.gripper_dims for i in range(spec.action_dim)])
    out["action"] = tf.where(is_summed, summed, last)
    out["timestep"] = tf.range(tf.shape(starts)[0], dtype=tf.int32)
    return out


def normalize_trajectory(traj: dict, stats: DatasetStatistics, mode: str) -> dict:
    """Normalizes actions (dims in ``stats.action_mask``) and the proprio state."""
    tnp = tf.experimental.numpy
    traj = dict(traj, observation=dict(traj["observation"]))
    traj["action"] = tf.cast(normalize(traj["action"], stats.action, mode, stats.action_mask, xp=tnp), tf.float32)
    traj["observation"]["proprio"] = tf.cast(
        normalize(traj["observation"]["proprio"], stats.state, mode, xp=tnp), tf.float32
    )
    return traj


def pad_dims(traj: dict, action_dim: int, state_dim: int) -> dict:
    """Zero-pads action and state to the unified widths and adds per-dim validity masks."""
    traj = dict(traj, observation=dict(traj["observation"]))
    length = tf.shape(traj["action"])[0]
    for key, container, width in (("action", traj, action_dim), ("proprio", traj["observation"], state_dim)):
        value = container[key]
        have = value.shape[-1]
        if have > width:
            raise ValueError(f"{key} has {have} dims, more than the unified width {width}")
        container[key] = tf.pad(value, [[0, 0], [0, width - have]])
        mask_key = "action_dim_mask" if key == "action" else "state_dim_mask"
        traj[mask_key] = tf.tile(tf.constant([i < have for i in range(width)])[None], [length, 1])
    return traj


def relabel_goal(traj: dict, cameras: tuple[str, ...], seed: tf.Tensor) -> dict:
    """Adds ``goal_image_{role}``: the image of a uniformly drawn later step (or the same step)."""
    length = tf.shape(traj["action"])[0]
    draws = tf.random.stateless_uniform([length], seed)
    offsets = tf.cast(draws * tf.cast(length - tf.range(length), tf.float32), tf.int32)
    goal_index = tf.minimum(tf.range(length) + offsets, length - 1)
    traj = dict(traj)
    for role in cameras:
        traj[f"goal_image_{role}"] = tf.gather(traj["observation"][f"image_{role}"], goal_index)
    return traj


def chunk_actions(traj: dict, horizon: int) -> dict:
    """Replaces ``action [T, A]`` with chunks ``[T, horizon, A]`` starting at each step.

    Chunks running past the episode end repeat the last action and are marked in
    ``action_mask [T, horizon]`` (False = padding, no loss).
    """
    action = traj["action"]
    length = tf.shape(action)[0]
    index = tf.range(length)[:, None] + tf.range(horizon)[None, :]
    traj = dict(traj)
    traj["action_mask"] = index < length
    traj["action"] = tf.gather(action, tf.minimum(index, length - 1))
    return traj


def history_window(traj: dict, window: int) -> dict:
    """Stacks the last ``window`` observations of each step: ``observation/* [T, window, ...]``.

    Steps before the episode start repeat the first observation and are marked
    False in ``history_mask [T, window]`` (the last entry is the current step).
    """
    if window <= 1:
        return traj
    length = tf.shape(traj["action"])[0]
    index = tf.range(length)[:, None] + tf.range(-window + 1, 1)[None, :]
    traj = dict(traj)
    traj["observation"] = tf.nest.map_structure(lambda x: tf.gather(x, tf.maximum(index, 0)), traj["observation"])
    traj["history_mask"] = index >= 0
    return traj


def subsample(traj: dict, max_length: int, seed: tf.Tensor) -> dict:
    """Keeps a random ``max_length`` steps (in order) of longer trajectories."""
    length = tf.shape(traj["action"])[0]
    if max_length <= 0:
        return traj
    keys = tf.random.stateless_uniform([length], seed)
    chosen = tf.sort(tf.math.top_k(keys, tf.minimum(length, max_length)).indices)
    return tf.nest.map_structure(lambda x: tf.gather(x, chosen), traj)
