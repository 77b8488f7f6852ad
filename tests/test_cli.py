"""User errors reach the console as one line, not a traceback."""

import os
import shutil
import subprocess
import sys

from .conftest import REPO

DEBUG = str(REPO / "experiments" / "debug.py")


def _run(args, cache, tmp_path):
    env = dict(os.environ, VLA_JAX_CACHE=str(cache), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run(
        [sys.executable, "-m", "vla_jax.cli", *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )


def _single_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vla-jax: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_bad_config_key(cache_dir, tmp_path):
    line = _single_error_line(
        _run(["train", "--config", DEBUG, "--config.optimizer.peak_lrr=1", "--workdir", "w"], cache_dir, tmp_path)
    )
    assert "unknown config key 'optimizer.peak_lrr'" in line and "did you mean 'optimizer.peak_lr'" in line


def test_missing_dataset_directory(cache_dir, tmp_path):
    missing = tmp_path / "no_such_dir"
    result = _run(
        ["train", "--config", DEBUG, f"--config.data.data_dir={missing}", "--workdir", "w"], cache_dir, tmp_path
    )
    line = _single_error_line(result)
    assert "dataset 'vla_demo'" in line and str(missing) in line and "data.data_dir" in line


def test_corrupt_demo_cache(demo_dir, tmp_path):
    cache = tmp_path / "cache"
    target = cache / "datasets" / demo_dir.relative_to(demo_dir.parents[2])
    shutil.copytree(demo_dir, target)
    record = next(target.glob("*train.tfrecord*"))
    record.write_bytes(record.read_bytes()[:1000])  # truncated
    line = _single_error_line(_run(["train", "--config", DEBUG, "--workdir", "w"], cache, tmp_path))
    assert "demo dataset cache" in line and "corrupt" in line and record.name in line and "delete" in line


def test_data_list_and_stats_json(demo_dir, tmp_path):
    import json

    import numpy as np

    listing = _run(["data", "list", "--json"], demo_dir.parents[3], tmp_path)
    assert listing.returncode == 0, listing.stderr[-2000:]
    data = json.loads(listing.stdout)
    names = {d["name"] for d in data["datasets"]}
    assert {"vla_demo", "fractal20220817_data", "bridge_orig"} <= names
    soup = next(m for m in data["mixtures"] if m["name"] == "oxe_magic_soup")
    assert len(soup["datasets"]) == 25

    stats = _run(
        ["data", "stats", "vla_demo", "--data-dir", str(demo_dir.parents[2]), "--json"], demo_dir.parents[3], tmp_path
    )
    assert stats.returncode == 0, stats.stderr[-2000:]
    result = json.loads(stats.stdout)
    for key in ("action", "state"):
        for field in ("mean", "std", "min", "max", "q01", "q99"):
            assert len(result[key][field]) == 4
        assert np.all(np.array(result[key]["q01"]) <= np.array(result[key]["q99"]))
    assert result["num_trajectories"] == 2000 and result["num_transitions"] > 10 * 2000
    assert result["normalization"] == "quantile" and result["action_mask"] == [True, True, True, False]

    missing = _run(["data", "stats", "vla_dem", "--data-dir", str(tmp_path)], demo_dir.parents[3], tmp_path)
    assert "did you mean 'vla_demo'" in _single_error_line(missing)
