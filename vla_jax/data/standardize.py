"""Standardization: a raw RLDS trajectory to the one schema every later stage reads.

Output schema (all with a leading time axis ``T``)::

    observation/image_{primary,secondary,wrist}   encoded image bytes ('' when missing)
    observation/image_{role}_present              bool, False for a missing camera
    observation/depth_{role}                      encoded depth (PNG or a serialized float
                                                   tensor), only for the spec's depth cameras
    observation/depth_{role}_present              bool
    observation/proprio                           float32 [T, S]
    action                                        float32 [T, A], grippers as 1=open, 0=closed
    language_instruction                          string ('' when the dataset has none)
    dataset_name                                  string
    action_space                                  int32 id (``specs.ACTION_SPACES``)
    timestep                                      int32
"""

from __future__ import annotations

import tensorflow as tf

from vla_jax.data.specs import CAMERA_ROLES, GRIPPER_TO_CANONICAL, DatasetSpec
from vla_jax.errors import DataError


def lookup(tree: dict, path: str, spec: DatasetSpec, where: str = ""):
    """``tree[a][b]`` for ``path = "a/b"``; a missing key names the dataset and the key."""
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise DataError(f"dataset {spec.name!r}: key {where}{path!r} not found (at {part!r}, found {have})")
        node = node[part]
    return node


def canonical_gripper(action: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
    """Maps the spec's gripper dims to 1=open, 0=closed (``GRIPPER_TO_CANONICAL``)."""
    if not spec.gripper_dims:
        return action
    scale, offset = GRIPPER_TO_CANONICAL[spec.gripper_convention]
    is_gripper = tf.constant([i in spec.gripper_dims for i in range(spec.action_dim)])
    return tf.where(is_gripper, scale * action + offset, action)


def _encoded_depth(depth: tf.Tensor) -> tf.Tensor:
    """Depth as bytes per step: encoded PNGs pass through, numeric arrays are serialized."""
    if depth.dtype == tf.string:
        return depth
    return tf.map_fn(lambda d: tf.io.serialize_tensor(tf.cast(d, tf.float32)), depth, fn_output_signature=tf.string)


def standardize(traj: dict, spec: DatasetSpec) -> dict:
    """Maps one raw RLDS trajectory of ``spec``'s dataset to the standard schema."""
    if spec.standardize_fn is not None:
        traj = spec.standardize_fn(traj)
    raw_obs = lookup(traj, "observation", spec)
    action = tf.cast(lookup(traj, spec.action_key, spec), tf.float32)
    if action.shape.rank != 2 or (action.shape[-1] is not None and action.shape[-1] != spec.action_dim):
        raise DataError(
            f"dataset {spec.name!r}: key {spec.action_key!r} has per-step shape {action.shape[1:]}, "
            f"expected [{spec.action_dim}] ({', '.join(spec.action_dims)})"
        )
    length = tf.shape(action)[0]
    observation = {}
    for role in CAMERA_ROLES:
        key = spec.cameras.get(role)
        present = key is not None
        images = lookup(raw_obs, key, spec, "observation/") if present else tf.fill([length], "")
        if images.dtype != tf.string:
            raise DataError(f"dataset {spec.name!r}: camera key 'observation/{key}' is not an encoded image feature")
        observation[f"image_{role}"] = images
        observation[f"image_{role}_present"] = tf.fill([length], present)
    for role, key in spec.depth_cameras.items():
        observation[f"depth_{role}"] = _encoded_depth(lookup(raw_obs, key, spec, "observation/"))
        observation[f"depth_{role}_present"] = tf.ones([length], tf.bool)
    state_parts = [
        tf.reshape(tf.cast(lookup(raw_obs, k, spec, "observation/"), tf.float32), [length, -1]) for k in spec.state_keys
    ]
    observation["proprio"] = tf.concat(state_parts, axis=-1) if state_parts else tf.zeros([length, 0])
    language = lookup(traj, spec.language_key, spec) if spec.language_key else tf.fill([length], "")
    return {
        "observation": observation,
        "action": tf.ensure_shape(canonical_gripper(action, spec), [None, spec.action_dim]),
        "language_instruction": tf.reshape(language, [length]),
        "dataset_name": tf.fill([length], spec.name),
        "action_space": tf.fill([length], spec.action_space_id),
        "timestep": tf.range(length, dtype=tf.int32),
    }
