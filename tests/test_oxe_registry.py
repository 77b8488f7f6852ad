"""The Open X-Embodiment registry: specs, mixtures and standardization functions.

Raw layouts below are written from the TFDS catalog descriptions of the OXE
builders (and the Berkeley BridgeData V2 release), independently of the specs,
so a key typo in a spec or a transform fails here.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import tensorflow as tf

from vla_jax.data import specs
from vla_jax.data.datasets import oxe
from vla_jax.data.datasets import oxe_transforms as T

T_STEPS = 5

EXPECTED_VERSIONS = {
    "fractal20220817_data": "0.1.0",
    "kuka": "0.1.0",
    "bridge": "0.1.0",
    "bridge_dataset": "1.0.0",
    "bridge_orig": "1.0.0",
    "language_table": "0.1.0",
    "cmu_playing_with_food": "1.0.0",
    "droid": "1.0.1",
    "fmb": "0.0.1",
    "dobbe": "0.0.1",
    "robo_set": "0.0.1",
    "aloha_mobile": "0.0.1",
}

EXPECTED_VAL_SPLITS = {
    **dict.fromkeys(
        [
            "berkeley_autolab_ur5",
            "berkeley_cable_routing",
            "bridge",
            "columbia_cairlab_pusht_real",
            "jaco_play",
            "nyu_door_opening_surprising_effectiveness",
            "roboturk",
            "taco_play",
            "toto",
            "viola",
        ],
        "test",
    ),
    **dict.fromkeys(
        [
            "bc_z",
            "bridge_dataset",
            "bridge_orig",
            "nyu_franka_play_dataset_converted_externally_to_rlds",
            "stanford_mask_vit_converted_externally_to_rlds",
            "utokyo_pr2_opening_fridge_converted_externally_to_rlds",
            "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds",
            "utokyo_xarm_bimanual_converted_externally_to_rlds",
            "utokyo_xarm_pick_and_place_converted_externally_to_rlds",
        ],
        "val",
    ),
}

MAGIC_SOUP = {
    "fractal20220817_data": 0.54087122203,
    "kuka": 0.8341046294,
    "bridge_dataset": 1.0,
    "taco_play": 2.0,
    "jaco_play": 1.0,
    "berkeley_cable_routing": 1.0,
    "roboturk": 2.0,
    "nyu_door_opening_surprising_effectiveness": 1.0,
    "viola": 2.0,
    "berkeley_autolab_ur5": 2.0,
    "toto": 1.0,
    "language_table": 0.1,
    "stanford_hydra_dataset_converted_externally_to_rlds": 2.0,
    "austin_buds_dataset_converted_externally_to_rlds": 1.0,
    "nyu_franka_play_dataset_converted_externally_to_rlds": 3.0,
    "furniture_bench_dataset_converted_externally_to_rlds": 0.1,
    "ucsd_kitchen_dataset_converted_externally_to_rlds": 2.0,
    "austin_sailor_dataset_converted_externally_to_rlds": 1.0,
    "austin_sirius_dataset_converted_externally_to_rlds": 1.0,
    "bc_z": 0.2,
    "dlr_edan_shared_control_converted_externally_to_rlds": 1.0,
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": 1.0,
    "utaustin_mutex": 1.0,
    "berkeley_fanuc_manipulation": 2.0,
    "cmu_stretch": 1.0,
}

MAGIC_SOUP_PLUS = {
    "fractal20220817_data": 0.54087122203,
    "kuka": 0.8341046294,
    "bridge_orig": 1.0,
    "taco_play": 2.0,
    "jaco_play": 1.0,
    "berkeley_cable_routing": 1.0,
    "roboturk": 2.0,
    "viola": 2.0,
    "berkeley_autolab_ur5": 2.0,
    "toto": 1.0,
    "language_table": 0.1,
    "stanford_hydra_dataset_converted_externally_to_rlds": 2.0,
    "austin_buds_dataset_converted_externally_to_rlds": 1.0,
    "nyu_franka_play_dataset_converted_externally_to_rlds": 3.0,
    "furniture_bench_dataset_converted_externally_to_rlds": 0.1,
    "ucsd_kitchen_dataset_converted_externally_to_rlds": 2.0,
    "austin_sailor_dataset_converted_externally_to_rlds": 1.0,
    "austin_sirius_dataset_converted_externally_to_rlds": 1.0,
    "dlr_edan_shared_control_converted_externally_to_rlds": 1.0,
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": 1.0,
    "utaustin_mutex": 1.0,
    "berkeley_fanuc_manipulation": 2.0,
    "cmu_stretch": 1.0,
    "bc_z": 0.2,
    "fmb": 1.0,
    "dobbe": 0.2,
    "droid": 0.06,
}

# ---------------------------------------------------------------------------
# Raw layouts: observation / action / step-level keys -> per-step shape, with
# "img" for an encoded image and "txt" for a string. Dtypes default to float32.
# ---------------------------------------------------------------------------

IMG, TXT = "img", "txt"
NLI = {"natural_language_instruction": TXT}
RT1_ACTION = {"world_vector": (3,), "rotation_delta": (3,), "terminate_episode": ()}
FRACTAL_ACTION = {
    **RT1_ACTION,
    "gripper_closedness_action": (1,),
    "base_displacement_vector": (2,),
    "base_displacement_vertical_rotation": (1,),
}


def flat(action_dim: int, obs: dict, **step) -> dict:
    return {"action": (action_dim,), "observation": obs, "language_instruction": TXT, **step}


RAW = {
    "fractal20220817_data": {
        "action": FRACTAL_ACTION,
        "observation": {"image": IMG, "base_pose_tool_reached": (7,), "gripper_closed": (1,), **NLI},
    },
    "kuka": {
        "action": FRACTAL_ACTION,
        "observation": {
            "image": IMG,
            "clip_function_input/base_pose_tool_reached": (7,),
            "gripper_closed": (1,),
            **NLI,
        },
    },
    "bridge_dataset": flat(7, {f"image_{i}": IMG for i in range(4)} | {"state": (7,)}),
    "bridge_orig": flat(7, {f"image_{i}": IMG for i in range(4)} | {"state": (7,)}),
    "bridge": {
        "action": {**RT1_ACTION, "open_gripper": ("bool", ())},
        "observation": {"image": IMG, "state": (7,), **NLI},
    },
    "taco_play": {
        "action": {"actions": (7,), "rel_actions_gripper": (7,), "rel_actions_world": (7,), "terminate_episode": ()},
        "observation": {
            "rgb_static": IMG,
            "rgb_gripper": IMG,
            "depth_static": (3, 4),
            "depth_gripper": (3, 3),
            "robot_obs": (15,),
            **NLI,
        },
    },
    "jaco_play": {
        "action": {"world_vector": (3,), "gripper_closedness_action": (1,), "terminate_episode": ("int32", (3,))},
        "observation": {
            "image": IMG,
            "image_wrist": IMG,
            "end_effector_cartesian_pos": (7,),
            "joint_pos": (8,),
            **NLI,
        },
    },
    "berkeley_cable_routing": {
        "action": RT1_ACTION,
        "observation": {
            "image": IMG,
            "top_image": IMG,
            "wrist45_image": IMG,
            "wrist225_image": IMG,
            "robot_state": (7,),
            **NLI,
        },
    },
    "roboturk": {
        "action": {**RT1_ACTION, "gripper_closedness_action": (1,)},
        "observation": {"front_rgb": IMG, **NLI},
    },
    "nyu_door_opening_surprising_effectiveness": {
        "action": {**RT1_ACTION, "gripper_closedness_action": (1,)},
        "observation": {"image": IMG, **NLI},
    },
    "viola": {
        "action": {**RT1_ACTION, "gripper_closedness_action": ()},
        "observation": {
            "agentview_rgb": IMG,
            "eye_in_hand_rgb": IMG,
            "joint_states": (7,),
            "gripper_states": (2,),
            "ee_states": (16,),
            **NLI,
        },
    },
    "berkeley_autolab_ur5": {
        "action": {**RT1_ACTION, "gripper_closedness_action": ()},
        "observation": {"image": IMG, "hand_image": IMG, "image_with_depth": (4, 4, 1), "robot_state": (15,), **NLI},
    },
    "toto": {
        "action": {**RT1_ACTION, "open_gripper": ("bool", ())},
        "observation": {"image": IMG, "state": (7,), **NLI},
    },
    "language_table": {
        "action": (2,),
        "observation": {
            "rgb": IMG,
            "effector_translation": (2,),
            "effector_target_translation": (2,),
            "instruction": ("int32", (16,)),
        },
    },
    "columbia_cairlab_pusht_real": {
        "action": {**RT1_ACTION, "gripper_closedness_action": ()},
        "observation": {"image": IMG, "wrist_image": IMG, "robot_state": (2,), **NLI},
    },
    "bc_z": {
        "action": {
            "future/xyz_residual": (30,),
            "future/axis_angle_residual": (30,),
            "future/target_close": ("int64", (10,)),
        },
        "observation": {
            "image": IMG,
            "present/xyz": (3,),
            "present/axis_angle": (3,),
            "present/sensed_close": (1,),
            **NLI,
        },
    },
    "stanford_kuka_multimodal_dataset_converted_externally_to_rlds": flat(
        4,
        {"image": IMG, "depth_image": (4, 4, 1), "ee_position": (3,), "ee_orientation": (4,), "state": (8,)},
    ),
    "nyu_rot_dataset_converted_externally_to_rlds": flat(7, {"image": IMG, "state": (7,)}),
    "stanford_hydra_dataset_converted_externally_to_rlds": flat(
        7, {"image": IMG, "wrist_image": IMG, "state": (27,)}, is_dense=("bool", ())
    ),
    "austin_buds_dataset_converted_externally_to_rlds": flat(7, {"image": IMG, "wrist_image": IMG, "state": (24,)}),
    "nyu_franka_play_dataset_converted_externally_to_rlds": flat(
        15,
        {
            "image": IMG,
            "image_additional_view": IMG,
            "depth": ("int32", (4, 4, 1)),
            "depth_additional_view": ("int32", (4, 4, 1)),
            "state": (13,),
        },
    ),
    "maniskill_dataset_converted_externally_to_rlds": flat(
        7,
        {
            "image": IMG,
            "wrist_image": IMG,
            "depth": IMG,
            "wrist_depth": IMG,
            "tcp_pose": (7,),
            "base_pose": (7,),
            "state": (18,),
        },
    ),
    "furniture_bench_dataset_converted_externally_to_rlds": flat(
        8, {"image": IMG, "wrist_image": IMG, "state": (35,)}, skill_completion=()
    ),
    "cmu_franka_exploration_dataset_converted_externally_to_rlds": flat(
        8, {"highres_image": IMG, "image": IMG}, structured_action=(8,)
    ),
    "ucsd_kitchen_dataset_converted_externally_to_rlds": flat(8, {"image": IMG, "state": (21,)}),
    "ucsd_pick_and_place_dataset_converted_externally_to_rlds": flat(4, {"image": IMG, "state": (7,)}),
    "austin_sailor_dataset_converted_externally_to_rlds": flat(
        7,
        {
            "image": IMG,
            "wrist_image": IMG,
            "state": (8,),
            "state_ee": (16,),
            "state_gripper": (1,),
            "state_joint": (7,),
        },
    ),
    "austin_sirius_dataset_converted_externally_to_rlds": flat(
        7,
        {
            "image": IMG,
            "wrist_image": IMG,
            "state": (8,),
            "state_ee": (16,),
            "state_gripper": (1,),
            "state_joint": (7,),
        },
    ),
    "utokyo_pr2_opening_fridge_converted_externally_to_rlds": flat(8, {"image": IMG, "state": (7,)}),
    "utokyo_pr2_tabletop_manipulation_converted_externally_to_rlds": flat(8, {"image": IMG, "state": (7,)}),
    "utokyo_xarm_pick_and_place_converted_externally_to_rlds": flat(
        7,
        {
            "image": IMG,
            "image2": IMG,
            "hand_image": IMG,
            "end_effector_pose": (6,),
            "joint_state": (14,),
            "joint_trajectory": (21,),
        },
    ),
    "utokyo_xarm_bimanual_converted_externally_to_rlds": flat(
        14, {"image": IMG, "pose_l": (6,), "pose_r": (6,), "action_l": (7,), "action_r": (7,)}
    ),
    # robo_net's state width is not documented in the TFDS catalog.
    "robo_net": flat(5, {"image": IMG, "image1": IMG, "image2": IMG, "state": (5,)}),
    "berkeley_mvp_converted_externally_to_rlds": flat(
        8, {"hand_image": IMG, "gripper": ("bool", ()), "joint_pos": (7,), "pose": (7,)}
    ),
    "berkeley_rpt_converted_externally_to_rlds": flat(
        8, {"hand_image": IMG, "gripper": ("bool", ()), "joint_pos": (7,)}
    ),
    "kaist_nonprehensile_converted_externally_to_rlds": flat(
        20, {"image": IMG, "partial_pointcloud": (8, 3), "state": (21,)}
    ),
    "stanford_mask_vit_converted_externally_to_rlds": flat(
        5,
        {
            "image": IMG,
            "end_effector_pose": (5,),
            "finger_sensors": (1,),
            "high_bound": (5,),
            "low_bound": (5,),
            "state": (15,),
        },
    ),
    "tokyo_u_lsmo_converted_externally_to_rlds": flat(7, {"image": IMG, "state": (13,)}),
    "dlr_sara_pour_converted_externally_to_rlds": flat(7, {"image": IMG, "state": (6,)}),
    "dlr_sara_grid_clamp_converted_externally_to_rlds": flat(7, {"image": IMG, "state": (12,)}),
    "dlr_edan_shared_control_converted_externally_to_rlds": flat(7, {"image": IMG, "state": (7,)}),
    "asu_table_top_converted_externally_to_rlds": flat(
        7,
        {"image": IMG, "state": (7,), "state_vel": (7,)},
        ground_truth_states={"EE": (6,)},
        action_delta=(7,),
        action_inst=TXT,
        goal_object=TXT,
    ),
    # robocook's and cmu_playing_with_food's state widths are not documented.
    "stanford_robocook_converted_externally_to_rlds": flat(
        7,
        {f"image_{i}": IMG for i in range(1, 5)} | {f"depth_{i}": (4, 4) for i in range(1, 5)} | {"state": (15,)},
    ),
    "imperialcollege_sawyer_wrist_cam": flat(8, {"image": IMG, "wrist_image": IMG, "state": (1,)}),
    "iamlab_cmu_pickup_insert_converted_externally_to_rlds": flat(
        8, {"image": IMG, "wrist_image": IMG, "state": (20,)}
    ),
    "uiuc_d3field": flat(
        3, {f"image_{i}": IMG for i in range(1, 5)} | {f"depth_{i}": IMG for i in range(1, 5)} | {"state": (4,)}
    ),
    "utaustin_mutex": flat(7, {"image": IMG, "wrist_image": IMG, "state": (24,)}),
    "berkeley_fanuc_manipulation": flat(
        6, {"image": IMG, "wrist_image": IMG, "state": (13,), "end_effector_state": (7,)}
    ),
    "cmu_playing_with_food": flat(8, {"image": IMG, "finger_vision_1": IMG, "finger_vision_2": IMG, "state": (7,)}),
    "cmu_play_fusion": flat(9, {"image": IMG, "state": (8,)}),
    "cmu_stretch": flat(8, {"image": IMG, "state": (4,)}),
    **{
        name: flat(
            2,
            {"image": IMG, "position": ("float64", (2,)), "yaw": ("float64", (1,)), "state": ("float64", (3,))},
            action_angle=("float64", (3,)),
        )
        for name in ("berkeley_gnm_recon", "berkeley_gnm_cory_hall", "berkeley_gnm_sac_son")
    },
    "aloha_mobile": flat(16, {"cam_high": IMG, "cam_left_wrist": IMG, "cam_right_wrist": IMG, "state": (14,)}),
    "fmb": flat(
        7,
        {
            **{f"image_{v}": IMG for v in ("side_1", "side_2", "wrist_1", "wrist_2")},
            **{f"image_{v}_depth": IMG for v in ("side_1", "side_2", "wrist_1", "wrist_2")},
            "eef_pose": (7,),
            "state_gripper_pose": (),
            "joint_pos": (7,),
        },
    ),
    "dobbe": flat(7, {"wrist_image": IMG, "state": (7,), "xyz": (3,), "rot": (3,), "quat": (4,), "gripper": (1,)}),
    "robo_set": flat(
        8,
        {
            "image_left": IMG,
            "image_right": IMG,
            "image_top": IMG,
            "image_wrist": IMG,
            "state": (8,),
            "state_velocity": (8,),
        },
    ),
    "droid": {
        "action": ("float64", (7,)),
        "action_dict": {
            k: ("float64", (n,))
            for k, n in (
                ("cartesian_position", 6),
                ("cartesian_velocity", 6),
                ("gripper_position", 1),
                ("gripper_velocity", 1),
                ("joint_position", 7),
                ("joint_velocity", 7),
            )
        },
        "observation": {
            "exterior_image_1_left": IMG,
            "exterior_image_2_left": IMG,
            "wrist_image_left": IMG,
            "cartesian_position": ("float64", (6,)),
            "gripper_position": ("float64", (1,)),
            "joint_position": ("float64", (7,)),
        },
        "language_instruction": TXT,
        "language_instruction_2": TXT,
    },
}

# Steps a transform removes (Bridge drops the first step and relabels away the last).
DROPPED_STEPS = {"bridge_dataset": 2, "bridge_orig": 2, "bridge": 2}


def _leaf(layout, rng: np.random.Generator, t: int) -> tf.Tensor:
    if layout == IMG:
        return tf.constant([b"\xff\xd8fake-jpeg"] * t)
    if layout == TXT:
        return tf.constant([b"pick up the cup"] * t)
    dtype, shape = layout if layout and isinstance(layout[0], str) else ("float32", layout)
    if dtype == "bool":
        return tf.constant(rng.random((t, *shape)) > 0.5)
    if dtype.startswith("int"):
        return tf.constant(rng.integers(0, 2, (t, *shape)), dtype=dtype)
    # Floats in [0, 1]: a valid raw gripper value under every convention used here.
    return tf.constant(rng.uniform(0.0, 1.0, (t, *shape)), dtype=dtype)


def make_raw(name: str, t: int = T_STEPS, seed: int = 0) -> dict:
    """A synthetic raw trajectory of dataset ``name`` with ``t`` steps."""
    rng = np.random.default_rng(seed)

    def build(layout):
        if isinstance(layout, dict):
            return {k: build(v) for k, v in layout.items()}
        return _leaf(layout, rng, t)

    raw = build(RAW[name])
    raw.update(
        is_first=tf.constant(np.arange(t) == 0),
        is_last=tf.constant(np.arange(t) == t - 1),
        is_terminal=tf.constant(np.arange(t) == t - 1),
        reward=tf.zeros([t]),
        episode_metadata={"file_path": tf.constant([b"/data/episode_0.npy"] * t)},
    )
    return raw


def lookup(tree: dict, path: str):
    node = tree
    for part in path.split("/"):
        assert isinstance(node, dict) and part in node, f"key {path!r} missing (at {part!r}; have {sorted(node)})"
        node = node[part]
    return node


def key_paths(tree: dict, prefix: str = "") -> set[str]:
    paths = set()
    for k, v in tree.items():
        paths |= key_paths(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k}
    return paths


def oxe_specs() -> dict[str, specs.DatasetSpec]:
    return {s.name: s for s in oxe.SPECS}


def run(name: str, raw: dict | None = None) -> dict:
    spec = specs.get_spec(name)
    raw = make_raw(name) if raw is None else raw
    return spec.standardize_fn(raw) if spec.standardize_fn else raw


def gripper_values(spec: specs.DatasetSpec, action: tf.Tensor) -> np.ndarray:
    return action.numpy()[:, list(spec.gripper_dims)]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_every_oxe_spec_is_registered_and_consistent():
    registered = specs.all_specs()
    assert len(oxe.SPECS) >= 55
    assert set(oxe_specs()) == set(RAW), "every spec needs a raw layout in this test (and vice versa)"
    for name, spec in oxe_specs().items():
        assert registered[name] is spec
        assert spec.version == EXPECTED_VERSIONS.get(name, "0.1.0"), name
        assert spec.val_split == EXPECTED_VAL_SPLITS.get(name), name
        assert spec.train_split == "train"
        assert spec.control_frequency_hz > 0
        assert set(spec.cameras) <= set(specs.CAMERA_ROLES) and spec.cameras, name
        if spec.gripper_dims:
            assert spec.gripper_convention == "open=1,closed=0", name
        else:
            assert spec.gripper_convention == "none", name
        for i, normalized in enumerate(spec.normalize_action):
            assert normalized == (i not in spec.gripper_dims), (name, spec.action_dims[i])
        assert spec.standardize_fn is not None, name


def test_action_spaces_cover_the_registry():
    by_space = {}
    for spec in oxe.SPECS:
        by_space.setdefault(spec.action_space, []).append(spec.name)
    assert "fractal20220817_data" in by_space["eef_delta"]
    assert "robo_set" in by_space["joint_position"]
    assert "aloha_mobile" in by_space["bimanual_joint_position"]
    assert "language_table" in by_space["base_2d"]
    assert "jaco_play" in by_space["eef_delta_xyz"]
    assert "utokyo_xarm_pick_and_place_converted_externally_to_rlds" in by_space["eef_absolute"]


def test_bridge_orig_is_bridge_dataset_under_another_name():
    a, b = specs.get_spec("bridge_dataset"), specs.get_spec("bridge_orig")
    assert a.standardize_fn is b.standardize_fn
    assert (a.version, a.cameras, a.action_dims, a.val_split) == (b.version, b.cameras, b.action_dims, b.val_split)


def test_magic_soup_has_octos_datasets_and_weights():
    soup = specs.get_mixture("oxe_magic_soup")
    assert len(soup.weights) == 25
    assert dict(soup.weights) == pytest.approx(MAGIC_SOUP)
    assert set(dict(soup.weights)) == set(MAGIC_SOUP)


def test_magic_soup_plus_has_openvlas_datasets_and_weights():
    soup = specs.get_mixture("oxe_magic_soup_plus")
    assert len(soup.weights) == 27
    assert dict(soup.weights) == pytest.approx(MAGIC_SOUP_PLUS)
    assert set(dict(soup.weights)) == set(MAGIC_SOUP_PLUS)


def test_small_mixtures():
    rtx = dict(specs.get_mixture("rtx").weights)
    assert rtx["berkeley_cable_routing"] == 3.0 and rtx["nyu_door_opening_surprising_effectiveness"] == 5.0
    assert len(rtx) == 11
    franka = dict(specs.get_mixture("rtx_franka").weights)
    assert franka["taco_play"] == 2.0  # the RT-X weight wins over the Franka one, as in Octo
    assert franka["cmu_franka_exploration_dataset_converted_externally_to_rlds"] == 5.0
    assert dict(specs.get_mixture("bridge_v2").weights) == {"bridge_dataset": 1.0}
    minus = dict(specs.get_mixture("oxe_magic_soup_plus_minus").weights)
    assert minus["fractal20220817_data"] == 1.0 and "droid" not in minus and "language_table" not in minus


def test_every_mixture_names_registered_specs():
    registered = specs.all_specs()
    for mixture in specs.all_mixtures().values():
        for name, weight in mixture.weights:
            assert name in registered, (mixture.name, name)
            assert weight > 0


def test_standardize_fns_are_importable_module_functions():
    for spec in oxe.SPECS:
        fn = spec.standardize_fn
        assert fn.__module__ == T.__name__
        assert getattr(T, fn.__name__) is fn, spec.name


# ---------------------------------------------------------------------------
# Every transform on its dataset's raw layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RAW))
def test_transform_produces_the_declared_action_and_keys(name):
    spec = specs.get_spec(name)
    raw = make_raw(name)
    paths_before = key_paths(raw)
    action_before = raw["action"]
    out = run(name, raw)
    steps = T_STEPS - DROPPED_STEPS.get(name, 0)
    action = out[spec.action_key]
    assert action.dtype == tf.float32
    assert tuple(action.shape) == (steps, spec.action_dim)
    assert np.isfinite(action.numpy()).all()
    grippers = gripper_values(spec, action)
    assert ((grippers >= 0.0) & (grippers <= 1.0)).all(), grippers
    for key in (*spec.cameras.values(), *spec.depth_cameras.values()):
        assert lookup(out["observation"], key).shape[0] == steps
    for key in spec.state_keys:
        state = tf.reshape(tf.cast(lookup(out["observation"], key), tf.float32), [steps, -1])
        assert state.shape[1] > 0
    if spec.language_key is not None:
        language = lookup(out, spec.language_key)
        assert language.dtype == tf.string and tuple(language.shape) == (steps,)
    assert key_paths(raw) == paths_before and raw["action"] is action_before, "the input was mutated"


@pytest.mark.parametrize("name", sorted(RAW))
def test_transform_runs_in_a_tf_data_graph(name):
    spec = specs.get_spec(name)
    dataset = tf.data.Dataset.from_tensors(make_raw(name)).map(spec.standardize_fn)
    (out,) = list(dataset)
    assert out["action"].shape[-1] == spec.action_dim


# ---------------------------------------------------------------------------
# Gripper conventions and other conversions, on hand-written values
# ---------------------------------------------------------------------------


def _fractal_with_gripper(commands: list[float]) -> dict:
    raw = make_raw("fractal20220817_data", t=len(commands))
    raw["action"]["gripper_closedness_action"] = tf.constant([[c] for c in commands], tf.float32)
    return raw


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ([0, 1, 0, -1, 0], [1, 0, 0, 1, 1]),  # close then open; open before the first "close"
        ([0, 0, -1, 0, 1], [0, 0, 1, 1, 0]),  # first command "open": it was closed before
        ([0, 0, 0, 0, 0], [1, 1, 1, 1, 1]),  # no command: open throughout
        ([1, 1, 0.05, -0.05, 1], [0, 0, 0, 0, 0]),  # sub-threshold values keep the state
    ],
)
def test_fractal_relative_gripper_becomes_absolute_open_is_one(commands, expected):
    out = run("fractal20220817_data", _fractal_with_gripper(commands))
    np.testing.assert_array_equal(out["action"].numpy()[:, 6], np.array(expected, np.float32))


def test_fractal_action_layout_and_state_keys():
    raw = make_raw("fractal20220817_data")
    out = run("fractal20220817_data", raw)
    np.testing.assert_allclose(out["action"][:, :3], raw["action"]["world_vector"])
    np.testing.assert_allclose(out["action"][:, 3:6], raw["action"]["rotation_delta"])
    assert specs.get_spec("fractal20220817_data").language_key == "observation/natural_language_instruction"


@pytest.mark.parametrize("compressed", [False, True])
def test_kuka_state_is_read_plain_or_zlib_compressed(compressed):
    raw = make_raw("kuka")
    pose = np.arange(T_STEPS * 7, dtype=np.float32).reshape(T_STEPS, 7)
    closed = np.arange(T_STEPS, dtype=np.float32).reshape(T_STEPS, 1)
    if compressed:
        raw["observation"]["clip_function_input/base_pose_tool_reached"] = tf.constant(
            [zlib.compress(row.tobytes()) for row in pose]
        )
        raw["observation"]["gripper_closed"] = tf.constant([zlib.compress(row.tobytes()) for row in closed])
    else:
        raw["observation"]["clip_function_input/base_pose_tool_reached"] = tf.constant(pose)
        raw["observation"]["gripper_closed"] = tf.constant(closed)
    out = run("kuka", raw)
    np.testing.assert_array_equal(out["observation"]["proprio"], np.concatenate([pose, closed], axis=1))


def test_bridge_v2_drops_first_step_binarizes_and_relabels_from_states():
    raw = make_raw("bridge_dataset", t=6)
    state = np.zeros((6, 7), np.float32)
    state[:, 0] = [0.0, 0.1, 0.3, 0.6, 1.0, 1.5]
    state[:, 5] = [0.0, 3.1, -3.1, 0.0, 0.0, 0.0]  # yaw crossing +-pi
    raw["observation"]["state"] = tf.constant(state)
    raw["action"] = tf.constant(np.array([[0, 0, 0, 0, 0, 0, g] for g in [1.0, 1.0, 0.5, 0.0, 0.3, 0.99]], np.float32))
    out = run("bridge_dataset", raw)
    action = out["action"].numpy()
    assert action.shape == (4, 7)
    np.testing.assert_allclose(action[:, 0], [0.2, 0.3, 0.4, 0.5], atol=1e-6)  # steps 1..4 -> next state
    np.testing.assert_allclose(action[:, 5], [2 * math.pi - 6.2, 3.1, 0.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(action[:, 6], [1.0, 0.0, 0.0, 1.0])  # 0.5 -> next settled 0; 0.3 -> 1
    assert out["observation"]["image_0"].shape[0] == 4
    assert out["language_instruction"].shape[0] == 4


def test_bridge_oxe_boolean_gripper():
    raw = make_raw("bridge")
    raw["action"]["open_gripper"] = tf.constant([True, True, False, True, False])
    out = run("bridge", raw)
    np.testing.assert_array_equal(out["action"].numpy()[:, 6], [1.0, 0.0, 1.0])


def test_language_table_decodes_code_points_and_is_2d():
    raw = make_raw("language_table")
    text = "push the red star"
    codes = np.zeros((T_STEPS, 32), np.int32)
    codes[:, : len(text)] = [ord(c) for c in text]
    raw["observation"]["instruction"] = tf.constant(codes)
    out = run("language_table", raw)
    assert [s.decode() for s in out["language_instruction"].numpy()] == [text] * T_STEPS
    assert out["action"].shape == (T_STEPS, 2)
    assert specs.get_spec("language_table").gripper_convention == "none"


def test_taco_play_gripper_plus_one_is_open():
    raw = make_raw("taco_play")
    rel = np.zeros((T_STEPS, 7), np.float32)
    rel[:, 6] = [1, -1, -1, 1, 1]
    raw["action"]["rel_actions_world"] = tf.constant(rel)
    out = run("taco_play", raw)
    np.testing.assert_array_equal(out["action"].numpy()[:, 6], [1, 0, 0, 1, 1])
    assert out["observation"]["proprio"].shape == (T_STEPS, 7)


@pytest.mark.parametrize(
    "name",
    [
        "viola",
        "austin_sailor_dataset_converted_externally_to_rlds",
        "utaustin_mutex",
        "stanford_mask_vit_converted_externally_to_rlds",
    ],
)
def test_close_signal_grippers_map_plus_one_to_closed(name):
    raw = make_raw(name)
    signal = tf.constant([1.0, -1.0, 1.0, -1.0, -1.0])
    if name == "viola":
        raw["action"]["gripper_closedness_action"] = signal
    else:
        action = raw["action"].numpy()
        action[:, -1] = signal.numpy()
        raw["action"] = tf.constant(action)
    out = run(name, raw)
    np.testing.assert_array_equal(out["action"].numpy()[:, -1], [0, 1, 0, 1, 1])


def test_joint_space_robo_set():
    spec = specs.get_spec("robo_set")
    assert spec.action_space == "joint_position" and spec.state_encoding == "joint"
    raw = make_raw("robo_set")
    action = raw["action"].numpy()
    action[:, 7] = [1.0, -1.0, 0.0, 1.0, -1.0]
    raw["action"] = tf.constant(action)
    out = run("robo_set", raw)
    np.testing.assert_allclose(out["action"].numpy()[:, :7], action[:, :7])
    np.testing.assert_array_equal(out["action"].numpy()[:, 7], [0, 1, 1, 0, 1])


def test_joint_delta_berkeley_mvp_gripper_one_is_closed():
    raw = make_raw("berkeley_mvp_converted_externally_to_rlds")
    action = np.zeros((T_STEPS, 8), np.float32)
    action[:, 7] = [0, 1, 1, 0, 0]
    raw["action"] = tf.constant(action)
    out = run("berkeley_mvp_converted_externally_to_rlds", raw)
    np.testing.assert_array_equal(out["action"].numpy()[:, 7], [1, 0, 0, 1, 1])
    assert out["observation"]["proprio"].shape == (T_STEPS, 8)  # pose + gripper bit


def test_bimanual_aloha_mobile_is_16d_with_two_grippers():
    spec = specs.get_spec("aloha_mobile")
    assert spec.action_space == "bimanual_joint_position"
    assert spec.gripper_dims == (6, 13)
    assert spec.normalize_action[14:] == (True, True)  # base velocities
    raw = make_raw("aloha_mobile")
    action = raw["action"].numpy()
    action[:, [6, 13]] = np.clip(action[:, [6, 13]], 0, 1)  # stored as openings in [0, 1]
    raw["action"] = tf.constant(action)
    out = run("aloha_mobile", raw)
    assert out["action"].shape == (T_STEPS, 16)
    np.testing.assert_allclose(out["action"].numpy(), action)


def test_bimanual_xarm_keeps_both_arms():
    spec = specs.get_spec("utokyo_xarm_bimanual_converted_externally_to_rlds")
    assert spec.action_dim == 14 and spec.gripper_dims == (6, 13)
    out = run(spec.name)
    assert out["observation"]["proprio"].shape == (T_STEPS, 12)


@pytest.mark.parametrize("name", ["berkeley_gnm_recon", "robo_net"])
def test_datasets_without_language(name):
    spec = specs.get_spec(name)
    assert spec.language_key is None
    out = run(name)
    assert out["action"].dtype == tf.float32


def test_gnm_is_a_2d_base_action_from_float64():
    spec = specs.get_spec("berkeley_gnm_recon")
    assert spec.action_space == "base_2d" and spec.gripper_dims == ()
    raw = make_raw("berkeley_gnm_recon")
    out = run("berkeley_gnm_recon", raw)
    np.testing.assert_allclose(out["action"], tf.cast(raw["action"], tf.float32))
    assert out["observation"]["proprio"].shape == (T_STEPS, 3)


def test_droid_gripper_position_one_is_closed():
    raw = make_raw("droid")
    raw["action_dict"]["gripper_position"] = tf.constant([[0.0], [1.0], [0.25], [1.0], [0.0]], tf.float64)
    out = run("droid", raw)
    np.testing.assert_allclose(out["action"].numpy()[:, 6], [1.0, 0.0, 0.75, 0.0, 1.0])
    np.testing.assert_allclose(out["action"][:, :6], tf.cast(raw["action_dict"]["cartesian_velocity"], tf.float32))


def test_maniskill_signed_gripper_opening():
    raw = make_raw("maniskill_dataset_converted_externally_to_rlds")
    action = raw["action"].numpy()
    action[:, 6] = [-1.0, 1.0, 0.0, -1.0, 1.0]
    raw["action"] = tf.constant(action)
    out = run("maniskill_dataset_converted_externally_to_rlds", raw)
    np.testing.assert_allclose(out["action"].numpy()[:, 6], [0.0, 1.0, 0.5, 0.0, 1.0])


def test_quaternion_actions_become_euler():
    quats = tf.constant(
        [
            [0.0, 0.0, 0.0, 1.0],  # identity
            [0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4)],  # yaw +90 deg
            [math.sin(math.pi / 8), 0.0, 0.0, math.cos(math.pi / 8)],  # roll +45 deg
        ]
    )
    np.testing.assert_allclose(
        T.quaternion_xyzw_to_euler(quats).numpy(),
        [[0, 0, 0], [0, 0, math.pi / 2], [math.pi / 4, 0, 0]],
        atol=1e-6,
    )
    raw = make_raw("furniture_bench_dataset_converted_externally_to_rlds")
    action = np.zeros((T_STEPS, 8), np.float32)
    action[:, 3:7] = [0.0, 0.0, 0.0, 1.0]
    action[:, 7] = [1, -1, 1, -1, 1]  # +1 = close
    raw["action"] = tf.constant(action)
    out = run("furniture_bench_dataset_converted_externally_to_rlds", raw)
    np.testing.assert_allclose(out["action"].numpy()[:, 3:6], 0.0, atol=1e-7)
    np.testing.assert_array_equal(out["action"].numpy()[:, 6], [0, 1, 0, 1, 0])


def test_bc_z_takes_the_first_future_step_and_inverts_target_close():
    raw = make_raw("bc_z")
    raw["action"]["future/target_close"] = tf.constant(np.tile([[1], [0], [1], [0], [0]], (1, 10)), tf.int64)
    out = run("bc_z", raw)
    np.testing.assert_allclose(out["action"][:, :3], raw["action"]["future/xyz_residual"][:, :3])
    np.testing.assert_array_equal(out["action"].numpy()[:, 6], [0, 1, 0, 1, 1])
    assert out["observation"]["proprio"].shape == (T_STEPS, 7)


@pytest.mark.parametrize("length", [0, 1, 2])
@pytest.mark.parametrize(
    "name", ["bridge_dataset", "bridge", "fractal20220817_data", "kuka", "language_table", "droid"]
)
def test_short_trajectories_do_not_crash(name, length):
    spec = specs.get_spec(name)
    out = run(name, make_raw(name, t=length))
    steps = max(0, length - DROPPED_STEPS.get(name, 0))
    assert tuple(out["action"].shape) == (steps, spec.action_dim)
