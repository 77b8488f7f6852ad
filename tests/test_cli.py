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


def test_tokenizer_fit_and_eval_json(demo_dir, tmp_path):
    import json

    cache = demo_dir.parents[3]
    one_second = "--config.data.action_horizon=10"  # 1-s chunks of the 10 Hz demo
    fit = _run(
        ["tokenizer", "fit", "--config", DEBUG, one_second, "--out", "fast.json", "--chunks", "3000", "--json"],
        cache,
        tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    fitted = json.loads(fit.stdout)
    assert fitted["kind"] == "fast" and fitted["chunks"] == 3000
    assert (fitted["horizon"], fitted["action_dim"]) == (10, 4) and (tmp_path / "fast.json").is_file()

    evaluation = _run(
        ["tokenizer", "eval", "fast.json", "--config", DEBUG, one_second, "--chunks", "500", "--json"], cache, tmp_path
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    result = json.loads(evaluation.stdout)
    ours, binning = result["tokenizer"], result["binning"]
    assert result["split"] == "val" and result["chunks"] == 500
    assert binning["tokens_per_chunk_mean"] == 40 and ours["tokens_per_chunk_mean"] < 40
    assert result["tokens_vs_binning"] == ours["tokens_per_chunk_mean"] / 40
    assert ours["decode_valid_rate"] == 1.0 and ours["rmse_normalized"] < 0.035
    assert len(ours["rmse_normalized_per_dim"]) == 4 and len(ours["rmse_action_units_per_dim"]["vla_demo"]) == 4
    assert ours["tokens_per_chunk_p95"] >= ours["tokens_per_chunk_mean"] and ours["encode_chunks_per_s"] > 0

    # A file made for other chunks is refused with both shapes named.
    other = _run(
        ["tokenizer", "eval", "fast.json", "--config", DEBUG, "--config.data.action_horizon=5"], cache, tmp_path
    )
    line = _single_error_line(other)
    assert "fast.json" in line and "10×4" in line and "5×4" in line


def test_a_freeze_regex_matching_no_parameter_is_refused_by_the_dry_run(cache_dir, demo_dir, tmp_path):
    line = _single_error_line(
        _run(["train", "--config", DEBUG, "--dry-run", "--config.optimizer.freeze=^vitt/"], cache_dir, tmp_path)
    )
    assert "'optimizer.freeze' is '^vitt/', which matches no parameter" in line


def test_a_refused_run_creates_no_workdir(cache_dir, tmp_path):
    line = _single_error_line(
        _run(["train", "--config", DEBUG, "--workdir", "w", "--config.data.image_dropout=1.5"], cache_dir, tmp_path)
    )
    assert "data.image_dropout" in line and "1.5" in line
    assert not (tmp_path / "w").exists()
