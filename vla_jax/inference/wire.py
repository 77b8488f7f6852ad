"""The wire format of the policy server: msgpack with NumPy arrays, byte-compatible with openpi's ``msgpack_numpy``.

An ndarray travels as the map ``{b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": dtype.str,
b"shape": [...]}`` and a NumPy scalar as ``{b"__npgeneric__": True, b"data": scalar.item(), b"dtype": dtype.str}``
(binary keys, so they never collide with an observation's str keys). Object, void and complex dtypes are refused
both ways: they would need pickle or have no portable meaning. Unpacked arrays are read-only views of the message.

``np.float64`` subclasses Python's float, so msgpack packs it as a plain float, exactly as openpi does.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = {"O": "object", "V": "void", "c": "complex"}
_ARRAY = b"__ndarray__"
_SCALAR = b"__npgeneric__"


class WireError(ValueError):
    """A message is not valid wire format (not msgpack, or a malformed array)."""


def _check_kind(dtype: np.dtype) -> None:
    if dtype.kind in _REFUSED_KINDS:
        raise WireError(f"dtype {dtype.str!r} ({_REFUSED_KINDS[dtype.kind]}) cannot be sent; use a numeric dtype")


def _encode(obj: Any) -> Any:
    """msgpack's ``default`` hook: NumPy arrays and scalars as maps."""
    if isinstance(obj, np.ndarray):
        _check_kind(obj.dtype)
        return {_ARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        _check_kind(obj.dtype)
        return {_SCALAR: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__} over the wire")


def _dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str):
        raise WireError(f"{what} has dtype {value!r}; expected a NumPy dtype string such as '<f4'")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError) as e:
        raise WireError(f"{what} has unknown dtype {value!r}") from e
    _check_kind(dtype)
    return dtype


def _field(obj: dict, key: bytes, what: str) -> Any:
    if key not in obj:
        raise WireError(f"{what} lacks the field {key!r}")
    return obj[key]


def _decode_array(obj: dict) -> np.ndarray:
    dtype = _dtype(_field(obj, b"dtype", "an ndarray map"), "an ndarray map")
    shape = _field(obj, b"shape", "an ndarray map")
    data = _field(obj, b"data", "an ndarray map")
    if not isinstance(shape, list | tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise WireError(f"an ndarray map has shape {shape!r}; expected a list of non-negative ints")
    if not isinstance(data, bytes):
        raise WireError(f"an ndarray map has data of type {type(data).__name__}; expected bytes")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise WireError(
            f"an ndarray map of dtype {dtype.str!r} and shape {list(shape)} holds {len(data)} bytes of data; "
            f"expected {expected}"
        )
    if expected == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_scalar(obj: dict) -> np.generic:
    dtype = _dtype(_field(obj, b"dtype", "a NumPy scalar map"), "a NumPy scalar map")
    data = _field(obj, b"data", "a NumPy scalar map")
    try:
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"a NumPy scalar map of dtype {dtype.str!r} holds {data!r}: {e}") from e


def _decode(obj: dict) -> Any:
    """msgpack's ``object_hook``: maps that encode arrays or scalars back to NumPy."""
    if _ARRAY in obj:
        return _decode_array(obj)
    if _SCALAR in obj:
        return _decode_scalar(obj)
    return obj


def pack(obj: Any) -> bytes:
    """``obj`` (dicts, lists, str, bytes, numbers, NumPy arrays and scalars) as msgpack bytes."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """The object in msgpack ``data``; WireError (a ValueError) naming what is wrong when it is not valid."""
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except WireError:
        raise
    except Exception as e:  # msgpack raises several types (FormatError, ExtraData, ValueError, ...) on bad input
        raise WireError(f"not valid msgpack ({type(e).__name__}: {e})") from e
