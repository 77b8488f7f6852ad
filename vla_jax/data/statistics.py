"""Normalization statistics: computed in a streaming pass, cached by fingerprint.

Moments, min and max come from running sums; the 1st/99th percentiles from a
per-dimension histogram of ``HISTOGRAM_BINS`` bins over [min, max] filled in a
second pass, so memory does not grow with the dataset and the quantile error is
at most ``(max - min) / HISTOGRAM_BINS`` per dim. The cache file is keyed by a
fingerprint of the builder's metadata, the spec, and the source code of the
standardization and of this module, so editing a transform invalidates it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from vla_jax.data import cache_dir
from vla_jax.data import standardize as standardize_module
from vla_jax.data.specs import DatasetSpec
from vla_jax.errors import DataError
from vla_jax.files import write_atomically

HISTOGRAM_BINS = 4096
NORMALIZATION_MODES = ("quantile", "zscore")
_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class ArrayStats:
    """Per-dimension statistics of one array key (``action`` or ``state``)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    def to_json(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> ArrayStats:
        return cls(**{f.name: np.asarray(data[f.name], np.float32) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class DatasetStatistics:
    """What normalization needs of one dataset, and how it was computed."""

    dataset: str
    fingerprint: str
    action: ArrayStats
    state: ArrayStats
    num_transitions: int
    num_trajectories: int
    action_mask: tuple[bool, ...]  # which action dims are normalized
    normalization: str = "quantile"  # the mode these statistics are used with

    def to_json(self) -> dict:
        bin_width = lambda a: ((a.max - a.min) / HISTOGRAM_BINS).tolist()  # noqa: E731
        return {
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "action": self.action.to_json(),
            "state": self.state.to_json(),
            "num_transitions": self.num_transitions,
            "num_trajectories": self.num_trajectories,
            "action_mask": list(self.action_mask),
            "normalization": self.normalization,
            "quantile_max_error": {"action": bin_width(self.action), "state": bin_width(self.state)},
        }

    @classmethod
    def from_json(cls, data: dict) -> DatasetStatistics:
        return cls(
            dataset=data["dataset"],
            fingerprint=data["fingerprint"],
            action=ArrayStats.from_json(data["action"]),
            state=ArrayStats.from_json(data["state"]),
            num_transitions=int(data["num_transitions"]),
            num_trajectories=int(data["num_trajectories"]),
            action_mask=tuple(bool(m) for m in data["action_mask"]),
            normalization=data.get("normalization", "quantile"),
        )


def _moments(rows: tf.Tensor) -> dict:
    rows = tf.cast(rows, tf.float64)
    return {
        "count": tf.shape(rows, out_type=tf.int64)[0],
        "sum": tf.reduce_sum(rows, 0),
        "sum_sq": tf.reduce_sum(rows**2, 0),
        "min": tf.reduce_min(tf.concat([rows, tf.fill([1, tf.shape(rows)[1]], tf.constant(np.inf, tf.float64))], 0), 0),
        "max": tf.reduce_max(
            tf.concat([rows, tf.fill([1, tf.shape(rows)[1]], tf.constant(-np.inf, tf.float64))], 0), 0
        ),
    }


def _histogram(rows: tf.Tensor, low: np.ndarray, high: np.ndarray) -> tf.Tensor:
    """Per-dim counts ``[D, HISTOGRAM_BINS]`` of ``rows [N, D]`` over ``[low, high]``."""
    rows = tf.cast(rows, tf.float64)
    width = np.maximum(high - low, _EPS)
    bins = tf.clip_by_value(tf.cast(tf.floor((rows - low) / width * HISTOGRAM_BINS), tf.int64), 0, HISTOGRAM_BINS - 1)
    dim = len(low)
    flat = tf.reshape(bins + tf.range(dim, dtype=tf.int64)[None, :] * HISTOGRAM_BINS, [-1])
    counts = tf.math.bincount(flat, minlength=dim * HISTOGRAM_BINS, maxlength=dim * HISTOGRAM_BINS, dtype=tf.int64)
    return tf.reshape(counts, [dim, HISTOGRAM_BINS])


def _quantile(hist: np.ndarray, count: int, low: np.ndarray, high: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile per dim, linear within the histogram bin it falls in."""
    cdf = np.cumsum(hist, axis=1) / count
    width = np.maximum(high - low, _EPS)
    out = np.empty(len(cdf))
    for d, row in enumerate(cdf):
        b = int(np.searchsorted(row, q))
        below = row[b - 1] if b > 0 else 0.0
        inside = (q - below) / max(row[b] - below, _EPS)
        out[d] = low[d] + (b + inside) / HISTOGRAM_BINS * width[d]
    return np.clip(out, low, high)


def _keyed_rows(traj: dict) -> dict:
    return {"action": traj["action"], "state": traj["observation"]["proprio"]}


def compute_statistics(trajectories: tf.data.Dataset, spec: DatasetSpec, fingerprint_: str) -> DatasetStatistics:
    """Two streaming passes over standardized trajectories (no images needed).

    Each trajectory is reduced to partial sums (then histograms) inside a
    parallel tf.data map; only those small partials reach Python, so memory is
    independent of the dataset's size.
    """
    partial = trajectories.map(
        lambda t: {k: _moments(v) for k, v in _keyed_rows(t).items()}, num_parallel_calls=tf.data.AUTOTUNE
    )
    totals: dict[str, dict] = {}
    num_trajectories = 0
    for part in partial.as_numpy_iterator():
        num_trajectories += 1
        for key, m in part.items():
            if key not in totals:
                totals[key] = dict(m)
                continue
            t = totals[key]
            t["count"] += m["count"]
            t["sum"], t["sum_sq"] = t["sum"] + m["sum"], t["sum_sq"] + m["sum_sq"]
            t["min"], t["max"] = np.minimum(t["min"], m["min"]), np.maximum(t["max"], m["max"])
    if num_trajectories == 0 or totals["action"]["count"] == 0:
        raise DataError(f"dataset {spec.name!r}: no steps to compute statistics from")
    for key, t in totals.items():
        if not (np.all(np.isfinite(t["min"])) and np.all(np.isfinite(t["max"]))) and t["count"] > 0:
            bad = [d for d in range(len(t["min"])) if not np.isfinite(t["min"][d] + t["max"][d])]
            raise DataError(
                f"dataset {spec.name!r}: {key} dims {bad} hold NaN or inf values; "
                f"run `vla-jax data check {spec.name}` to find the episodes"
            )
    bounds = {k: (t["min"], t["max"]) for k, t in totals.items()}
    hists = trajectories.map(
        lambda t: {k: _histogram(v, *bounds[k]) for k, v in _keyed_rows(t).items()},
        num_parallel_calls=tf.data.AUTOTUNE,
    ).reduce({k: tf.zeros([len(b[0]), HISTOGRAM_BINS], tf.int64) for k, b in bounds.items()},
             lambda acc, h: {k: acc[k] + h[k] for k in acc})  # fmt: skip
    result = {}
    for key, t in totals.items():
        count, low, high = int(t["count"]), t["min"], t["max"]
        hist = hists[key].numpy()
        mean = t["sum"] / max(count, 1)
        std = np.sqrt(np.maximum(t["sum_sq"] / max(count, 1) - mean**2, 0.0))
        if count == 0:  # a state-less dataset: zero-width stats
            result[key] = ArrayStats(*(np.zeros(len(low), np.float32) for _ in range(6)))
            continue
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        result[key] = ArrayStats(
            f32(mean), f32(std), f32(low), f32(high),
            f32(_quantile(hist, count, low, high, 0.01)), f32(_quantile(hist, count, low, high, 0.99)),
        )  # fmt: skip
    return DatasetStatistics(
        dataset=spec.name,
        fingerprint=fingerprint_,
        action=result["action"],
        state=result["state"],
        num_transitions=int(totals["action"]["count"]),
        num_trajectories=num_trajectories,
        action_mask=spec.normalize_action,
    )


def fingerprint(
    spec: DatasetSpec, builder_dir: pathlib.Path, transforms: Sequence[Callable] = (), settings: str = ""
) -> str:
    """Hash of everything the statistics depend on, transform source code included.

    Covers the builder's metadata files, the spec, ``settings`` (a description
    of the pipeline options that change the data, e.g. the resampling stride)
    and the source of: standardization, the module defining the spec's
    ``standardize_fn``, each of ``transforms`` and this module's reductions.
    """
    digest = hashlib.sha256()
    for name in ("dataset_info.json", "features.json"):
        path = builder_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update(repr(dataclasses.replace(spec, standardize_fn=None)).encode())
    digest.update(settings.encode())
    functions = [*transforms, _moments, _histogram, _quantile, compute_statistics]
    sources = [inspect.getsource(standardize_module)] + [inspect.getsource(f) for f in functions]
    if spec.standardize_fn is not None:  # its whole module: shared helpers count too
        fn = inspect.unwrap(getattr(spec.standardize_fn, "func", spec.standardize_fn))
        module = inspect.getmodule(fn)
        sources.append(inspect.getsource(module) if module is not None else inspect.getsource(fn))
    for source in sources:
        digest.update(source.encode())
    return digest.hexdigest()[:16]


def _cache_paths(builder_dir: pathlib.Path, spec: DatasetSpec, fp: str) -> list[pathlib.Path]:
    name = f"vla_jax_stats_{fp}.json"
    return [builder_dir / name, cache_dir() / "statistics" / spec.name / name]


def load_or_compute(
    spec: DatasetSpec,
    builder_dir: pathlib.Path,
    trajectories: tf.data.Dataset,
    *,
    transforms: Sequence[Callable] = (),
    settings: str = "",
) -> DatasetStatistics:
    """Cached statistics for ``spec`` if their fingerprint matches, else computed and cached.

    The cache goes next to the data, or to the user cache dir if the data
    directory is read-only. Files are written atomically (temp file + rename).
    """
    fp = fingerprint(spec, builder_dir, transforms, settings)
    paths = _cache_paths(builder_dir, spec, fp)
    for path in paths:
        if path.is_file():
            try:
                return DatasetStatistics.from_json(json.loads(path.read_text()))
            except (ValueError, KeyError):
                pass  # unreadable cache: recompute and overwrite
    stats = compute_statistics(trajectories, spec, fp)
    payload = json.dumps(stats.to_json(), indent=1)
    for path in paths:
        try:
            write_atomically(path, payload)
            break
        except OSError:
            continue
    return stats


def _check_mode(mode: str) -> None:
    if mode not in NORMALIZATION_MODES:
        raise DataError(f"unknown normalization mode {mode!r}; expected one of {NORMALIZATION_MODES}")


def normalize(x, stats: ArrayStats, mode: str, mask=None, xp=np):
    """Normalizes ``x [..., D]``; dims where ``mask`` is False pass through.

    ``xp`` is the array namespace: NumPy, or ``tf.experimental.numpy`` inside
    a tf.data graph. Quantile mode maps q01/q99 to -1/+1 and clips.
    """
    _check_mode(mode)
    if mode == "quantile":
        out = xp.clip(2.0 * (x - stats.q01) / np.maximum(stats.q99 - stats.q01, _EPS) - 1.0, -1.0, 1.0)
    else:
        out = (x - stats.mean) / np.maximum(stats.std, _EPS)
    return xp.where(np.asarray(mask, bool), out, x) if mask is not None else out


def unnormalize(x: np.ndarray, stats: ArrayStats, mode: str, mask=None) -> np.ndarray:
    """Inverse of :func:`normalize` on NumPy arrays (up to quantile clipping)."""
    _check_mode(mode)
    if mode == "quantile":
        out = (x + 1.0) / 2.0 * (stats.q99 - stats.q01) + stats.q01
    else:
        out = x * np.maximum(stats.std, _EPS) + stats.mean
    return np.where(np.asarray(mask, bool), out, x) if mask is not None else out
