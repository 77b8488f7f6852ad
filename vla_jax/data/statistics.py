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
import os
import pathlib

import numpy as np

from vla_jax.data import cache_dir
from vla_jax.data import standardize as standardize_module
from vla_jax.data.specs import DatasetSpec
from vla_jax.errors import DataError

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

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "action": self.action.to_json(),
            "state": self.state.to_json(),
            "num_transitions": self.num_transitions,
            "num_trajectories": self.num_trajectories,
            "action_mask": list(self.action_mask),
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
        )


class _RunningStats:
    """Two-pass streaming statistics of rows ``[N, D]``."""

    def __init__(self):
        self.count = 0
        self.sum = self.sum_sq = self.min = self.max = self.hist = None

    def add_moments(self, rows: np.ndarray) -> None:
        rows = rows.astype(np.float64)
        if self.sum is None:
            dim = rows.shape[1]
            self.sum, self.sum_sq = np.zeros(dim), np.zeros(dim)
            self.min, self.max = np.full(dim, np.inf), np.full(dim, -np.inf)
        self.count += len(rows)
        self.sum += rows.sum(0)
        self.sum_sq += (rows**2).sum(0)
        self.min = np.minimum(self.min, rows.min(0, initial=np.inf))
        self.max = np.maximum(self.max, rows.max(0, initial=-np.inf))

    def add_histogram(self, rows: np.ndarray) -> None:
        dim = rows.shape[1]
        if self.hist is None:
            self.hist = np.zeros((dim, HISTOGRAM_BINS), np.int64)
        width = np.maximum(self.max - self.min, _EPS)
        bins = np.clip(((rows - self.min) / width * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        for d in range(dim):
            self.hist[d] += np.bincount(bins[:, d], minlength=HISTOGRAM_BINS)

    def _quantile(self, q: float) -> np.ndarray:
        cdf = np.cumsum(self.hist, axis=1) / self.count
        width = np.maximum(self.max - self.min, _EPS)
        out = np.empty(len(cdf))
        for d, row in enumerate(cdf):
            b = int(np.searchsorted(row, q))
            below = row[b - 1] if b > 0 else 0.0
            inside = (q - below) / max(row[b] - below, _EPS)  # linear within the bin
            out[d] = self.min[d] + (b + inside) / HISTOGRAM_BINS * width[d]
        return np.clip(out, self.min, self.max)

    def finish(self) -> ArrayStats:
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sum_sq / self.count - mean**2, 0.0))
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        return ArrayStats(
            f32(mean), f32(std), f32(self.min), f32(self.max), f32(self._quantile(0.01)), f32(self._quantile(0.99))
        )


def fingerprint(spec: DatasetSpec, builder_dir: pathlib.Path) -> str:
    """Hash of everything the statistics depend on, transform source code included."""
    digest = hashlib.sha256()
    for name in ("dataset_info.json", "features.json"):
        path = builder_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    digest.update(repr(dataclasses.replace(spec, raw_transform=None)).encode())
    sources = [inspect.getsource(standardize_module), inspect.getsource(_RunningStats)]
    if spec.raw_transform is not None:
        sources.append(inspect.getsource(spec.raw_transform))
    for source in sources:
        digest.update(source.encode())
    return digest.hexdigest()[:16]


def compute_statistics(trajectories, spec: DatasetSpec, fingerprint_: str) -> DatasetStatistics:
    """Streams a standardized trajectory dataset (no images needed) twice."""
    action_stats, state_stats = _RunningStats(), _RunningStats()
    num_trajectories = 0
    for traj in trajectories.as_numpy_iterator():
        action_stats.add_moments(traj["action"])
        state_stats.add_moments(traj["observation"]["proprio"])
        num_trajectories += 1
    if num_trajectories == 0 or action_stats.count == 0:
        raise DataError(f"dataset {spec.name!r}: no steps to compute statistics from")
    for traj in trajectories.as_numpy_iterator():
        action_stats.add_histogram(traj["action"])
        state_stats.add_histogram(traj["observation"]["proprio"])
    return DatasetStatistics(
        dataset=spec.name,
        fingerprint=fingerprint_,
        action=action_stats.finish(),
        state=state_stats.finish(),
        num_transitions=action_stats.count,
        num_trajectories=num_trajectories,
        action_mask=spec.normalize_action,
    )


def _cache_paths(builder_dir: pathlib.Path, spec: DatasetSpec, fp: str) -> list[pathlib.Path]:
    name = f"vla_jax_stats_{fp}.json"
    return [builder_dir / name, cache_dir() / "statistics" / spec.name / name]


def load_or_compute(spec: DatasetSpec, builder_dir: pathlib.Path, trajectories) -> DatasetStatistics:
    """Cached statistics for ``spec`` if their fingerprint matches, else computed and cached.

    The cache goes next to the data, or to the user cache dir if the data
    directory is read-only. Files are written atomically (temp file + rename).
    """
    fp = fingerprint(spec, builder_dir)
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
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(payload)
            os.replace(tmp, path)
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
