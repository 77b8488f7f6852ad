"""Transforms of whole (standardized) trajectories."""

from __future__ import annotations

import tensorflow as tf

from vla_jax.data.statistics import DatasetStatistics, normalize


def normalize_trajectory(traj: dict, stats: DatasetStatistics, mode: str) -> dict:
    """Normalizes actions (dims in ``stats.action_mask``) and the proprio state."""
    tnp = tf.experimental.numpy
    traj = dict(traj, observation=dict(traj["observation"]))
    traj["action"] = tf.cast(normalize(traj["action"], stats.action, mode, stats.action_mask, xp=tnp), tf.float32)
    traj["observation"]["proprio"] = tf.cast(
        normalize(traj["observation"]["proprio"], stats.state, mode, xp=tnp), tf.float32
    )
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
