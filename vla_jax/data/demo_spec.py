"""The spec of the embedded demo dataset (see :mod:`vla_jax.data.demo`)."""

from vla_jax.data import demo
from vla_jax.data.specs import DatasetSpec, register

DEMO = register(
    DatasetSpec(
        name=demo.NAME,
        cameras={"primary": "image", "wrist": "wrist_image"},
        state_keys=("state",),
        action_dims=("dx", "dy", "dz", "gripper"),
        normalize_action=(True, True, True, False),
        gripper_convention="1=open,0=closed (absolute command)",
        control_frequency_hz=demo.CONTROL_FREQUENCY_HZ,
        version=demo.VERSION,
        config_name="default",
    )
)
