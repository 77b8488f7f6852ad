"""How well an action tokenizer does on held-out chunks: length, reconstruction, validity, speed."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from vla_jax.tokenizers.action_base import ActionTokenizer
from vla_jax.tokenizers.binning import BinningTokenizer

# (decoded chunks [n, T, D], index into the evaluated chunks [n]) -> {group name: per-dim RMSE in action units}
ActionUnitsFn = Callable[[np.ndarray, np.ndarray], dict[str, list[float]]]


def smooth_chunks(seed: int, n: int, horizon: int, dim: int, waves: int = 3) -> np.ndarray:
    """Synthetic normalized chunks ``[n, horizon, dim]``: sums of ``waves`` sinusoids below
    1.5 cycles per chunk, within [-1, 1] (for tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    chunks = np.zeros((n, horizon, dim))
    for _ in range(waves):
        freq = rng.uniform(0.0, 1.5, (n, 1, dim))
        phase = rng.uniform(0.0, 2 * np.pi, (n, 1, dim))
        amp = rng.uniform(0.0, 1.0 / waves, (n, 1, dim))
        chunks += amp * np.sin(2 * np.pi * freq * t + phase)
    return chunks


def _rmse(diff: np.ndarray, weight: np.ndarray, axis) -> np.ndarray:
    return np.sqrt((np.square(diff) * weight).sum(axis) / np.maximum(weight.sum(axis), 1.0))


def measure(
    tokenizer: ActionTokenizer, chunks: np.ndarray, weight: np.ndarray, action_units: ActionUnitsFn | None = None
) -> dict:
    """Figures of one tokenizer on normalized ``chunks [N, T, D]``.

    ``weight [N, T, D]`` (1 = a real value) selects what the reconstruction error
    counts. ``action_units`` turns decoded chunks into per-dim RMSE in action
    units (per dataset of a mixture).
    """
    start = time.perf_counter()
    ids = tokenizer.encode(chunks)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded, valid = tokenizer.decode(ids)
    decode_s = time.perf_counter() - start
    lengths = np.array([len(i) for i in ids])
    diff = decoded - chunks
    result = {
        "kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "tokens_per_chunk_mean": float(lengths.mean()),
        "tokens_per_chunk_p95": float(np.percentile(lengths, 95)),
        "tokens_per_chunk_max": int(lengths.max()),
        "rmse_normalized": float(_rmse(diff, weight, axis=None)),
        "rmse_normalized_per_dim": _rmse(diff, weight, axis=(0, 1)).astype(np.float64).round(5).tolist(),
        "max_abs_error_normalized": float(np.abs(diff * weight).max()),
        "decode_valid_rate": float(valid.mean()),
        "encode_chunks_per_s": len(chunks) / max(encode_s, 1e-9),
        "decode_chunks_per_s": len(chunks) / max(decode_s, 1e-9),
    }
    if action_units is not None:
        result["rmse_action_units_per_dim"] = action_units(decoded, np.arange(len(chunks)))
    return result


def compare_with_binning(
    tokenizer: ActionTokenizer, chunks: np.ndarray, weight: np.ndarray, action_units: ActionUnitsFn | None = None
) -> dict:
    """:func:`measure` of ``tokenizer`` and of 256-bin binning on the same chunks, with their token ratio."""
    binning = BinningTokenizer(tokenizer.horizon, tokenizer.action_dim, normalization=tokenizer.normalization)
    ours = measure(tokenizer, chunks, weight, action_units)
    baseline = measure(binning, chunks, weight, action_units)
    return {
        "chunks": len(chunks),
        "horizon": tokenizer.horizon,
        "action_dim": tokenizer.action_dim,
        "tokenizer": ours,
        "binning": baseline,
        "tokens_vs_binning": ours["tokens_per_chunk_mean"] / baseline["tokens_per_chunk_mean"],
    }
