"""The data pipeline: RLDS on disk to batches of normalized, chunked frames."""

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """``$VLA_JAX_CACHE`` or ``~/.cache/vla_jax``: generated datasets and fallback caches."""
    return pathlib.Path(os.environ.get("VLA_JAX_CACHE", pathlib.Path.home() / ".cache" / "vla_jax"))
