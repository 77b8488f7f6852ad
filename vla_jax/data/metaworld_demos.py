"""Meta-World demonstrations: the scripted experts rolled out in :mod:`vla_jax.envs.metaworld`, written as RLDS.

    vla-jax data metaworld --out DIR [--episodes-per-task N] [--tasks reach-v3 push-v3 ...]

Episodes come from the environment's training seeds ``0, 1, 2, ...`` (the
validation split from ``VAL_SEED_BASE``), so closed-loop evaluation's seeds
(:func:`vla_jax.envs.base.eval_seed`) are variations no demonstration
shows. A seed whose expert does not succeed within ``max_steps`` is skipped
and the next seed of that task is tried, so every task gets the same number of
successful episodes. Each step holds the frame and state the policy sees, the
expert's (clipped) action, the task's instruction and the RLDS flags; the last
step is the one whose action reached success.

This process imports TensorFlow (tensorflow-datasets) while the simulators
render in spawned worker processes: MuJoCo's renderer and TensorFlow cannot
share a process.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

import numpy as np

from vla_jax.data import cache_dir
from vla_jax.envs import base as env_base
from vla_jax.envs import metaworld as mw
from vla_jax.errors import DataError

NAME = mw.DATASET
VERSION = "1.0.0"  # bump whenever the generator or the environment changes
EPISODES_PER_TASK = 50
VAL_EPISODES_PER_TASK = 2
MAX_FAILED_SEEDS = 20  # per task: more expert failures than this is a broken setup, not bad luck


def default_data_dir() -> pathlib.Path:
    """Where the generator writes and ``experiments/metaworld_mt10.py`` reads: ``$VLA_JAX_CACHE/metaworld``."""
    return cache_dir() / "metaworld"


def _episode(steps: list[dict], task: str, seed: int, variation: int) -> dict:
    last = len(steps) - 1
    return {
        "steps": {
            "observation": {
                "image": np.stack([s["image"] for s in steps]),
                "state": np.stack([s["state"] for s in steps]).astype(np.float32),
            },
            "action": np.stack([s["action"] for s in steps]).astype(np.float32),
            "language_instruction": np.array([mw.instruction(task)] * len(steps), dtype=object),
            "reward": np.array([float(i == last) for i in range(len(steps))], np.float32),
            "discount": np.ones(len(steps), np.float32),
            "is_first": np.array([i == 0 for i in range(len(steps))]),
            "is_last": np.array([i == last for i in range(len(steps))]),
            "is_terminal": np.array([i == last for i in range(len(steps))]),
        },
        "episode_metadata": {"file_path": f"{task}/seed_{seed}", "task": task, "seed": seed, "variation": variation},
    }


def rollout_experts(
    envs: mw.MetaWorldVectorEnv, episodes_per_task: int, first_seed: int = 0, log=None
) -> tuple[list[dict], dict]:
    """``episodes_per_task`` successful expert episodes of each of ``envs.tasks`` from seeds ``first_seed, ...``.

    Returns the episodes (ordered by seed) and per-task counts of tried and successful seeds.
    """
    tasks, num = envs.tasks, envs.num_envs
    counts = {task: {"tried": 0, "succeeded": 0} for task in tasks}
    wanted = {task: episodes_per_task for task in tasks}  # still to start
    next_seed = first_seed
    found: list[tuple[int, dict]] = []
    running: dict[int, dict] = {}
    observations: dict[int, dict] = {}

    def begin(slot: int) -> bool:
        nonlocal next_seed
        while any(wanted.values()):
            seed, next_seed = next_seed, next_seed + 1
            task, variation = mw.task_and_variation(seed, tasks)
            if wanted[task] > 0:
                wanted[task] -= 1
                observations[slot] = envs.reset(slot, seed)
                running[slot] = {"seed": seed, "task": task, "variation": variation, "steps": []}
                return True
        return False

    for slot in range(num):
        begin(slot)
    while running:
        actions = {slot: envs.expert_action(slot) for slot in running}
        for slot, action in actions.items():
            obs = observations[slot]
            running[slot]["steps"].append({"image": obs["image/primary"], "state": obs["state"], "action": action})
        for slot, (obs, done, info) in envs.step(actions).items():
            observations[slot] = obs
            if not done:
                continue
            episode = running.pop(slot)
            task = episode["task"]
            counts[task]["tried"] += 1
            if info["success"]:
                counts[task]["succeeded"] += 1
                found.append((episode["seed"], _episode(episode["steps"], task, episode["seed"], episode["variation"])))
            else:
                if counts[task]["tried"] - counts[task]["succeeded"] > MAX_FAILED_SEEDS:
                    raise DataError(f"metaworld demos: the scripted expert failed {MAX_FAILED_SEEDS}+ seeds of {task}")
                wanted[task] += 1  # try another seed of this task
            if log is not None:
                done_total = sum(c["succeeded"] for c in counts.values())
                log(f"{task} seed {episode['seed']}: {'success' if info['success'] else 'failure'} in "
                    f"{len(episode['steps'])} steps ({done_total}/{episodes_per_task * len(tasks)})")  # fmt: skip
            begin(slot)
    found.sort(key=lambda pair: pair[0])
    return [episode for _, episode in found], counts


def generate(
    out: str | pathlib.Path | None = None,
    *,
    episodes_per_task: int = EPISODES_PER_TASK,
    val_episodes_per_task: int = VAL_EPISODES_PER_TASK,
    tasks: Sequence[str] = mw.MT10,
    num_workers: int | None = None,
    image_size: int = mw.IMAGE_SIZE,
    max_steps: int = mw.MAX_STEPS,
    image_encoding: str = "jpeg",
    log=None,
) -> dict:
    """Writes the demonstrations as the RLDS builder ``metaworld/VERSION`` under ``out``; a summary.

    ``num_workers`` simulator processes run the experts (default: one per CPU core, at most 8).
    """
    import os

    from vla_jax.data import rlds_writer

    if episodes_per_task < 1 or val_episodes_per_task < 0:
        raise DataError(f"metaworld demos: {episodes_per_task} episodes per task (>= 1 wanted), "
                        f"{val_episodes_per_task} validation episodes per task (>= 0 wanted)")  # fmt: skip
    out = pathlib.Path(out) if out else default_data_dir()
    workers = num_workers or max(1, min(8, os.cpu_count() or 1))
    total = (episodes_per_task + val_episodes_per_task) * len(tasks)
    started = time.perf_counter()
    with mw.MetaWorldVectorEnv(
        min(workers, total), tasks=tuple(tasks), image_size=image_size, max_steps=max_steps
    ) as envs:
        train, train_counts = rollout_experts(envs, episodes_per_task, 0, log)
        val, val_counts = [], {}
        if val_episodes_per_task:
            val, val_counts = rollout_experts(envs, val_episodes_per_task, env_base.VAL_SEED_BASE, log)
    rollout_s = time.perf_counter() - started
    splits = {"train": train, **({"val": val} if val else {})}
    builder_dir = rlds_writer.write_rlds(
        out,
        NAME,
        splits,
        version=VERSION,
        description=(
            f"Meta-World v3 scripted-expert demonstrations ({', '.join(tasks)}): camera {mw.CAMERA} "
            f"{image_size}x{image_size}, state [hand x, y, z, gripper opening], action [dx, dy, dz, gripper] "
            f"(gripper +1 closes), {mw.CONTROL_FREQUENCY_HZ:g} Hz."
        ),
        image_encoding=image_encoding,
        num_shards=min(8, len(train)),
    )
    steps = sum(len(e["steps"]["action"]) for e in train)
    return {
        "builder_dir": str(builder_dir),
        "data_dir": str(out),
        "train_episodes": len(train),
        "val_episodes": len(val),
        "train_steps": steps,
        "expert": {
            task: {"train": train_counts[task], **({"val": val_counts[task]} if val_counts else {})} for task in tasks
        },
        "rollout_s": rollout_s,
        "wall_s": time.perf_counter() - started,
    }
