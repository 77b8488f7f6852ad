"""DatasetSpec of the template dataset ``my_robot`` (built by ``my_robot_dataset_builder.py``).

Copy this file into ``vla_jax/data/datasets/`` (found automatically) or keep it
anywhere and point ``VLA_JAX_SPECS`` at it; rename and adapt the TODOs.
"""

from vla_jax.data.specs import DatasetSpec, register

register(
    DatasetSpec(
        name="my_robot",  # TODO: the builder's name (snake_case of its class name)
        # TODO: one of vla_jax.data.specs.ACTION_SPACES; its position there is the
        # action-space id the model's router is given.
        action_space="eef_delta",
        action_dims=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
        normalize_action=(True, True, True, True, True, True, False),  # grippers stay as they are
        control_frequency_hz=10.0,  # TODO: the rate actions were issued at
        gripper_convention="open=1,closed=0",  # TODO: what the gripper dim's values mean
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("state",),
        state_encoding="eef_pos_euler",
        language_key="language_instruction",
        action_key="action",
        version="1.0.0",  # the builder's VERSION
        config_name=None,  # the builder has no BUILDER_CONFIGS
        train_split="train",
        val_split="val",  # None: hold out the last val_fraction of train instead
        standardize_fn=None,
        notes="Template dataset; state is [x, y, z, roll, pitch, yaw, finger_left, finger_right].",
    )
)
