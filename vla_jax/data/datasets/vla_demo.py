"""The embedded demo dataset (see :mod:`vla_jax.data.demo`): the worked example of a spec."""

from vla_jax.data import demo
from vla_jax.data.specs import DatasetSpec, register

register(
    DatasetSpec(
        name=demo.NAME,
        action_space="eef_delta_xyz",
        action_dims=("dx", "dy", "dz", "gripper"),
        normalize_action=(True, True, True, False),
        control_frequency_hz=demo.CONTROL_FREQUENCY_HZ,
        gripper_convention="open=1,closed=0",
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("state",),
        state_encoding="other",
        version=demo.VERSION,
        config_name="default",
        train_split="train",
        val_split="val",
        notes="procedural pick-up task; state is [x, y, z, gripper]",
    )
)

# The second robot of the fine-tuning example (experiments/finetune_demo.py): absolute targets, one camera.
register(
    DatasetSpec(
        name="vla_demo_absolute",
        builder_name=demo.NAME,
        action_space="eef_absolute",
        action_dims=("x", "y", "z", "gripper"),
        normalize_action=(True, True, True, False),
        control_frequency_hz=demo.CONTROL_FREQUENCY_HZ,
        gripper_convention="open=1,closed=0",
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="other",
        version=demo.VERSION,
        config_name=demo.ABSOLUTE,
        train_split="train",
        val_split="val",
        notes="the demo task recorded by another robot: absolute [x, y, z] targets and gripper, table camera only",
    )
)
