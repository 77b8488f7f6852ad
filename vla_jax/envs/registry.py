"""The environments ``vla-jax eval --env`` and ``config.closed_loop.env`` know, by name."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from vla_jax.envs import demo, metaworld
from vla_jax.envs.base import SyncVectorEnv, VectorEnv


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to build ``num_envs`` copies of an environment (its seeds follow ``envs.base.eval_seed``)."""

    name: str
    dataset: str  # the robot the policy acts as (its statistics and action space)
    make: Callable[[int], VectorEnv]
    cameras: tuple[str, ...]  # what the video shows
    max_envs: Callable[[], int] = lambda: MAX_NUM_ENVS  # environments this machine can step together


MAX_NUM_ENVS = 64  # environments stepped together (one batched policy call; the policy's largest batch)

ENVS: dict[str, EnvSpec] = {
    demo.NAME: EnvSpec(
        name=demo.NAME,
        dataset=demo.DATASET,
        make=lambda num_envs: SyncVectorEnv([demo.DemoEnv() for _ in range(num_envs)]),
        cameras=demo.DemoEnv.cameras,
    ),
    metaworld.NAME: EnvSpec(
        name=metaworld.NAME,
        dataset=metaworld.DATASET,
        make=metaworld.make,  # MT10, one spawned worker per slot; MuJoCo only there
        cameras=metaworld.MetaWorldVectorEnv.cameras,
        max_envs=lambda: os.cpu_count() or 1,  # each worker renders on a CPU core
    ),
}
