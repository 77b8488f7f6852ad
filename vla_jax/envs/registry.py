"""The environments ``vla-jax eval --env`` and ``config.closed_loop.env`` know, by name."""

from __future__ import annotations

import dataclasses
import os
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
    max_envs: Callable[[], int] = lambda: MAX_NUM_ENVS  # environments this machine can step together


MAX_NUM_ENVS = 64  # environments stepped together (one batched policy call; the policy's largest batch)
# Held-out evaluation seeds are EVAL_SEED_BASE + 10_000 * seed + episode (both environments): a seed in
# [0, MAX_EVAL_SEED] and at most MAX_EVAL_EPISODES episodes keep them apart from each other and from the data's.
MAX_EVAL_SEED = 2**20
MAX_EVAL_EPISODES = 10_000

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
        make=metaworld.make,  # MT10, one spawned worker per slot; MuJoCo only there
        eval_seed=metaworld.eval_seed,
        cameras=metaworld.MetaWorldVectorEnv.cameras,
        max_envs=lambda: os.cpu_count() or 1,  # each worker renders on a CPU core
    ),
}
