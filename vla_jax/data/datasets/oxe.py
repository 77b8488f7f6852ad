"""Open X-Embodiment (OXE): specs for the datasets Octo and OpenVLA train on, and their mixtures.

Provenance
----------
* Builder names and version directories: the OXE bucket
  ``gs://gresearch/robotics/<name>/<version>`` as listed by the TFDS importer
  builders (``tensorflow_datasets/robotics/rtx/rtx.py``) and a public listing
  of a full mirror of the bucket. Most are ``0.1.0``; the later additions
  (``fmb``, ``dobbe``, ``robo_set``, ``aloha_mobile``) are ``0.0.1``;
  ``cmu_playing_with_food`` is ``1.0.0``; ``droid`` is ``1.0.1``. BridgeData V2
  as Octo/OpenVLA use it is *not* the OXE copy but the Berkeley release
  (``rail.eecs.berkeley.edu/datasets/bridge_release/data/tfds/bridge_dataset/1.0.0``),
  registered here as ``bridge_dataset`` (Octo's directory name) and
  ``bridge_orig`` (OpenVLA renames the directory); the OXE copy is ``bridge``.
* Splits: from the same sources. Datasets with a ``test`` or ``val`` split use
  it for validation; the others hold out the last 5% of ``train``.
* Cameras, depth keys, state keys and action layouts: Octo's
  ``octo/data/oxe/oxe_dataset_configs.py`` and OpenVLA's
  ``prismatic/vla/datasets/rlds/oxe/configs.py``, checked against the TFDS
  catalog feature descriptions. Where they disagree the notes say so.
* Action space: Octo/OpenVLA label almost everything "EEF_POS". Here a dataset
  is ``eef_absolute`` when its TFDS description words the action exactly like
  its observed pose (an absolute target), ``eef_delta`` when it says delta /
  relative / velocity or when nothing says otherwise (Octo's reading), and
  ``eef_delta_xyz`` when it has no rotation. Gripper dims are converted to
  ``open=1, closed=0`` in :mod:`.oxe_transforms`; notes flag the datasets
  whose raw gripper convention could not be checked against a description
  (there the convention Octo assumes is kept).
* Control frequencies: the "Control Frequency" column of the OXE dataset
  overview sheet, as reproduced in RDT's ``configs/dataset_control_freq.json``
  and LeRobot's OXE ``configs.yaml`` (they agree except where noted).
  Unlike Octo (which subsamples ALOHA and RPT), no transform resamples: the
  pipeline resamples from ``control_frequency_hz``.
* Language: the raw key is kept even where Octo blanks an instruction it deems
  uninformative (OpenVLA keeps them); such datasets say so in their notes.
* Mixture weights: Octo's ``oxe_dataset_mixes.py`` and OpenVLA's
  ``oxe/mixtures.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vla_jax.data.datasets import oxe_transforms as T
from vla_jax.data.specs import DatasetSpec, Mixture, register, register_mixture

# Common action layouts.
EEF_DELTA = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
EEF_DELTA_AXIS_ANGLE = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
EEF_DELTA_NO_GRIPPER = EEF_DELTA[:6]
EEF_ABSOLUTE = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
EEF_VELOCITY = ("vx", "vy", "vz", "wx", "wy", "wz", "gripper")
JOINT7 = tuple(f"q{i}" for i in range(7)) + ("gripper",)
JOINT_DELTA7 = tuple(f"dq{i}" for i in range(7)) + ("gripper",)
ALOHA_MOBILE = (
    tuple(f"left_q{i}" for i in range(6))
    + ("left_gripper",)
    + tuple(f"right_q{i}" for i in range(6))
    + ("right_gripper", "base_linear_vel", "base_angular_vel")
)
XARM_BIMANUAL = tuple(f"left_{d}" for d in EEF_ABSOLUTE) + tuple(f"right_{d}" for d in EEF_ABSOLUTE)

RT1_LANGUAGE = "observation/natural_language_instruction"
BRIDGE_V2_NOTES = (
    "First step dropped (all-zero action), gripper binarized, movement relabelled from reached states "
    "(drops the last step). image_2 / image_3 (a wrist camera) exist in only part of the data."
)
UNVERIFIED_GRIPPER = "raw gripper convention not stated in the TFDS description; open=1 as Octo assumes (unverified)"


def oxe_spec(
    name: str,
    *,
    action_space: str,
    action_dims: tuple[str, ...],
    hz: float,
    transform: Callable[[dict], dict],
    cameras: dict[str, str],
    depth: dict[str, str] | None = None,
    state_keys: tuple[str, ...] = (),
    state_encoding: str = "none",
    language_key: str | None = "language_instruction",
    version: str = "0.1.0",
    val_split: str | None = None,
    notes: str = "",
) -> DatasetSpec:
    """A spec with the OXE defaults: grippers open=1/closed=0 and not normalized, all else normalized."""
    has_gripper = any("gripper" in d for d in action_dims)
    return DatasetSpec(
        name=name,
        action_space=action_space,
        action_dims=action_dims,
        normalize_action=tuple("gripper" not in d for d in action_dims),
        control_frequency_hz=hz,
        gripper_convention="open=1,closed=0" if has_gripper else "none",
        cameras=cameras,
        depth_cameras=depth or {},
        state_keys=state_keys,
        state_encoding=state_encoding,
        language_key=language_key,
        version=version,
        train_split="train",
        val_split=val_split,
        standardize_fn=transform,
        notes=notes,
    )


# ---------------------------------------------------------------------------
# Google / RT-X core datasets
# ---------------------------------------------------------------------------

SPECS = [
    oxe_spec(
        "fractal20220817_data",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=3,
        transform=T.rt1_transform,
        cameras={"primary": "image"},
        state_keys=("base_pose_tool_reached", "gripper_closed"),
        state_encoding="eef_pos_quat",
        language_key=RT1_LANGUAGE,
        notes="RT-1 robot data. gripper_closedness_action is a relative command (+1 close, -1 open, "
        "0 keep) turned into the absolute gripper state.",
    ),
    oxe_spec(
        "kuka",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.kuka_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_quat",
        language_key=RT1_LANGUAGE,
        notes="QT-Opt grasping; relative gripper command as in fractal. The instruction is a constant "
        "template (Octo blanks it, OpenVLA keeps it). Octo trains on successful episodes only "
        "(filtered offline).",
    ),
    oxe_spec(
        "bridge_dataset",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=5,
        transform=T.bridge_v2_transform,
        cameras={"primary": "image_0", "secondary": "image_1"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        version="1.0.0",
        val_split="val",
        notes="BridgeData V2 from the Berkeley release (not the OXE bucket); Octo's directory name. " + BRIDGE_V2_NOTES,
    ),
    oxe_spec(
        "bridge",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=5,
        transform=T.bridge_oxe_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="The older BridgeData copy in the OXE bucket; Octo/OpenVLA use bridge_dataset/bridge_orig "
        "instead. OpenVLA's config also names an image_1 camera, which this copy does not have.",
    ),
    oxe_spec(
        "taco_play",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=15,
        transform=T.taco_play_transform,
        cameras={"primary": "rgb_static", "wrist": "rgb_gripper"},
        depth={"primary": "depth_static", "wrist": "depth_gripper"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="Action from rel_actions_world. Gripper read as +1 open / -1 close (CALVIN convention, as "
        "Octo and OpenVLA do); the TFDS description states the opposite, so this is uncertain. Proprio "
        "is robot_obs[:7] = pos, euler, gripper width (Octo/OpenVLA take index 7, a joint angle).",
    ),
    oxe_spec(
        "jaco_play",
        action_space="eef_delta_xyz",
        action_dims=("dx", "dy", "dz", "gripper"),
        hz=10,
        transform=T.jaco_play_transform,
        cameras={"primary": "image", "wrist": "image_wrist"},
        state_keys=("end_effector_cartesian_pos",),
        state_encoding="other",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="No rotation action (Octo pads zeros). Relative gripper command. The 7-D "
        "end_effector_cartesian_pos layout is undocumented.",
    ),
    oxe_spec(
        "berkeley_cable_routing",
        action_space="eef_delta",
        action_dims=EEF_DELTA_NO_GRIPPER,
        hz=10,
        transform=T.rt1_no_gripper_transform,
        cameras={"primary": "image", "secondary": "top_image", "wrist": "wrist45_image"},
        state_keys=("robot_state",),
        state_encoding="joint",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="No gripper action (Octo pads a constant 0). Instruction blanked by Octo as uninformative. "
        "robot_state taken as joints per Octo.",
    ),
    oxe_spec(
        "roboturk",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.rt1_close_signal_transform,
        cameras={"primary": "front_rgb"},
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="gripper_closedness_action: positive = close. No proprio. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "nyu_door_opening_surprising_effectiveness",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=3,
        transform=T.rt1_transform,
        cameras={"wrist": "image"},
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="Hello Stretch with a hand-held (wrist) camera only; OpenVLA skips it for that reason. "
        "Relative gripper command. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "viola",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=20,
        transform=T.rt1_close_signal_transform,
        cameras={"primary": "agentview_rgb", "wrist": "eye_in_hand_rgb"},
        state_keys=("joint_states", "gripper_states"),
        state_encoding="joint",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="Gripper -1 open / 1 close (robosuite). Instruction blanked by Octo.",
    ),
    oxe_spec(
        "berkeley_autolab_ur5",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=5,
        transform=T.berkeley_autolab_ur5_transform,
        cameras={"primary": "image", "wrist": "hand_image"},
        depth={"primary": "image_with_depth"},
        state_keys=("proprio",),
        state_encoding="eef_pos_quat",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="Gripper: relative command (1 close, -1 open, 0 keep, per TFDS). rlds_dataset_mod flips "
        "the wrist image channels for Octo. Proprio = robot_state[6:14].",
    ),
    oxe_spec(
        "toto",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=30,
        transform=T.toto_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="joint",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="Boolean open_gripper. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "language_table",
        action_space="base_2d",
        action_dims=("dx", "dy"),
        hz=10,
        transform=T.language_table_transform,
        cameras={"primary": "rgb"},
        state_keys=("effector_translation",),
        state_encoding="other",
        notes="Planar pointer (Octo pads to 7-D with an always-open gripper). Instruction decoded from "
        "int32 code points. Version 0.1.0 as in Octo's prepare script; a 0.0.1 copy also exists.",
    ),
    oxe_spec(
        "columbia_cairlab_pusht_real",
        action_space="eef_delta",
        action_dims=EEF_DELTA_NO_GRIPPER,
        hz=10,
        transform=T.rt1_no_gripper_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("robot_state",),
        state_encoding="other",
        language_key=RT1_LANGUAGE,
        val_split="test",
        notes="Planar pushing; the gripper_closedness_action of a pusher is dropped.",
    ),
    oxe_spec(
        "bc_z",
        action_space="eef_delta",
        action_dims=EEF_DELTA_AXIS_ANGLE,
        hz=10,
        transform=T.bc_z_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="other",
        language_key=RT1_LANGUAGE,
        val_split="val",
        notes="First of ten future residuals; rotation is axis-angle. target_close 1 = close. Proprio = "
        "xyz + axis-angle + sensed_close. OpenVLA: use v0.1.0, later versions broken.",
    ),
    # -----------------------------------------------------------------------
    # "converted_externally_to_rlds" datasets
    # -----------------------------------------------------------------------
    oxe_spec(
        "stanford_kuka_multimodal_dataset_converted_externally_to_rlds",
        action_space="eef_delta_xyz",
        action_dims=("dx", "dy", "dz", "gripper"),
        hz=20,
        transform=T.cast_action_transform,
        cameras={"primary": "image"},
        depth={"primary": "depth_image"},
        state_keys=("ee_position", "ee_orientation"),
        state_encoding="eef_pos_quat",
        notes=f"Peg insertion; no rotation action. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "nyu_rot_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=3,
        transform=T.first7_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        notes=UNVERIFIED_GRIPPER,
    ),
    oxe_spec(
        "stanford_hydra_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.stanford_hydra_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        notes="Gripper 1 = close. Proprio = pos, euler, first gripper state. rlds_dataset_mod flips the "
        "image channels for Octo. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "austin_buds_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=20,
        transform=T.austin_state8_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("proprio",),
        state_encoding="joint",
        notes="Gripper -1 open / 1 close. Proprio = 7 joints + gripper. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "nyu_franka_play_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=3,
        transform=T.nyu_franka_play_transform,
        cameras={"primary": "image", "secondary": "image_additional_view"},
        depth={"primary": "depth", "secondary": "depth_additional_view"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        val_split="val",
        notes="EEF deltas are action[7:13] of a 15-D action that also holds joint velocities; gripper "
        "action[13] read as positive = open (as Octo). Instruction blanked by Octo.",
    ),
    oxe_spec(
        "maniskill_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA_AXIS_ANGLE,
        hz=20,
        transform=T.maniskill_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        depth={"primary": "depth", "wrist": "wrist_depth"},
        state_keys=("proprio",),
        state_encoding="eef_pos_quat",
        notes="Simulation. Rotation is axis-angle; gripper target -1 close / 1 open rescaled (Octo passes "
        "it raw). tcp_pose quaternion is wxyz.",
    ),
    oxe_spec(
        "furniture_bench_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.furniture_bench_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_quat",
        notes="Delta quaternion (xyzw, as Octo reads it) converted to euler; gripper +1 close.",
    ),
    oxe_spec(
        "cmu_franka_exploration_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.first7_transform,
        cameras={"primary": "highres_image"},
        notes=f"Terminate flag dropped. No proprio. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "ucsd_kitchen_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=2,
        transform=T.ucsd_kitchen_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="joint",
        notes=f"Described as EEF position + orientation (absolute or delta not stated; delta as Octo). "
        f"{UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "ucsd_pick_and_place_dataset_converted_externally_to_rlds",
        action_space="eef_delta_xyz",
        action_dims=("vx", "vy", "vz", "grip_torque"),
        hz=3,
        transform=T.cast_action_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        notes="Action is 3 gripper velocities + a gripper open/close torque of unknown sign, kept as a "
        "normalized dim rather than guessed into a gripper convention.",
    ),
    oxe_spec(
        "austin_sailor_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=20,
        transform=T.close_signal_gripper_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("state",),
        state_encoding="eef_pos_quat",
        notes="Gripper -1 open / 1 close. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "austin_sirius_dataset_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=20,
        transform=T.close_signal_gripper_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("state",),
        state_encoding="eef_pos_quat",
        notes="Gripper -1 open / 1 close. Instruction blanked by Octo.",
    ),
    oxe_spec(
        "utokyo_pr2_opening_fridge_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=10,
        transform=T.first7_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        val_split="val",
        notes=f"Action worded like the observed EEF pose, so taken as absolute (Octo: EEF_POS). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=10,
        transform=T.first7_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        val_split="val",
        notes=f"Action worded like the observed EEF pose, so taken as absolute. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "utokyo_xarm_pick_and_place_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=10,
        transform=T.cast_action_transform,
        cameras={"primary": "image", "secondary": "image2", "wrist": "hand_image"},
        state_keys=("end_effector_pose",),
        state_encoding="eef_pos_euler",
        val_split="val",
        notes=f"Action worded like the observed EEF pose, so taken as absolute. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "utokyo_xarm_bimanual_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=XARM_BIMANUAL,
        hz=10,
        transform=T.utokyo_xarm_bimanual_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="other",
        val_split="val",
        notes=f"Two xArms, 14-D EEF poses (Octo keeps only the right arm). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "robo_net",
        action_space="eef_delta",
        action_dims=("dx", "dy", "dz", "dyaw", "gripper"),
        hz=1,
        transform=T.cast_action_transform,
        cameras={"primary": "image", "secondary": "image1"},
        state_keys=("state",),
        state_encoding="other",
        language_key=None,
        notes=f"Random exploration data without instructions. Version: 0.1.0 per the bucket listing "
        f"(the OXE colab's dataset2path says 1.0.0; check your copy). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "berkeley_mvp_converted_externally_to_rlds",
        action_space="joint_velocity",
        action_dims=JOINT_DELTA7,
        hz=5,
        transform=T.berkeley_joint_delta_transform,
        cameras={"wrist": "hand_image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_quat",
        notes="Action = 7 per-step joint-position deltas (the delta joint family) + gripper (1 = closed).",
    ),
    oxe_spec(
        "berkeley_rpt_converted_externally_to_rlds",
        action_space="joint_velocity",
        action_dims=JOINT_DELTA7,
        hz=30,
        transform=T.berkeley_joint_delta_transform,
        cameras={"wrist": "hand_image"},
        state_keys=("proprio",),
        state_encoding="joint",
        notes="As berkeley_mvp. Octo subsamples to 10 Hz and recomputes the deltas; here the pipeline resamples.",
    ),
    oxe_spec(
        "kaist_nonprehensile_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA_AXIS_ANGLE[:6],
        hz=10,
        transform=T.kaist_nonprehensile_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_quat",
        notes="Non-prehensile: no gripper. The 14 controller gains of the action are dropped.",
    ),
    oxe_spec(
        "stanford_mask_vit_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=("dx", "dy", "dz", "dyaw", "gripper"),
        hz=5,
        transform=T.stanford_mask_vit_transform,
        cameras={"primary": "image"},
        state_keys=("end_effector_pose",),
        state_encoding="other",
        val_split="val",
        notes="Control frequency unknown (blank in the OXE sheet); 5 Hz is a placeholder. Gripper -1 "
        "open / 1 close (Octo passes it raw).",
    ),
    oxe_spec(
        "tokyo_u_lsmo_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=10,
        transform=T.eef_pose_and_gripper_state_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        notes=f"Motion-planner trajectories; action worded like the observed EEF pose. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "dlr_sara_pour_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=10,
        transform=T.cast_action_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        notes=f"Euler angles are scipy 'zxy'. Action worded like the state. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "dlr_sara_grid_clamp_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=10,
        transform=T.dlr_sara_grid_clamp_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        notes=f"Euler angles are scipy 'zxy'; the state's wrench is dropped. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "dlr_edan_shared_control_converted_externally_to_rlds",
        action_space="eef_absolute",
        action_dims=EEF_ABSOLUTE,
        hz=5,
        transform=T.dlr_edan_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        notes="Wheelchair-mounted arm. Action worded like the state (Octo: EEF_POS). Gripper 1 = close "
        "(Octo inverts it; not in the TFDS description).",
    ),
    oxe_spec(
        "asu_table_top_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=12.5,
        transform=T.asu_table_top_transform,
        cameras={"primary": "image"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        notes=UNVERIFIED_GRIPPER,
    ),
    oxe_spec(
        "stanford_robocook_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=5,
        transform=T.eef_pose_and_gripper_state_transform,
        cameras={"primary": "image_1", "secondary": "image_2"},
        depth={"primary": "depth_1", "secondary": "depth_2"},
        state_keys=("proprio",),
        state_encoding="eef_pos_euler",
        notes=f"Proprio slicing as OpenVLA (Octo uses the full state). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "imperialcollege_sawyer_wrist_cam",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.first7_transform,
        cameras={"wrist": "wrist_image"},
        state_keys=("state",),
        state_encoding="other",
        notes=f"Deltas in the EEF frame (ZYX euler). Its 'image' duplicates the wrist view (per TFDS), "
        f"so only the wrist camera is used (Octo also feeds it as primary). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "iamlab_cmu_pickup_insert_converted_externally_to_rlds",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=20,
        transform=T.iamlab_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("proprio",),
        state_encoding="joint",
        notes=f"Action [pos, quat, gripper]: quaternion (xyzw, as Octo) converted to euler; absolute vs "
        f"delta not stated (delta as Octo). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "uiuc_d3field",
        action_space="eef_delta_xyz",
        action_dims=("dx", "dy", "dz"),
        hz=1,
        transform=T.cast_action_transform,
        cameras={"primary": "image_1", "secondary": "image_2"},
        depth={"primary": "depth_1", "secondary": "depth_2"},
        notes="3-D action, no gripper, no proprio. Octo/OpenVLA drop it from their soups ('raw data is broken').",
    ),
    oxe_spec(
        "utaustin_mutex",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=20,
        transform=T.austin_state8_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("proprio",),
        state_encoding="joint",
        notes="Gripper -1 open / 1 close. rlds_dataset_mod flips the image channels for Octo. "
        "Instruction blanked by Octo.",
    ),
    oxe_spec(
        "berkeley_fanuc_manipulation",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.berkeley_fanuc_transform,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("proprio",),
        state_encoding="joint",
        notes="No gripper action: taken from state[6], read as 1 = closed as Octo does (TFDS calls it "
        "'gripper open status'; uncertain). rlds_dataset_mod flips the image channels for Octo.",
    ),
    oxe_spec(
        "cmu_playing_with_food",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.quaternion_action_transform,
        cameras={"primary": "image", "wrist": "finger_vision_1"},
        state_keys=("state",),
        state_encoding="other",
        version="1.0.0",
        notes=f"Quaternion (xyzw, as Octo) converted to euler. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "cmu_play_fusion",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=5,
        transform=T.quaternion_action_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="joint",
        notes=f"Action [delta pos, delta quat, gripper, terminate]; quaternion converted to euler (Octo "
        f"slices action[-4:], which mixes quaternion, gripper and terminate). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "cmu_stretch",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.cmu_stretch_transform,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="other",
        notes=f"Terminate flag dropped. {UNVERIFIED_GRIPPER}.",
    ),
    # -----------------------------------------------------------------------
    # Navigation (GNM family; OpenVLA lists them, Octo uses a private merge)
    # -----------------------------------------------------------------------
    *[
        oxe_spec(
            name,
            action_space="base_2d",
            action_dims=("dx", "dy"),
            hz=hz,
            transform=T.gnm_transform,
            cameras={"primary": "image"},
            state_keys=("proprio",),
            state_encoding="other",
            language_key=None,
            notes="2-D waypoint action; proprio = position + yaw. Navigation data without instructions. "
            "OpenVLA maps the camera to 'wrist' to keep it out of primary-view training.",
        )
        for name, hz in (("berkeley_gnm_recon", 3), ("berkeley_gnm_cory_hall", 5), ("berkeley_gnm_sac_son", 10))
    ],
    # -----------------------------------------------------------------------
    # Later additions (Octo's flex soup / OpenVLA's magic soup++)
    # -----------------------------------------------------------------------
    oxe_spec(
        "aloha_mobile",
        action_space="bimanual_joint_position",
        action_dims=ALOHA_MOBILE,
        hz=50,
        transform=T.cast_action_transform,
        cameras={"primary": "cam_high", "wrist": "cam_right_wrist"},
        state_keys=("state",),
        state_encoding="joint_bimanual",
        version="0.0.1",
        notes="Two 6-DoF arms + grippers + 2 base velocities (16-D). Octo subsamples 50 -> 10 Hz; here "
        f"the pipeline resamples. cam_left_wrist unused (one wrist role). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "fmb",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=10,
        transform=T.fmb_transform,
        cameras={"primary": "image_side_1", "secondary": "image_side_2", "wrist": "image_wrist_1"},
        depth={"primary": "image_side_1_depth", "secondary": "image_side_2_depth", "wrist": "image_wrist_1_depth"},
        state_keys=("proprio",),
        state_encoding="other",
        version="0.0.1",
        notes=f"Octo/OpenVLA call their copy 'fmb_dataset'. {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "dobbe",
        action_space="eef_delta",
        action_dims=EEF_DELTA,
        hz=3.75,
        transform=T.cast_action_transform,
        cameras={"wrist": "wrist_image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        version="0.0.1",
        notes="Hand-held gripper camera only (OpenVLA feeds it as primary). Control frequency: 3.75 Hz "
        f"per LeRobot's table, 30 Hz per RDT's (uncertain). {UNVERIFIED_GRIPPER}.",
    ),
    oxe_spec(
        "robo_set",
        action_space="joint_position",
        action_dims=JOINT7,
        hz=5,
        transform=T.robo_set_transform,
        cameras={"primary": "image_left", "secondary": "image_right", "wrist": "image_wrist"},
        state_keys=("state",),
        state_encoding="joint",
        version="0.0.1",
        notes="Octo/OpenVLA call their copy 'roboset'. Gripper in [-1, 1], positive = close (as Octo).",
    ),
    oxe_spec(
        "droid",
        action_space="eef_delta",
        action_dims=EEF_VELOCITY,
        hz=15,
        transform=T.droid_transform,
        cameras={"primary": "exterior_image_1_left", "secondary": "exterior_image_2_left", "wrist": "wrist_image_left"},
        state_keys=("cartesian_position", "gripper_position"),
        state_encoding="eef_pos_euler",
        version="1.0.1",
        notes="Action = base-frame cartesian_velocity + gripper_position (1 = closed, inverted), as "
        "OpenVLA. OpenVLA also swaps the two exterior views at random (augmentation, not done here) and "
        "drops all-zero action chunks. Version per the bucket listing; check your copy.",
    ),
]

BRIDGE_DATASET = next(s for s in SPECS if s.name == "bridge_dataset")
SPECS.append(
    dataclasses.replace(
        BRIDGE_DATASET,
        name="bridge_orig",
        notes="The bridge_dataset release under OpenVLA's directory name (same data). " + BRIDGE_V2_NOTES,
    )
)

for _spec in SPECS:
    register(_spec)

# ---------------------------------------------------------------------------
# Mixtures
# ---------------------------------------------------------------------------

FRACTAL_WEIGHT = 0.54087122203
KUKA_WEIGHT = 0.8341046294

RTX = (
    ("fractal20220817_data", FRACTAL_WEIGHT),
    ("kuka", KUKA_WEIGHT),
    ("bridge_dataset", 1.0),
    ("taco_play", 2.0),
    ("jaco_play", 2.0),
    ("berkeley_cable_routing", 3.0),
    ("roboturk", 1.0),
    ("nyu_door_opening_surprising_effectiveness", 5.0),
    ("viola", 2.0),
    ("berkeley_autolab_ur5", 1.0),
    ("toto", 1.0),
)

OXE_FRANKA = (
    ("taco_play", 1.0),
    ("berkeley_cable_routing", 1.0),
    ("viola", 1.0),
    ("toto", 1.0),
    ("stanford_hydra_dataset_converted_externally_to_rlds", 1.0),
    ("austin_buds_dataset_converted_externally_to_rlds", 3.0),
    ("nyu_franka_play_dataset_converted_externally_to_rlds", 3.0),
    ("maniskill_dataset_converted_externally_to_rlds", 0.1),
    ("furniture_bench_dataset_converted_externally_to_rlds", 0.1),
    ("cmu_franka_exploration_dataset_converted_externally_to_rlds", 5.0),
    ("austin_sailor_dataset_converted_externally_to_rlds", 1.0),
    ("austin_sirius_dataset_converted_externally_to_rlds", 1.0),
    ("berkeley_rpt_converted_externally_to_rlds", 1.0),
    ("kaist_nonprehensile_converted_externally_to_rlds", 3.0),
    ("stanford_robocook_converted_externally_to_rlds", 1.0),
    ("iamlab_cmu_pickup_insert_converted_externally_to_rlds", 1.0),
    ("utaustin_mutex", 1.0),
    ("cmu_play_fusion", 1.0),
)

OXE_MAGIC_SOUP = (
    ("fractal20220817_data", FRACTAL_WEIGHT),
    ("kuka", KUKA_WEIGHT),
    ("bridge_dataset", 1.0),
    ("taco_play", 2.0),
    ("jaco_play", 1.0),
    ("berkeley_cable_routing", 1.0),
    ("roboturk", 2.0),
    ("nyu_door_opening_surprising_effectiveness", 1.0),
    ("viola", 2.0),
    ("berkeley_autolab_ur5", 2.0),
    ("toto", 1.0),
    ("language_table", 0.1),
    ("stanford_hydra_dataset_converted_externally_to_rlds", 2.0),
    ("austin_buds_dataset_converted_externally_to_rlds", 1.0),
    ("nyu_franka_play_dataset_converted_externally_to_rlds", 3.0),
    ("furniture_bench_dataset_converted_externally_to_rlds", 0.1),
    ("ucsd_kitchen_dataset_converted_externally_to_rlds", 2.0),
    ("austin_sailor_dataset_converted_externally_to_rlds", 1.0),
    ("austin_sirius_dataset_converted_externally_to_rlds", 1.0),
    ("bc_z", 0.2),
    ("dlr_edan_shared_control_converted_externally_to_rlds", 1.0),
    ("iamlab_cmu_pickup_insert_converted_externally_to_rlds", 1.0),
    ("utaustin_mutex", 1.0),
    ("berkeley_fanuc_manipulation", 2.0),
    ("cmu_stretch", 1.0),
)

# OpenVLA's soup keeps Octo's weights, uses bridge_orig, drops nyu_door_opening,
# and (in "plus") re-adds bc_z and adds fmb, dobbe and droid.
_OPENVLA_BASE = tuple(
    ("bridge_orig", w) if n == "bridge_dataset" else (n, w)
    for n, w in OXE_MAGIC_SOUP
    if n not in ("nyu_door_opening_surprising_effectiveness", "bc_z")
)
OXE_MAGIC_SOUP_PLUS = _OPENVLA_BASE + (("bc_z", 0.2), ("fmb", 1.0), ("dobbe", 0.2), ("droid", 0.06))
OXE_MAGIC_SOUP_PLUS_MINUS = tuple(
    (n, 1.0) if n == "fractal20220817_data" else (n, w)
    for n, w in OXE_MAGIC_SOUP_PLUS
    if n not in ("language_table", "droid")
)


def _first_occurrence(weights) -> tuple[tuple[str, float], ...]:
    """Keeps the first weight of each dataset (Octo/OpenVLA skip later duplicates)."""
    seen: dict[str, float] = {}
    for name, weight in weights:
        seen.setdefault(name, weight)
    return tuple(seen.items())


MIXTURES = [
    Mixture(
        "oxe_magic_soup",
        OXE_MAGIC_SOUP,
        notes="Octo's 25-dataset pretraining mixture (octo/data/oxe/oxe_dataset_mixes.py); weights are "
        "multiplied by dataset size when balancing.",
    ),
    Mixture(
        "oxe_magic_soup_plus",
        OXE_MAGIC_SOUP_PLUS,
        notes="OpenVLA's 'Open-X Magic Soup++' (prismatic/vla/datasets/rlds/oxe/mixtures.py); its "
        "'fmb_dataset' is the OXE 'fmb' builder here.",
    ),
    Mixture(
        "oxe_magic_soup_plus_minus",
        OXE_MAGIC_SOUP_PLUS_MINUS,
        notes="OpenVLA's variant of soup++ without language_table and droid, fractal at weight 1.",
    ),
    Mixture(
        "rtx",
        RTX,
        notes="Octo's RT-X mixture (OpenVLA's leaves out nyu_door_opening and uses bridge_orig).",
    ),
    Mixture(
        "rtx_franka",
        _first_occurrence(RTX + OXE_FRANKA),
        notes="Octo's RT-X + Franka mixture; repeated datasets keep their first (RT-X) weight, as Octo.",
    ),
    Mixture(
        "bridge_v2",
        (("bridge_dataset", 1.0),),
        notes="BridgeData V2 alone (Octo's 'bridge' mix). Named bridge_v2 because 'bridge' is the OXE "
        "copy's builder name.",
    ),
]

for _mixture in MIXTURES:
    register_mixture(_mixture)
