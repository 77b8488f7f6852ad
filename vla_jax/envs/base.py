"""The environment interface of closed-loop evaluation.

An environment speaks the policy's observation format (the keys of
:mod:`vla_jax.inference.policy`: ``image/<role>``, ``state``, ``prompt``,
``dataset``), so its observations go to a ``Policy``, a ``PolicyClient`` or a
robot-side wrapper unchanged, and it takes the policy's actions in the robot's
own units.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vla_jax.errors import VlaJaxError

# Seeds, the same scheme in every environment: the data's training episodes use 0, 1, ..., its validation
# episodes VAL_SEED_BASE + i, and closed-loop evaluation EVAL_SEED_BASE + MAX_EVAL_EPISODES * seed + i (eval_seed).
# A seed in [0, MAX_EVAL_SEED] and at most MAX_EVAL_EPISODES episodes keep evaluation apart from both.
VAL_SEED_BASE = 1_000_000
EVAL_SEED_BASE = 2_000_000
MAX_EVAL_EPISODES = 10_000
MAX_EVAL_SEED = 2**20


def eval_seed(seed: int, episode: int) -> int:
    """The held-out environment seed of evaluation episode ``episode`` under ``--seed seed``."""
    return EVAL_SEED_BASE + MAX_EVAL_EPISODES * seed + episode


class Env(Protocol):
    """One episode at a time: ``reset(seed)`` then ``step(action)`` until ``done``."""

    name: str  # what ``vla-jax eval --env`` calls it
    dataset: str  # the dataset (embodiment) whose statistics and action space the policy should use
    max_steps: int  # an episode ends after this many steps at the latest
    task: str  # what the current episode is reported under (the demo: the named colour; Meta-World: the task)

    def reset(self, seed: int) -> dict:
        """Starts the episode drawn from ``seed`` (the same seed: the same scene); returns its first observation."""
        ...

    def step(self, action: np.ndarray) -> tuple[dict, bool, dict]:
        """Applies one action; returns ``(observation, done, info)``, ``info["success"]`` a bool."""
        ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (what the demonstrations were made with)."""
        ...

    def close(self) -> None: ...


class EnvError(VlaJaxError, ValueError):
    """An action, a seed or a setting an environment cannot take; the message names it and what was expected."""


def check_action(action, dim: int, env: str) -> np.ndarray:
    """``action`` as a finite float64 vector of ``dim`` values; EnvError otherwise (never a silent wrong step)."""
    array = np.asarray(action, np.float64)
    if array.shape != (dim,):
        raise EnvError(f"env {env!r}: an action has shape {array.shape}; expected [{dim}]")
    if not np.all(np.isfinite(array)):
        raise EnvError(f"env {env!r}: the action {array.tolist()} holds NaN or inf values")
    return array


class VectorEnv(Protocol):
    """``num_envs`` environments stepped together; each slot runs one episode at a time."""

    num_envs: int
    dataset: str
    max_steps: int

    def reset(self, index: int, seed: int) -> dict: ...

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, tuple[dict, bool, dict]]: ...

    def task(self, index: int) -> str: ...

    def episode(self, seed: int) -> tuple[str, str]:
        """The task and instruction of the episode ``seed`` starts (without running it where the env can tell)."""
        ...

    def expert_action(self, index: int) -> np.ndarray: ...

    def close(self) -> None: ...


class SyncVectorEnv:
    """Environments in this process, stepped one after another (cheap simulators such as the demo task)."""

    def __init__(self, envs: list[Env]):
        if not envs:
            raise EnvError("a vector env needs at least one environment")
        self.envs = envs
        self.num_envs = len(envs)
        self.dataset, self.max_steps = envs[0].dataset, envs[0].max_steps

    def reset(self, index: int, seed: int) -> dict:
        return self.envs[index].reset(seed)

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, tuple[dict, bool, dict]]:
        return {index: self.envs[index].step(action) for index, action in actions.items()}

    def task(self, index: int) -> str:
        return self.envs[index].task

    def episode(self, seed: int) -> tuple[str, str]:
        prompt = self.envs[0].reset(seed)["prompt"]
        return self.envs[0].task, str(prompt)

    def expert_action(self, index: int) -> np.ndarray:
        return self.envs[index].expert_action()

    def close(self) -> None:
        for env in self.envs:
            env.close()
