"""Standardization: a raw RLDS trajectory to the one schema every later stage reads.

Output schema (all with a leading time axis ``T``)::

    observation/image_{primary,secondary,wrist}   encoded image bytes ('' when missing)
    observation/image_{role}_present              bool, False for a missing camera
    observation/proprio                            float32 [T, S]
    action                                         float32 [T, A]
    language_instruction                           string
    dataset_name                                   string
    timestep                                       int32
"""

from __future__ import annotations

import tensorflow as tf

from vla_jax.data.specs import CAMERA_ROLES, DatasetSpec
from vla_jax.errors import DataError


def _require(tree: dict, key: str, spec: DatasetSpec, where: str):
    if key not in tree:
        raise DataError(f"dataset {spec.name!r}: key {where}{key!r} not found; it has {sorted(tree)}")
    return tree[key]


def standardize(traj: dict, spec: DatasetSpec) -> dict:
    """Maps one raw RLDS trajectory of ``spec``'s dataset to the standard schema."""
    if spec.raw_transform is not None:
        traj = spec.raw_transform(traj)
    raw_obs = _require(traj, "observation", spec, "")
    action = tf.cast(_require(traj, spec.action_key, spec, ""), tf.float32)
    length = tf.shape(action)[0]
    observation = {}
    for role in CAMERA_ROLES:
        key = spec.cameras.get(role)
        if key is None:
            observation[f"image_{role}"] = tf.fill([length], "")
            observation[f"image_{role}_present"] = tf.zeros([length], tf.bool)
        else:
            observation[f"image_{role}"] = _require(raw_obs, key, spec, "observation/")
            observation[f"image_{role}_present"] = tf.ones([length], tf.bool)
    state_parts = [
        tf.reshape(tf.cast(_require(raw_obs, k, spec, "observation/"), tf.float32), [length, -1])
        for k in spec.state_keys
    ]
    observation["proprio"] = tf.concat(state_parts, axis=-1) if state_parts else tf.zeros([length, 0])
    action.set_shape([None, spec.action_dim])
    return {
        "observation": observation,
        "action": action,
        "language_instruction": _require(traj, spec.language_key, spec, ""),
        "dataset_name": tf.fill([length], spec.name),
        "timestep": tf.range(length, dtype=tf.int32),
    }
