"""What ``vla-jax tokenizer fit`` and ``vla-jax tokenizer eval`` do, on a config's data mixture."""

from __future__ import annotations

import pathlib
import time

import ml_collections
import numpy as np

from vla_jax.data import loader
from vla_jax.data.statistics import unnormalize
from vla_jax.tokenizers import build, evaluate


def _chunks(config: ml_collections.ConfigDict, split: str, max_chunks: int) -> tuple[loader.DataMixture, dict]:
    mix = loader.open_mixture(config.data)
    return mix, loader.action_chunks(mix, config.data, split=split, max_chunks=max_chunks, seed=config.seed)


def fit(config: ml_collections.ConfigDict, out: str | pathlib.Path, max_chunks: int | None = None) -> dict:
    """Fits ``config.tokenizer.action`` on chunks of the training split and writes it to ``out``."""
    mix, sample = _chunks(config, "train", max_chunks or config.tokenizer.fit_chunks)
    start = time.perf_counter()
    tokenizer = build.fit_action_tokenizer(config.tokenizer, sample["actions"], config.data.normalization)
    fit_s = time.perf_counter() - start
    tokenizer.save(out)
    return {
        "out": str(out),
        "kind": tokenizer.kind,
        "mixture": mix.name,
        "chunks": len(sample["actions"]),
        "horizon": tokenizer.horizon,
        "action_dim": tokenizer.action_dim,
        "vocab_size": tokenizer.vocab_size,
        "normalization": tokenizer.normalization,
        "fit_s": round(fit_s, 3),
    }


def _action_units_fn(mix: loader.DataMixture, sample: dict) -> evaluate.ActionUnitsFn:
    """Per-dataset, per-dim RMSE in action units of decoded chunks against the sampled ones."""

    def rmse(decoded: np.ndarray, index: np.ndarray) -> dict[str, list[float]]:
        result = {}
        for d, source in enumerate(mix.sources):
            rows = index[sample["dataset_index"][index] == d]
            if rows.size == 0:
                continue
            stats = source.statistics
            dim = len(stats.action.mean)

            def units(x, stats=stats, dim=dim):
                return unnormalize(x[..., :dim], stats.action, stats.normalization, stats.action_mask)

            diff = units(decoded[rows]) - units(sample["actions"][rows])
            weight = sample["action_mask"][rows][..., None]
            mse = (np.square(diff) * weight).sum((0, 1)) / np.maximum(weight.sum((0, 1)), 1.0)
            result[source.spec.name] = np.sqrt(mse).astype(np.float64).round(6).tolist()
        return result

    return rmse


def eval_file(config: ml_collections.ConfigDict, path: str | pathlib.Path, max_chunks: int = 5000) -> dict:
    """Figures of the tokenizer in ``path`` and of binning on held-out (validation) chunks."""
    mix, sample = _chunks(config, "val", max_chunks)
    tokenizer = build.load_action_file(
        path,
        horizon=config.data.action_horizon,
        action_dim=mix.action_dim,
        normalization=config.data.normalization,
    )
    weight = (sample["action_mask"][:, :, None] & sample["action_dim_mask"][:, None, :]).astype(np.float32)
    result = evaluate.compare_with_binning(tokenizer, sample["actions"], weight, _action_units_fn(mix, sample))
    return {"file": str(path), "mixture": mix.name, "split": "val", **result}


def format_eval(result: dict) -> str:
    lines = [f"{result['file']} on {result['chunks']} held-out chunks [{result['horizon']}x{result['action_dim']}]"]
    for name in ("tokenizer", "binning"):
        r = result[name]
        lines.append(
            f"  {name:9s} ({r['kind']}, vocab {r['vocab_size']}): tokens/chunk mean {r['tokens_per_chunk_mean']:.1f} "
            f"p95 {r['tokens_per_chunk_p95']:.0f}, RMSE {r['rmse_normalized']:.4f} (normalized), "
            f"valid {r['decode_valid_rate']:.1%}, encode {r['encode_chunks_per_s']:.0f}/s, "
            f"decode {r['decode_chunks_per_s']:.0f}/s"
        )
    lines.append(f"  tokens vs binning: {result['tokens_vs_binning']:.2f}")
    return "\n".join(lines)
