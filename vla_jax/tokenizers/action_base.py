"""Shared base of the action tokenizers: chunk checks, id cleaning, one-file save/load.

An action tokenizer maps normalized action chunks ``[N, T, D]`` to lists of
integer ids in ``[0, vocab_size)`` and back. Decoding never raises: a malformed
id list decodes to a padded/truncated chunk with ``valid=False``.

File format (one JSON object, written atomically)::

    {"format": "vla_jax.action_tokenizer", "version": 1, "kind": "fast" | "binning",
     "horizon": T, "action_dim": D, "vocab_size": V, "normalization": "quantile",
     ...kind-specific fields (see the subclasses),
     "sha256": hex digest of the canonical JSON of all other fields (see :func:`content_checksum`)}
"""

from __future__ import annotations

import abc
import hashlib
import json
import numbers
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from vla_jax.errors import VlaJaxError
from vla_jax.files import write_atomically

FILE_FORMAT = "vla_jax.action_tokenizer"
FORMAT_VERSION = 1


class TokenizerFileError(VlaJaxError, ValueError):
    """A tokenizer file is missing, corrupt, of another kind/version, or of the wrong shape."""


class ActionTokenizer(abc.ABC):
    """Normalized action chunks ``[N, T, D]`` <-> lists of ids in ``[0, vocab_size)``."""

    kind: ClassVar[str]
    horizon: int
    action_dim: int
    normalization: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct action ids."""

    @abc.abstractmethod
    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """Chunks ``[N, T, D]`` (or one ``[T, D]``) to one id list per chunk."""

    @abc.abstractmethod
    def decode(self, ids_list: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Id lists to ``(actions [N, T, D] float32, valid [N] bool)``; never raises."""

    @abc.abstractmethod
    def _fields(self) -> dict[str, Any]:
        """Kind-specific JSON fields of the file."""

    @classmethod
    @abc.abstractmethod
    def _from_fields(cls, data: dict[str, Any]) -> ActionTokenizer:
        """Build from the whole file dict; raise ``ValueError``/``KeyError``/``TypeError`` on bad fields."""

    # -- description, equality -------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything the file holds, as JSON-ready values."""
        return {
            "format": FILE_FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "horizon": int(self.horizon),
            "action_dim": int(self.action_dim),
            "vocab_size": int(self.vocab_size),
            "normalization": self.normalization,
            **self._fields(),
        }

    def describe(self) -> dict[str, Any]:
        """Short summary (no binary blobs), for logs and the command line."""
        return {k: v for k, v in self.to_dict().items() if not isinstance(v, str) or len(v) < 200}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionTokenizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable counters; compare, do not hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    # -- input checks -------------------------------------------------------------

    def _check_chunks(self, chunks: np.ndarray) -> np.ndarray:
        """``float64 [N, T, D]``; a single ``[T, D]`` gets a batch axis; wrong shape or NaN -> ``ValueError``."""
        array = np.asarray(chunks, dtype=np.float64)
        if array.ndim == 2:
            array = array[None]
        expected = (self.horizon, self.action_dim)
        if array.ndim != 3 or array.shape[1:] != expected:
            raise ValueError(
                f"{type(self).__name__} expects chunks [N, {self.horizon}, {self.action_dim}] "
                f"(or one [{self.horizon}, {self.action_dim}]), got shape {list(np.shape(chunks))}"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"{type(self).__name__}.encode: chunks contain NaN or infinite values")
        return array

    # -- save / load ----------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write the one-file JSON form atomically (temp file in the same folder + ``os.replace``)."""
        path = pathlib.Path(path)
        data = self.to_dict()
        text = json.dumps({**data, "sha256": content_checksum(data)}, indent=1, sort_keys=True) + "\n"
        write_atomically(path, text)
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, horizon: int | None = None, action_dim: int | None = None
    ) -> ActionTokenizer:
        """Read a file written by :meth:`save`; check ``T``/``D`` against the expected ones if given."""
        header = _read_header(path)
        if header["kind"] != cls.kind:
            raise TokenizerFileError(
                f"action tokenizer file {path} holds a {header['kind']!r} tokenizer, not {cls.kind!r} "
                "(use load_action_tokenizer to load any kind)"
            )
        return _build(cls, path, header, horizon, action_dim)


def load_action_tokenizer(
    path: str | os.PathLike, *, horizon: int | None = None, action_dim: int | None = None
) -> ActionTokenizer:
    """Load an action tokenizer file of any kind (dispatch on its ``kind`` field)."""
    from vla_jax.tokenizers.binning import BinningTokenizer
    from vla_jax.tokenizers.fast import FASTTokenizer

    kinds: dict[str, type[ActionTokenizer]] = {c.kind: c for c in (FASTTokenizer, BinningTokenizer)}
    header = _read_header(path)
    if header["kind"] not in kinds:
        raise TokenizerFileError(
            f"action tokenizer file {path} has unknown kind {header['kind']!r} (known: {', '.join(sorted(kinds))})"
        )
    return _build(kinds[header["kind"]], path, header, horizon, action_dim)


def _read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse the file and check format, version and the common fields."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerFileError(f"action tokenizer file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerFileError(f"action tokenizer file {path} cannot be read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerFileError(f"action tokenizer file {path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise TokenizerFileError(f"{path} is not an action tokenizer file (no 'format': {FILE_FORMAT!r})")
    if data.get("version") != FORMAT_VERSION:
        raise TokenizerFileError(
            f"action tokenizer file {path} has unsupported format version {data.get('version')!r} "
            f"(this code reads version {FORMAT_VERSION})"
        )
    if data.get("sha256") != content_checksum(data):
        raise TokenizerFileError(
            f"action tokenizer file {path} is corrupt: its sha256 checksum does not match its content "
            "(damaged or edited by hand)"
        )
    for key, kind in (
        ("kind", str),
        ("normalization", str),
        ("horizon", int),
        ("action_dim", int),
        ("vocab_size", int),
    ):
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value <= 0):
            raise TokenizerFileError(f"action tokenizer file {path} is corrupt: bad or missing field {key!r}={value!r}")
    return data


def content_checksum(data: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``data`` without its ``sha256`` field."""
    content = {k: v for k, v in data.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _build(
    cls: type[ActionTokenizer], path, header: dict[str, Any], horizon: int | None, action_dim: int | None
) -> ActionTokenizer:
    """Check the expected shape, then build the tokenizer from the kind-specific fields."""
    got = (header["horizon"], header["action_dim"])
    want = (got[0] if horizon is None else int(horizon), got[1] if action_dim is None else int(action_dim))
    if got != want:
        raise TokenizerFileError(
            f"action tokenizer file {path} was fit for chunks T×D = {got[0]}×{got[1]}, "
            f"but {want[0]}×{want[1]} is expected here"
        )
    try:
        tokenizer = cls._from_fields(header)
    except (KeyError, TypeError, ValueError) as e:
        raise TokenizerFileError(f"action tokenizer file {path} is corrupt: {type(e).__name__}: {e}") from None
    if tokenizer.vocab_size != header["vocab_size"]:
        raise TokenizerFileError(
            f"action tokenizer file {path} is corrupt: it says vocab_size={header['vocab_size']}, "
            f"its model has {tokenizer.vocab_size}"
        )
    return tokenizer


def clean_ids(sample: Any, vocab_size: int) -> tuple[np.ndarray, bool]:
    """One id list -> ``(int64 ids in [0, vocab_size), clean)``; bad entries are dropped, never raised on."""
    try:
        array = np.asarray(sample)
        if array.ndim == 1 and array.dtype.kind in "iu":
            array = array.astype(np.int64, copy=False)
            if array.size == 0 or (array.min() >= 0 and array.max() < vocab_size):
                return array, True
            return array[(array >= 0) & (array < vocab_size)], False
    except Exception:  # ragged, huge ints, odd objects: take the slow path
        pass
    if isinstance(sample, (str, bytes)) or not isinstance(sample, Iterable):
        return np.zeros(0, np.int64), False
    kept: list[int] = []
    clean = True
    try:
        for x in sample:
            if isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)) and 0 <= x < vocab_size:
                kept.append(int(x))
            else:
                clean = False
    except Exception:
        clean = False
    return np.asarray(kept, np.int64), clean


def iter_samples(ids_list: Any) -> list[Any]:
    """The samples of a decode input; a non-iterable input is one (malformed) sample."""
    if isinstance(ids_list, (str, bytes)) or not isinstance(ids_list, Iterable):
        return [ids_list]
    try:
        return list(ids_list)
    except Exception:
        return [None]
