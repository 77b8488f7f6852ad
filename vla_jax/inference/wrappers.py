"""Robot-side helpers around anything with ``infer(obs) -> {"actions": [H, A], ...}``.

A policy returns a chunk of ``H`` actions per query; a robot executes one
action per control step. :class:`ActionChunkBroker` executes the first
``execute_steps`` actions of a chunk open loop, then queries again.
:class:`TemporalEnsembler` queries every step and averages every stored
chunk's prediction for the current step (ACT's temporal ensembling).
Both work with a :class:`~vla_jax.inference.policy.Policy`, a
:class:`~vla_jax.inference.client.PolicyClient` or openpi's client.
"""

from __future__ import annotations

import numpy as np


def _chunk(result: dict) -> np.ndarray:
    actions = np.asarray(result["actions"])
    if actions.ndim != 2:
        raise ValueError(f"the policy returned actions of shape {actions.shape}; expected a chunk [H, A]")
    return actions


def _step_of(result: dict, step: int, horizon: int) -> dict:
    """``result`` with every array whose first axis is the horizon indexed at ``step``."""
    out = {}
    for key, value in result.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == horizon:
            out[key] = value[step]
        else:
            out[key] = value
    return out


class ActionChunkBroker:
    """One action per call: queries the policy every ``execute_steps`` calls (None: the whole chunk)."""

    def __init__(self, policy, execute_steps: int | None = None):
        if execute_steps is not None and execute_steps < 1:
            raise ValueError(f"execute_steps is {execute_steps}; expected at least 1 (or None: the whole chunk)")
        self.policy, self.execute_steps = policy, execute_steps
        self._result: dict | None = None
        self._step = 0

    def reset(self) -> None:
        """Forgets the current chunk: the next call queries the policy."""
        self._result, self._step = None, 0

    @property
    def needs_query(self) -> bool:
        """Whether the next call queries the policy (a batched caller gathers these queries)."""
        return self._result is None

    def infer(self, obs: dict) -> dict:
        """The current step's action ``[A]`` (in ``"actions"``), from the stored chunk or a new query."""
        if self._result is None:
            result = dict(self.policy.infer(obs))
            horizon = len(_chunk(result))
            if self.execute_steps is not None and self.execute_steps > horizon:
                raise ValueError(f"execute_steps is {self.execute_steps}, more than the policy's chunk of {horizon}")
            self._result, self._step = result, 0
        horizon = len(_chunk(self._result))
        out = _step_of(self._result, self._step, horizon)
        self._step += 1
        if self._step >= (self.execute_steps or horizon):
            self.reset()
        return out


class TemporalEnsembler:
    """Queries every call; returns the weighted mean of every stored chunk's action for this step.

    The prediction made ``i`` queries after the oldest one still covering this
    step gets weight ``exp(-decay * i)``: the oldest is weighted most, as in ACT.
    At most ``H`` chunks are kept (older ones no longer cover the current step).
    """

    def __init__(self, policy, decay: float = 0.01):
        if decay < 0:
            raise ValueError(f"decay is {decay}; expected >= 0")
        self.policy, self.decay = policy, decay
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step the chunk starts at, chunk [H, A])
        self._step = 0

    def reset(self) -> None:
        self._chunks, self._step = [], 0

    needs_query = True  # every call queries the policy

    def infer(self, obs: dict) -> dict:
        result = dict(self.policy.infer(obs))
        chunk = _chunk(result).astype(np.float64)
        if self._chunks and self._chunks[0][1].shape != chunk.shape:
            raise ValueError(f"the policy returned a chunk of {chunk.shape} after chunks of {self._chunks[0][1].shape}")
        self._chunks.append((self._step, chunk))
        horizon = len(chunk)
        self._chunks = [(start, c) for start, c in self._chunks if self._step - start < horizon]
        predictions = np.stack([c[self._step - start] for start, c in self._chunks])  # oldest first
        weights = np.exp(-self.decay * np.arange(len(predictions)))
        action = (weights[:, None] * predictions).sum(0) / weights.sum()
        self._step += 1
        result["actions"] = action.astype(np.asarray(result["actions"]).dtype)
        return result
