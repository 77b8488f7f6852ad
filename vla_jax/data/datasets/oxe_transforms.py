"""Standardization functions for the Open X-Embodiment (OXE) datasets of :mod:`.oxe`.

Each ``*_transform`` is the ``standardize_fn`` of one or more specs: a pure tf
function of the raw trajectory dict (every leaf stacked over time, ``[T, ...]``)
that returns a new dict (the input is never mutated) in which

* ``action`` is a float32 ``[T, A]`` tensor laid out as the spec's
  ``action_dims``, with every gripper dim already converted to
  ``open=1, closed=0`` (the convention all OXE specs declare);
* ``observation/proprio`` holds the state vector when it has to be sliced or
  assembled from several raw keys (specs then read ``state_keys=("proprio",)``);
* ``language_instruction`` exists when the raw instruction needs decoding.

A transform may shorten the trajectory (Bridge relabelling drops steps); it
then slices every leaf alike. Raw layouts are those of the TFDS catalog entries
of the OXE builders (``tensorflow_datasets/robotics/rtx``) and of the Octo and
OpenVLA loaders; each docstring names the raw keys it reads.
"""

from __future__ import annotations

import tensorflow as tf

# A relative gripper command counts as "close"/"open" beyond this magnitude.
RELATIVE_GRIPPER_THRESHOLD = 0.1
# Continuous gripper openings above/below these are fully open/closed (Bridge).
GRIPPER_OPEN_ABOVE = 0.95
GRIPPER_CLOSED_BELOW = 0.05

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _get(tree: dict, path: str) -> tf.Tensor:
    """``tree[path]`` when the raw key itself contains "/", else the nested lookup."""
    if path in tree:
        return tree[path]
    node = tree
    for part in path.split("/"):
        node = node[part]
    return node


def _f32(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _column(x: tf.Tensor) -> tf.Tensor:
    """A per-step scalar (``[T]`` or ``[T, 1]``) as float32 ``[T, 1]``."""
    return tf.reshape(_f32(x), [-1, 1])


def _concat(*parts: tf.Tensor) -> tf.Tensor:
    """Concatenates per-step vectors along the feature axis, as float32."""
    return tf.concat([_f32(p) for p in parts], axis=-1)


def _with(traj: dict, action: tf.Tensor | None = None, **observation: tf.Tensor) -> dict:
    """A shallow copy of ``traj`` with a new action and/or extra observation keys."""
    out = dict(traj)
    if action is not None:
        out["action"] = _f32(action)
    if observation:
        out["observation"] = {**traj["observation"], **observation}
    return out


def _slice_time(traj: dict, start: int, stop: int | None) -> dict:
    """Every leaf of the trajectory restricted to steps ``[start:stop]``."""
    return tf.nest.map_structure(lambda x: x[start:stop], traj)


def _forward_fill(values: tf.Tensor, keep: tf.Tensor, initial: tf.Tensor) -> tf.Tensor:
    """``out[t] = values[s]`` for the last ``s <= t`` with ``keep[s]``; ``initial`` before any."""
    kept = tf.concat([tf.reshape(initial, [1]), tf.boolean_mask(values, keep)], axis=0)
    return tf.gather(kept, tf.cumsum(tf.cast(keep, tf.int32)))


def _backward_fill(values: tf.Tensor, keep: tf.Tensor, final: tf.Tensor) -> tf.Tensor:
    """``out[t] = values[s]`` for the first ``s >= t`` with ``keep[s]``; ``final`` after the last."""
    return tf.reverse(_forward_fill(tf.reverse(values, [0]), tf.reverse(keep, [0]), final), [0])


# ---------------------------------------------------------------------------
# Gripper conversions (all return float32 [T, 1], 1 = open, 0 = closed)
# ---------------------------------------------------------------------------


def gripper_open_from_close_signal(x: tf.Tensor) -> tf.Tensor:
    """A signal where positive means close (``+1/-1`` or ``1/0``) to 1=open, 0=closed."""
    return 1.0 - tf.clip_by_value(_column(x), 0.0, 1.0)


def gripper_open_from_open_signal(x: tf.Tensor) -> tf.Tensor:
    """A signal where positive means open (``+1/-1`` or ``1/0``) to 1=open, 0=closed."""
    return tf.clip_by_value(_column(x), 0.0, 1.0)


def gripper_open_from_signed_opening(x: tf.Tensor) -> tf.Tensor:
    """A continuous opening in ``[-1, 1]`` (1 = open) rescaled to ``[0, 1]``."""
    return tf.clip_by_value((_column(x) + 1.0) / 2.0, 0.0, 1.0)


def gripper_absolute_from_relative(command: tf.Tensor) -> tf.Tensor:
    """Relative gripper commands (+1 close, -1 open, 0 keep) to the absolute state after each step.

    Before the first command the gripper is taken to be in the state opposite
    to what that command asks for (a first "close" means it was open); with no
    command at all it stays open.
    """
    command = tf.reshape(_f32(command), [-1])
    acts = tf.abs(command) > RELATIVE_GRIPPER_THRESHOLD
    target = tf.cast(command < 0.0, tf.float32)  # an "open" command leaves it open
    first_target = tf.concat([tf.boolean_mask(target, acts), [0.0]], axis=0)[0]
    return tf.reshape(_forward_fill(target, acts, 1.0 - first_target), [-1, 1])


def gripper_binarized(opening: tf.Tensor) -> tf.Tensor:
    """A continuous opening in ``[0, 1]`` snapped to 0/1.

    Values between the thresholds (the gripper is moving) take the value the
    gripper settles at next; a trailing run that never settles keeps the last
    raw value.
    """
    opening = tf.reshape(_f32(opening), [-1])
    settled = (opening > GRIPPER_OPEN_ABOVE) | (opening < GRIPPER_CLOSED_BELOW)
    snapped = tf.cast(opening > GRIPPER_OPEN_ABOVE, tf.float32)
    last = tf.concat([opening[-1:], [1.0]], axis=0)[0]
    return tf.reshape(_backward_fill(snapped, settled, last), [-1, 1])


# ---------------------------------------------------------------------------
# Geometry and decoding
# ---------------------------------------------------------------------------


def quaternion_xyzw_to_euler(q: tf.Tensor) -> tf.Tensor:
    """Unit quaternions ``[..., (x, y, z, w)]`` to roll, pitch, yaw ``[..., 3]``."""
    q = _f32(q)
    q = q / tf.maximum(tf.norm(q, axis=-1, keepdims=True), 1e-12)
    x, y, z, w = tf.unstack(q, axis=-1)
    roll = tf.atan2(2.0 * (w * x + y * z), 1.0 - 2.0 * (x * x + y * y))
    pitch = tf.asin(tf.clip_by_value(2.0 * (w * y - z * x), -1.0, 1.0))
    yaw = tf.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return tf.stack([roll, pitch, yaw], axis=-1)


def wrap_angle(a: tf.Tensor) -> tf.Tensor:
    """Angles mapped into ``(-pi, pi]``."""
    return tf.atan2(tf.sin(a), tf.cos(a))


def _float_vectors(x: tf.Tensor, width: int) -> tf.Tensor:
    """A float feature as ``[T, width]``; ZLIB-compressed raw float32 bytes are decoded first."""
    if x.dtype == tf.string:
        x = tf.io.decode_raw(tf.io.decode_compressed(x, compression_type="ZLIB"), tf.float32)
    return tf.reshape(_f32(x), [-1, width])


def decode_codepoint_instruction(codes: tf.Tensor) -> tf.Tensor:
    """Zero-padded int32 Unicode code points ``[T, N]`` to strings ``[T]``."""
    codes = tf.cast(codes, tf.int32)
    ragged = tf.RaggedTensor.from_tensor(codes, padding=0)
    return tf.strings.unicode_encode(ragged, output_encoding="UTF-8")


def _relabel_with_reached_state(traj: dict, gripper: tf.Tensor) -> dict:
    """Movement dims from consecutive reached states ``state[:, :6]``; drops the last step.

    The rotation deltas are wrapped into ``(-pi, pi]``.
    """
    state = _f32(traj["observation"]["state"])
    move = state[1:, :6] - state[:-1, :6]
    move = tf.concat([move[:, :3], wrap_angle(move[:, 3:6])], axis=-1)
    shorter = _slice_time(traj, 0, -1)
    return _with(shorter, action=tf.concat([move, gripper[:-1]], axis=-1))


# ---------------------------------------------------------------------------
# RT-1 style datasets (dict actions: world_vector / rotation_delta / gripper)
# ---------------------------------------------------------------------------


def rt1_transform(traj: dict) -> dict:
    """fractal20220817_data / nyu_door_opening: 3 + 3 deltas and a relative gripper command."""
    act = traj["action"]
    gripper = gripper_absolute_from_relative(act["gripper_closedness_action"])
    return _with(traj, action=_concat(act["world_vector"], act["rotation_delta"], gripper))


def kuka_transform(traj: dict) -> dict:
    """kuka (QT-Opt): RT-1 action layout; the state features may arrive ZLIB-compressed."""
    obs = traj["observation"]
    act = traj["action"]
    gripper = gripper_absolute_from_relative(act["gripper_closedness_action"])
    proprio = _concat(
        _float_vectors(_get(obs, "clip_function_input/base_pose_tool_reached"), 7),
        _float_vectors(obs["gripper_closed"], 1),
    )
    return _with(traj, action=_concat(act["world_vector"], act["rotation_delta"], gripper), proprio=proprio)


def berkeley_autolab_ur5_transform(traj: dict) -> dict:
    """berkeley_autolab_ur5: RT-1 layout with a scalar relative gripper command (1 close, -1 open).

    ``robot_state`` is [6 joints, 3 EEF pos, 4 EEF quat, gripper closed, gripper
    command]; the proprio keeps the EEF pose and the closed flag.
    """
    out = rt1_transform(traj)
    return _with(out, proprio=_f32(traj["observation"]["robot_state"][:, 6:14]))


def jaco_play_transform(traj: dict) -> dict:
    """jaco_play: xyz deltas + relative gripper command (no rotation)."""
    act = traj["action"]
    return _with(
        traj, action=_concat(act["world_vector"], gripper_absolute_from_relative(act["gripper_closedness_action"]))
    )


def rt1_no_gripper_transform(traj: dict) -> dict:
    """berkeley_cable_routing / columbia_cairlab_pusht_real: 3 + 3 deltas, no usable gripper."""
    act = traj["action"]
    return _with(traj, action=_concat(act["world_vector"], act["rotation_delta"]))


def rt1_close_signal_transform(traj: dict) -> dict:
    """roboturk / viola: deltas + ``gripper_closedness_action`` where positive means close."""
    act = traj["action"]
    gripper = gripper_open_from_close_signal(act["gripper_closedness_action"])
    return _with(traj, action=_concat(act["world_vector"], act["rotation_delta"], gripper))


def toto_transform(traj: dict) -> dict:
    """toto: deltas + boolean ``open_gripper``."""
    act = traj["action"]
    return _with(traj, action=_concat(act["world_vector"], act["rotation_delta"], _column(act["open_gripper"])))


def taco_play_transform(traj: dict) -> dict:
    """taco_play: ``rel_actions_world`` (6 deltas + gripper, +1 open / -1 close as in CALVIN).

    State: ``robot_obs`` is [3 pos, 3 euler, gripper width, 7 joints, gripper
    action]; the proprio keeps the first seven.
    """
    rel = traj["action"]["rel_actions_world"]
    proprio = _f32(traj["observation"]["robot_obs"][:, :7])
    return _with(traj, action=_concat(rel[:, :6], gripper_open_from_open_signal(rel[:, 6])), proprio=proprio)


def bc_z_transform(traj: dict) -> dict:
    """bc_z: first of the ten future residuals (xyz, axis-angle) + ``target_close`` (1 = close)."""
    act = traj["action"]
    obs = traj["observation"]
    xyz = _get(act, "future/xyz_residual")[:, :3]
    rot = _get(act, "future/axis_angle_residual")[:, :3]
    gripper = gripper_open_from_close_signal(_get(act, "future/target_close")[:, :1])
    proprio = _concat(_get(obs, "present/xyz"), _get(obs, "present/axis_angle"), _get(obs, "present/sensed_close"))
    return _with(traj, action=_concat(xyz, rot, gripper), proprio=proprio)


def language_table_transform(traj: dict) -> dict:
    """language_table: 2-D pointer deltas; the instruction is stored as code points."""
    out = _with(traj, action=_f32(traj["action"]))
    out["language_instruction"] = decode_codepoint_instruction(traj["observation"]["instruction"])
    return out


# ---------------------------------------------------------------------------
# Bridge
# ---------------------------------------------------------------------------


def bridge_v2_transform(traj: dict) -> dict:
    """bridge_dataset / bridge_orig (BridgeData V2 1.0.0 from the Berkeley release).

    The first step's action is all zeros and is dropped; the gripper opening is
    binarized; the 6 movement dims are relabelled with the reached
    ``state[:, :6]`` differences (as Octo and OpenVLA do), dropping the last step.
    """
    traj = _slice_time(traj, 1, None)
    gripper = gripper_binarized(traj["action"][:, 6])
    return _relabel_with_reached_state(traj, gripper)


def bridge_oxe_transform(traj: dict) -> dict:
    """bridge (OXE 0.1.0 copy): dict action with boolean ``open_gripper``; relabelled as above."""
    traj = _slice_time(traj, 1, None)
    return _relabel_with_reached_state(traj, _column(traj["action"]["open_gripper"]))


# ---------------------------------------------------------------------------
# Flat-action datasets ("converted_externally_to_rlds" and later additions)
# ---------------------------------------------------------------------------


def first7_transform(traj: dict) -> dict:
    """Keeps ``action[:, :7]`` (6 EEF dims + gripper), dropping a trailing terminate flag."""
    return _with(traj, action=traj["action"][:, :7])


def cast_action_transform(traj: dict) -> dict:
    """The raw action already has the spec's layout; only cast to float32."""
    return _with(traj, action=traj["action"])


def close_signal_gripper_transform(traj: dict) -> dict:
    """6 EEF dims + a gripper signal where positive means close (robosuite/deoxys convention)."""
    act = traj["action"]
    return _with(traj, action=_concat(act[:, :6], gripper_open_from_close_signal(act[:, 6])))


def austin_state8_transform(traj: dict) -> dict:
    """austin_buds / utaustin_mutex: close-signal gripper; proprio = ``state[:, :8]`` (7 joints + gripper)."""
    out = close_signal_gripper_transform(traj)
    return _with(out, proprio=_f32(traj["observation"]["state"][:, :8]))


def stanford_hydra_transform(traj: dict) -> dict:
    """stanford_hydra: gripper 1 = close; state is [3 pos, 4 quat, 3 euler, 7 q, 7 dq, 3 gripper]."""
    state = traj["observation"]["state"]
    proprio = _concat(state[:, :3], state[:, 7:10], state[:, 24:25])
    return _with(close_signal_gripper_transform(traj), proprio=proprio)


def nyu_franka_play_transform(traj: dict) -> dict:
    """nyu_franka_play: action is [7 joint vel, 3 EE delta xyz, 3 EE delta rpy, gripper, terminate]."""
    act = traj["action"]
    proprio = _f32(traj["observation"]["state"][:, 7:13])  # [7 joints, 3 EE xyz, 3 EE rpy] -> EE pose
    return _with(traj, action=_concat(act[:, 7:13], gripper_open_from_open_signal(act[:, 13])), proprio=proprio)


def maniskill_transform(traj: dict) -> dict:
    """maniskill: [3 delta pos, 3 delta axis-angle, gripper target in [-1 close, 1 open]]."""
    act = traj["action"]
    obs = traj["observation"]
    proprio = _concat(obs["tcp_pose"], obs["state"][:, 7:8])
    return _with(traj, action=_concat(act[:, :6], gripper_open_from_signed_opening(act[:, 6])), proprio=proprio)


def furniture_bench_transform(traj: dict) -> dict:
    """furniture_bench: [3 delta pos, 4 delta quat (xyzw), gripper (+1 close)]."""
    act = traj["action"]
    state = traj["observation"]["state"]  # [3 pos, 4 quat, ..., gripper width]
    euler = quaternion_xyzw_to_euler(act[:, 3:7])
    proprio = _concat(state[:, :7], state[:, -1:])
    return _with(traj, action=_concat(act[:, :3], euler, gripper_open_from_close_signal(act[:, 7])), proprio=proprio)


def quaternion_action_transform(traj: dict) -> dict:
    """iamlab_cmu_pickup_insert / cmu_playing_with_food / cmu_play_fusion: [3 pos, 4 quat xyzw, gripper, ...]."""
    act = traj["action"]
    return _with(traj, action=_concat(act[:, :3], quaternion_xyzw_to_euler(act[:, 3:7]), act[:, 7:8]))


def iamlab_transform(traj: dict) -> dict:
    """iamlab_cmu_pickup_insert: quaternion action; proprio = 7 joints + gripper status."""
    out = quaternion_action_transform(traj)
    return _with(out, proprio=_f32(traj["observation"]["state"][:, :8]))


def ucsd_kitchen_transform(traj: dict) -> dict:
    """ucsd_kitchen: 7 of 8 action dims; proprio = the 7 joint angles of the 21-D state."""
    return _with(first7_transform(traj), proprio=_f32(traj["observation"]["state"][:, :7]))


def eef_pose_and_gripper_state_transform(traj: dict) -> dict:
    """7 of the action dims; proprio = ``state[:, :6]`` (EEF pose) + ``state[:, -1:]`` (gripper)."""
    state = traj["observation"]["state"]
    return _with(first7_transform(traj), proprio=_concat(state[:, :6], state[:, -1:]))


def dlr_sara_grid_clamp_transform(traj: dict) -> dict:
    """dlr_sara_grid_clamp: state is [6 EEF pose, 6 wrench]; proprio keeps the pose."""
    return _with(traj, action=traj["action"], proprio=_f32(traj["observation"]["state"][:, :6]))


def dlr_edan_transform(traj: dict) -> dict:
    """dlr_edan_shared_control: 6 EEF dims + gripper where 1 means close."""
    return close_signal_gripper_transform(traj)


def asu_table_top_transform(traj: dict) -> dict:
    """asu_table_top: proprio = step-level ``ground_truth_states/EE`` + gripper ``state[:, -1:]``."""
    ee = _get(traj, "ground_truth_states/EE")
    return _with(traj, action=traj["action"], proprio=_concat(ee, traj["observation"]["state"][:, -1:]))


def kaist_nonprehensile_transform(traj: dict) -> dict:
    """kaist_nonprehensile: 6 EEF residuals of the 20-D action (the rest are gains); no gripper."""
    proprio = _f32(traj["observation"]["state"][:, -7:])  # EEF [pos, quat xyzw]
    return _with(traj, action=traj["action"][:, :6], proprio=proprio)


def stanford_mask_vit_transform(traj: dict) -> dict:
    """stanford_mask_vit: [3 delta pos, yaw, gripper (-1 open, 1 close)]."""
    act = traj["action"]
    return _with(traj, action=_concat(act[:, :4], gripper_open_from_close_signal(act[:, 4])))


def berkeley_joint_delta_transform(traj: dict) -> dict:
    """berkeley_mvp / berkeley_rpt: [7 joint deltas, gripper (1 = closed)]; proprio adds the gripper bit."""
    act = traj["action"]
    obs = traj["observation"]
    base = obs["pose"] if "pose" in obs else obs["joint_pos"]  # mvp has an EEF pose, rpt only joints
    proprio = _concat(base, _column(obs["gripper"]))
    return _with(traj, action=_concat(act[:, :7], gripper_open_from_close_signal(act[:, 7])), proprio=proprio)


def berkeley_fanuc_transform(traj: dict) -> dict:
    """berkeley_fanuc_manipulation: 6 deltas; the gripper comes from the state (1 = closed, per Octo)."""
    state = traj["observation"]["state"]  # [6 joints, gripper, 6 joint velocities]
    gripper = gripper_open_from_close_signal(state[:, 6])
    return _with(traj, action=_concat(traj["action"], gripper), proprio=_f32(state[:, :7]))


def cmu_stretch_transform(traj: dict) -> dict:
    """cmu_stretch: [3 EE pos, 3 EE rot, gripper, terminate] -> first 7."""
    return first7_transform(traj)


def utokyo_xarm_bimanual_transform(traj: dict) -> dict:
    """utokyo_xarm_bimanual: 14-D [left 6 pose + gripper, right 6 pose + gripper]; proprio = both poses."""
    obs = traj["observation"]
    return _with(traj, action=traj["action"], proprio=_concat(obs["pose_l"], obs["pose_r"]))


def gnm_transform(traj: dict) -> dict:
    """berkeley_gnm_*: 2-D waypoint action (float64); proprio = position + yaw."""
    obs = traj["observation"]
    return _with(traj, action=traj["action"], proprio=_concat(obs["position"], obs["yaw"]))


def fmb_transform(traj: dict) -> dict:
    """fmb: 7-D action as stored; proprio = ``eef_pose`` + scalar ``state_gripper_pose``."""
    obs = traj["observation"]
    return _with(traj, action=traj["action"], proprio=_concat(obs["eef_pose"], _column(obs["state_gripper_pose"])))


def robo_set_transform(traj: dict) -> dict:
    """robo_set: [7 joint positions, gripper in [-1, 1] where positive means close]."""
    act = traj["action"]
    return _with(traj, action=_concat(act[:, :7], gripper_open_from_close_signal(act[:, 7])))


def droid_transform(traj: dict) -> dict:
    """droid: base-frame ``action_dict/cartesian_velocity`` + ``gripper_position`` (1 = closed)."""
    act = traj["action_dict"]
    gripper = gripper_open_from_close_signal(act["gripper_position"])
    return _with(traj, action=_concat(act["cartesian_velocity"], gripper))
