"""Test setup: 8 fake CPU devices, an isolated cache, the demo dataset built once."""

import os

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# Forced, not defaulted: tests that read a CLI's stderr line by line must not see TensorFlow's
# C++ start-up logs, whatever level the calling environment asks for (CI's did).
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> pathlib.Path:
    """One cache for the whole run (shared by xdist workers; generation is atomic)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "vla_jax_cache"
    path.mkdir(exist_ok=True)
    os.environ["VLA_JAX_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def demo_dir(cache_dir) -> pathlib.Path:
    from vla_jax.data import demo

    return demo.ensure_demo_dataset()


def debug_config(*overrides: str):
    from vla_jax.config import load_config

    return load_config(str(REPO / "experiments" / "debug.py"), list(overrides))


def assert_statistics_match(stats, rows, *, atol: float, std_rtol: float) -> None:
    """``stats`` (an ArrayStats) agree with NumPy on ``rows [N, D]``; q01/q99 within one histogram bin."""
    import numpy as np

    from vla_jax.data import statistics

    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-5, atol=atol)
    np.testing.assert_allclose(stats.std, rows.std(0), rtol=std_rtol, atol=atol)
    np.testing.assert_allclose(stats.min, rows.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats.max, rows.max(0), rtol=1e-6)
    bound = (rows.max(0) - rows.min(0)) / statistics.HISTOGRAM_BINS + atol
    for q, got in ((0.01, stats.q01), (0.99, stats.q99)):
        # The histogram quantile lies within one bin of an exact order statistic.
        lo = np.quantile(rows, q, axis=0, method="lower")
        hi = np.quantile(rows, q, axis=0, method="higher")
        assert np.all(got >= lo - bound) and np.all(got <= hi + bound), (q, got, lo, hi)
