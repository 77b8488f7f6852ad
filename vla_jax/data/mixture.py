"""Mixing datasets: sampling weights, thread and RAM budgets, the weighted interleave."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from vla_jax.errors import ConfigError


def sampling_weights(weights: Sequence[float], sizes: Sequence[int], balance: bool) -> np.ndarray:
    """Normalized probabilities of drawing the next frame from each dataset.

    With ``balance`` each weight is multiplied by the dataset's size in frames,
    so a weight of 1.0 everywhere samples every frame equally often and a weight
    of 2.0 sees a dataset's frames twice as often as the rest.
    """
    w = np.asarray(weights, np.float64)
    if balance:
        w = w * np.asarray(sizes, np.float64)
    if not np.all(w > 0):
        raise ConfigError(f"mixture weights must be positive, got {w.tolist()}")
    return w / w.sum()


def split_budget(total: int, probabilities: Sequence[float]) -> list[int]:
    """Splits ``total`` threads over datasets in proportion, at least one each."""
    return [max(1, math.floor(total * p)) for p in probabilities]


def shuffle_buffers(
    probabilities: Sequence[float], bytes_per_frame: Sequence[float], ram_budget_bytes: float, max_frames: int
) -> list[int]:
    """Per-dataset shuffle buffer sizes (in frames) that fit ``ram_budget_bytes`` together.

    Buffers hold encoded frames, so a frame costs about its share of the dataset
    on disk. Each dataset gets buffer space in proportion to its sampling
    probability; the total is capped at ``max_frames``.
    """
    p = np.asarray(probabilities, np.float64)
    cost = np.asarray(bytes_per_frame, np.float64)
    # sum_i p_i * total * cost_i <= budget  =>  total <= budget / (p . cost)
    total = min(float(max_frames), ram_budget_bytes / max(float(p @ cost), 1.0))
    return [max(1, int(total * pi)) for pi in p]


def interleave(datasets: Sequence[tf.data.Dataset], probabilities: Sequence[float], seed: int) -> tf.data.Dataset:
    """A seeded weighted draw from endless ``datasets`` (the identity for one dataset)."""
    if len(datasets) == 1:
        return datasets[0]
    return tf.data.Dataset.sample_from_datasets(
        list(datasets), weights=[float(p) for p in probabilities], seed=seed, stop_on_empty_dataset=False
    )
