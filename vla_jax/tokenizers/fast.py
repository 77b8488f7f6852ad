"""FAST action tokenizer (Pertsch et al. 2025): DCT along time, quantize, BPE.

Encode one normalized chunk ``[T, D]``:

1. orthonormal DCT-II along time, per action dim -> coefficients ``[T, D]``
   (row ``f`` holds frequency ``f`` of every dim);
2. multiply by the scale ``γ`` and round to integers;
3. flatten frequency-major (C order of ``[T, D]``: all dims at frequency 0,
   then frequency 1, ...), so trailing high-frequency zeros compress well;
4. clip into the fitted alphabet ``[offset, offset + alphabet_size)`` and map
   each integer ``v`` to the character ``chr(code_point_base + v - offset)``
   (CJK Unified Ideographs: no surrogates, whitespace or control characters);
5. sentencepiece BPE over those strings -> ids in ``[0, vocab_size)``.

Decode inverts this. The rounding error per coefficient is at most ``0.5/γ``
and the orthonormal DCT keeps L2 norms, so a clean round trip is within
``0.5/γ·sqrt(T·D)`` in L2 per chunk (RMSE about ``1/(γ·sqrt(12))``).
Coefficients outside the alphabet seen at fit time (plus a margin) are clipped
at encode time and counted in :attr:`FASTTokenizer.clipped_count`.

Unlike the reference decoder, which returns an all-zero chunk when a sequence
does not give exactly ``T·D`` integers, :meth:`FASTTokenizer.decode` pads with
zero coefficients or truncates, and reports ``valid=False`` for that sample.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.fft
import sentencepiece as spm

from vla_jax.tokenizers.action_base import ActionTokenizer, clean_ids, iter_samples

CODE_POINT_BASE = 0x4E00  # CJK Unified Ideographs: U+4E00..U+9FFF, all assigned letters
CODE_POINT_END = 0xA000
MAX_ALPHABET = CODE_POINT_END - CODE_POINT_BASE
MARGIN_FRACTION = 0.1  # alphabet margin on each side of the fitted coefficient range
MIN_MARGIN = 2
# The longest BPE piece, in coefficients: sentencepiece's limit (its default, 16, splits the long runs of zero
# high-frequency coefficients of a high-DoF chunk into many pieces: 1.35x the tokens of an unbounded byte-level
# BPE at 26 dims x 30 steps; benchmarks/RESULTS.md, "Action tokenizers").
MAX_PIECE_LENGTH = 512


def dct_coefficients(chunks: np.ndarray, scale: float) -> np.ndarray:
    """Chunks ``[N, T, D]`` -> rounded scaled DCT coefficients ``int64 [N, T*D]``, frequency-major."""
    chunks = np.asarray(chunks, np.float64)
    coeffs = scipy.fft.dct(chunks, type=2, norm="ortho", axis=1)
    return np.rint(coeffs * scale).astype(np.int64).reshape(len(chunks), -1)


def inverse_dct_coefficients(coeffs: np.ndarray, horizon: int, action_dim: int, scale: float) -> np.ndarray:
    """Inverse of :func:`dct_coefficients` (up to rounding): ``[N, T*D]`` -> chunks ``float32 [N, T, D]``."""
    coeffs = np.asarray(coeffs, np.float64).reshape(-1, horizon, action_dim)
    if coeffs.shape[0] == 0:
        return np.zeros((0, horizon, action_dim), np.float32)
    return scipy.fft.idct(coeffs / scale, type=2, norm="ortho", axis=1).astype(np.float32)


def _to_strings(code_points: np.ndarray) -> list[str]:
    """Rows of code points ``[N, L]`` -> ``N`` strings of length ``L`` (one vectorized view)."""
    n, length = code_points.shape
    return np.ascontiguousarray(code_points, "<u4").view(f"<U{length}").reshape(n).tolist()


def _train_bpe(sentences: list[str], vocab_size: int) -> bytes:
    """Train a sentencepiece BPE model in memory and return its serialized proto."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_by_whitespace=False,
        split_by_unicode_script=False,
        split_by_number=False,
        split_digits=False,
        byte_fallback=False,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        hard_vocab_limit=False,
        max_sentence_length=1 << 24,
        max_sentencepiece_length=MAX_PIECE_LENGTH,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


class FASTTokenizer(ActionTokenizer):
    """DCT + BPE action tokenizer; build with :meth:`fit` or :meth:`load`."""

    kind = "fast"

    def __init__(
        self,
        *,
        horizon: int,
        action_dim: int,
        model_proto: bytes,
        scale: float,
        offset: int,
        alphabet_size: int,
        normalization: str = "quantile",
        code_point_base: int = CODE_POINT_BASE,
    ):
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)
        self.scale = float(scale)
        self.offset = int(offset)
        self.alphabet_size = int(alphabet_size)
        self.code_point_base = int(code_point_base)
        self.normalization = str(normalization)
        self.model_proto = bytes(model_proto)
        self.clipped_count = 0  # coefficients clipped into the alphabet by encode, since construction
        if self.horizon <= 0 or self.action_dim <= 0:
            raise ValueError(f"horizon and action_dim must be positive, got {self.horizon}, {self.action_dim}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if not self.normalization:
            raise ValueError("normalization must be a non-empty string")
        end = self.code_point_base + self.alphabet_size
        if self.alphabet_size <= 0 or self.code_point_base < CODE_POINT_BASE or end > CODE_POINT_END:
            raise ValueError(
                f"alphabet U+{self.code_point_base:04X}..+{self.alphabet_size} is outside "
                f"U+{CODE_POINT_BASE:04X}..U+{CODE_POINT_END - 1:04X}"
            )
        assert end < 0xD800  # never a surrogate code point
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError on a bad proto
            raise ValueError(f"the sentencepiece model does not load: {e}") from None
        self._build_tables()

    def _build_tables(self) -> None:
        """Per piece id: its coefficients (flat table + start/length) and whether decoding it is an error."""
        starts, lengths, bad, values = [], [], [], []
        for i in range(self._sp.get_piece_size()):
            piece = self._sp.id_to_piece(i)
            codes = [ord(c) - self.code_point_base for c in piece]
            special = self._sp.is_unknown(i) or self._sp.is_control(i) or self._sp.is_unused(i)
            if special or not codes or not all(0 <= c < self.alphabet_size for c in codes):
                codes = []
            starts.append(len(values))
            lengths.append(len(codes))
            bad.append(not codes)
            values.extend(c + self.offset for c in codes)
        self._piece_start = np.asarray(starts, np.int64)
        self._piece_len = np.asarray(lengths, np.int64)
        self._bad_piece = np.asarray(bad, bool)
        self._piece_values = np.asarray(values, np.int64)
        missing = [
            c
            for c in range(self.alphabet_size)
            if self._sp.is_unknown(self._sp.piece_to_id(chr(self.code_point_base + c)))
        ]
        if missing:
            raise ValueError(
                f"the sentencepiece model lacks {len(missing)} of the {self.alphabet_size} alphabet characters"
            )

    # -- fit -----------------------------------------------------------------------

    @classmethod
    def fit(
        cls, chunks: np.ndarray, *, vocab_size: int = 1024, scale: float = 10.0, normalization: str = "quantile"
    ) -> FASTTokenizer:
        """Fit the alphabet and the BPE vocabulary on normalized chunks ``[N, T, D]``; deterministic."""
        chunks = np.asarray(chunks, np.float64)
        if chunks.ndim != 3 or 0 in chunks.shape:
            raise ValueError(f"FASTTokenizer.fit expects chunks [N, T, D] with N, T, D > 0, got {list(chunks.shape)}")
        if not np.isfinite(chunks).all():
            raise ValueError("FASTTokenizer.fit: chunks contain NaN or infinite values")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        coeffs = dct_coefficients(chunks, scale)
        low, high = int(coeffs.min()), int(coeffs.max())
        margin = max(MIN_MARGIN, int((high - low) * MARGIN_FRACTION))
        offset, alphabet_size = low - margin, high - low + 1 + 2 * margin
        if alphabet_size > MAX_ALPHABET:
            raise ValueError(
                f"DCT coefficients span {low}..{high} at scale {scale}: more than {MAX_ALPHABET} characters; "
                "are the chunks normalized? (or lower the scale)"
            )
        if vocab_size <= alphabet_size:
            raise ValueError(
                f"vocab_size={vocab_size} leaves no room for merges over the {alphabet_size}-character alphabet "
                f"(coefficients {low}..{high} plus margin) and the unknown piece; use a larger vocab_size"
            )
        strings = _to_strings(coeffs - offset + CODE_POINT_BASE)
        # One sentence per alphabet character: every clipped coefficient stays encodable, and no pair is added.
        alphabet = [chr(CODE_POINT_BASE + c) for c in range(alphabet_size)]
        model_proto = _train_bpe(strings + alphabet, vocab_size)
        return cls(
            horizon=chunks.shape[1],
            action_dim=chunks.shape[2],
            model_proto=model_proto,
            scale=scale,
            offset=offset,
            alphabet_size=alphabet_size,
            normalization=normalization,
        )

    # -- encode / decode -------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def coefficients(self, chunks: np.ndarray) -> np.ndarray:
        """Chunks ``[N, T, D]`` -> integer coefficients ``int64 [N, T*D]`` (frequency-major), clipped to the alphabet."""
        coeffs = dct_coefficients(self._check_chunks(chunks), self.scale)
        low, high = self.offset, self.offset + self.alphabet_size - 1
        outside = int(np.count_nonzero((coeffs < low) | (coeffs > high)))
        if outside:
            self.clipped_count += outside
            coeffs = np.clip(coeffs, low, high)
        return coeffs

    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """Chunks ``[N, T, D]`` (or one ``[T, D]``) -> one list of BPE ids per chunk."""
        strings = _to_strings(self.coefficients(chunks) - self.offset + self.code_point_base)
        return self._sp.encode(strings, out_type=int)

    def decode(self, ids_list: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Id lists -> ``(actions float32 [N, T, D], valid bool [N])``; never raises.

        A sample is invalid when it holds non-integer, out-of-range or unknown-piece ids
        (dropped), or does not give exactly ``T*D`` coefficients (zero-padded or truncated).
        """
        length = self.horizon * self.action_dim
        samples = iter_samples(ids_list)
        n = len(samples)
        valid = np.ones(n, bool)
        arrays = []
        for i, sample in enumerate(samples):
            ids, clean = clean_ids(sample, self.vocab_size)
            arrays.append(ids)
            valid[i] = clean
        coeffs = np.zeros((n, length), np.int64)
        if n:
            counts = np.asarray([a.size for a in arrays], np.int64)
            ids = np.concatenate(arrays) if counts.sum() else np.zeros(0, np.int64)
            owner = np.repeat(np.arange(n), counts)
            bad = self._bad_piece[ids]
            if bad.any():
                valid[owner[bad]] = False
                ids, owner = ids[~bad], owner[~bad]
            # Expand every piece into its coefficients, keeping samples contiguous and in order.
            lens = self._piece_len[ids]
            total = int(lens.sum())
            out_start = np.cumsum(lens) - lens
            source = np.repeat(self._piece_start[ids] - out_start, lens) + np.arange(total)
            values = self._piece_values[source]
            value_owner = np.repeat(owner, lens)
            per_sample = np.bincount(value_owner, minlength=n)
            valid &= per_sample == length
            position = np.arange(total) - (np.cumsum(per_sample) - per_sample)[value_owner]
            keep = position < length
            coeffs[value_owner[keep], position[keep]] = values[keep]
        return inverse_dct_coefficients(coeffs, self.horizon, self.action_dim, self.scale), valid

    # -- file fields --------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "offset": self.offset,
            "alphabet_size": self.alphabet_size,
            "code_point_base": self.code_point_base,
            "sentencepiece_model": base64.b64encode(self.model_proto).decode("ascii"),
        }

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> FASTTokenizer:
        for key in ("offset", "alphabet_size", "code_point_base"):
            if not isinstance(data[key], int) or isinstance(data[key], bool):
                raise TypeError(f"field {key!r} must be an integer, got {data[key]!r}")
        if not isinstance(data["scale"], (int, float)) or isinstance(data["scale"], bool):
            raise TypeError(f"field 'scale' must be a number, got {data['scale']!r}")
        try:
            model_proto = base64.b64decode(data["sentencepiece_model"], validate=True)
        except Exception as e:
            raise ValueError(f"field 'sentencepiece_model' is not valid base64: {e}") from None
        return cls(
            horizon=data["horizon"],
            action_dim=data["action_dim"],
            model_proto=model_proto,
            scale=data["scale"],
            offset=data["offset"],
            alphabet_size=data["alphabet_size"],
            normalization=data["normalization"],
            code_point_base=data["code_point_base"],
        )
