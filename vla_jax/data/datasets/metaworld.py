"""Meta-World v3 scripted-expert demonstrations (:mod:`vla_jax.data.metaworld_demos`), MT10 by default.

Make them first: ``vla-jax data metaworld --out DIR`` (default DIR: ``$VLA_JAX_CACHE/metaworld``).

Actions are Meta-World's own ``[dx, dy, dz, gripper]``: mocap position
increments (1 cm per unit, clipped to [-1, 1]) without rotation, hence
``eef_delta_xyz``. The gripper value drives the two finger actuators with
``+1`` closing and ``-1`` opening (the experts also send 0 and fractions),
hence ``closed=1,open=-1``. One action per ``env.dt`` = 0.0125 s (model
timestep 2.5 ms, frame skip 5): 80 Hz.
"""

from vla_jax.data import metaworld_demos
from vla_jax.data.specs import DatasetSpec, register
from vla_jax.envs import metaworld as mw

register(
    DatasetSpec(
        name=metaworld_demos.NAME,
        action_space="eef_delta_xyz",
        action_dims=("dx", "dy", "dz", "gripper"),
        normalize_action=(True, True, True, False),
        control_frequency_hz=mw.CONTROL_FREQUENCY_HZ,
        gripper_convention="closed=1,open=-1",
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="other",
        version=metaworld_demos.VERSION,
        train_split="train",
        val_split="val",
        notes=(
            f"Meta-World v3 (Sawyer, MuJoCo), camera {mw.CAMERA} turned right side up; state is "
            "[hand x, y, z, gripper opening in [0, 1], 1 open]; scripted experts of metaworld.policies"
        ),
    )
)
