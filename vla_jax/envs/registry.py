"""The environments ``vla-jax eval --env`` and ``config.closed_loop.env`` know, by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vla_jax.envs import demo, metaworld
from vla_jax.envs.base import SyncVectorEnv, VectorEnv


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """How to build ``num_envs`` copies of an environment, and its held-out evaluation seeds."""

    name: str
    dataset: str  # the robot the policy acts as (its statistics and action space)
    make: Callable[[int], VectorEnv]
    eval_seed: Callable[[int, int], int]  # (--seed, episode index) -> the environment's seed
    cameras: tuple[str, ...]  # what the video shows


MAX_NUM_ENVS = 64  # environments stepped together (one batched policy call; the policy's largest batch)

ENVS: dict[str, EnvSpec] = {
    demo.NAME: EnvSpec(
        name=demo.NAME,
        dataset=demo.DATASET,
        make=lambda num_envs: SyncVectorEnv([demo.DemoEnv() for _ in range(num_envs)]),
        eval_seed=demo.eval_seed,
        cameras=demo.DemoEnv.cameras,
    ),
    metaworld.NAME: EnvSpec(
        name=metaworld.NAME,
        dataset=metaworld.DATASET,
        make=metaworld.make,  # MT10, one spawned worker per slot (at most one per CPU core); MuJoCo only there
        eval_seed=metaworld.eval_seed,
        cameras=metaworld.MetaWorldVectorEnv.cameras,
    ),
}
