"""Uniform binning action tokenizer (the RT-2 / OpenVLA baseline).

Every normalized value is clipped to ``[-1, 1]`` and mapped to one of
``num_bins`` equal-width bins; a chunk ``[T, D]`` gives ``T*D`` ids in
time-major order (C order of ``[T, D]``). Decode returns bin centers, so the
error inside ``[-1, 1]`` is at most half a bin width, ``1/num_bins``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vla_jax.tokenizers.action_base import ActionTokenizer, clean_ids, iter_samples

LOW, HIGH = -1.0, 1.0


class BinningTokenizer(ActionTokenizer):
    """``num_bins`` uniform bins over ``[-1, 1]`` per value; one id per value."""

    kind = "binning"

    def __init__(self, horizon: int, action_dim: int, num_bins: int = 256, normalization: str = "quantile"):
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)
        self.num_bins = int(num_bins)
        self.normalization = str(normalization)
        if self.horizon <= 0 or self.action_dim <= 0:
            raise ValueError(f"horizon and action_dim must be positive, got {self.horizon}, {self.action_dim}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {self.num_bins}")
        if not self.normalization:
            raise ValueError("normalization must be a non-empty string")
        width = (HIGH - LOW) / self.num_bins
        self._centers = (LOW + (np.arange(self.num_bins) + 0.5) * width).astype(np.float32)

    @classmethod
    def fit(cls, chunks: np.ndarray, *, num_bins: int = 256, normalization: str = "quantile") -> BinningTokenizer:
        """Record ``T`` and ``D`` of normalized chunks ``[N, T, D]`` (bins are fixed, nothing else to fit)."""
        shape = np.shape(chunks)
        if len(shape) != 3 or 0 in shape[1:]:
            raise ValueError(f"BinningTokenizer.fit expects chunks [N, T, D], got shape {list(shape)}")
        return cls(shape[1], shape[2], num_bins=num_bins, normalization=normalization)

    @property
    def vocab_size(self) -> int:
        return self.num_bins

    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """Chunks ``[N, T, D]`` (or one ``[T, D]``) -> ``T*D`` bin ids per chunk, time-major."""
        chunks = self._check_chunks(chunks)
        scaled = (np.clip(chunks, LOW, HIGH) - LOW) / (HIGH - LOW) * self.num_bins
        ids = np.minimum(scaled.astype(np.int64), self.num_bins - 1)  # x == HIGH goes to the last bin
        return ids.reshape(len(chunks), -1).tolist()

    def decode(self, ids_list: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Id lists -> ``(bin centers float32 [N, T, D], valid bool [N])``; never raises.

        Non-integer or out-of-range ids are dropped and a wrong length is zero-padded
        (value 0.0) or truncated; either makes the sample invalid.
        """
        length = self.horizon * self.action_dim
        samples = iter_samples(ids_list)
        actions = np.zeros((len(samples), length), np.float32)
        valid = np.ones(len(samples), bool)
        for i, sample in enumerate(samples):
            ids, clean = clean_ids(sample, self.num_bins)
            valid[i] = clean and ids.size == length
            ids = ids[:length]
            actions[i, : ids.size] = self._centers[ids]
        return actions.reshape(-1, self.horizon, self.action_dim), valid

    def _fields(self) -> dict[str, Any]:
        return {"num_bins": self.num_bins, "low": LOW, "high": HIGH}

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> BinningTokenizer:
        if (data.get("low"), data.get("high")) != (LOW, HIGH):
            raise ValueError(f"bins over [{data.get('low')}, {data.get('high')}] are not supported (only [-1, 1])")
        if not isinstance(data["num_bins"], int) or isinstance(data["num_bins"], bool):
            raise TypeError(f"field 'num_bins' must be an integer, got {data['num_bins']!r}")
        return cls(data["horizon"], data["action_dim"], num_bins=data["num_bins"], normalization=data["normalization"])
