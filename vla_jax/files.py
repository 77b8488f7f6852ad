"""Writing files so that a crash never leaves half of one in place."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_atomically(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Writes ``data`` to a temporary file next to ``path``, syncs it, and renames it into place.

    Readers see the old file or the whole new one, never a part. The file is
    readable by everyone (``0o644``), like one written with ``open``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path
