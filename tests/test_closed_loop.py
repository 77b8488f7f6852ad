"""Closed loop with a trained policy: during training, from a workdir, and through `vla-jax serve`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # trains a debug run and starts a server (a few minutes)

EPISODES = 6


def _cli(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "vla_jax.cli", *args], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory):
    """A debug run whose validations include 6 closed-loop demo episodes; its stdout."""
    workdir = tmp_path_factory.mktemp("closed_loop_run")
    overrides = ["--config.closed_loop.env=demo", f"--config.closed_loop.episodes={EPISODES}"]
    overrides += ["--config.closed_loop.num_envs=3", "--config.closed_loop.execute_steps=2"]
    done = _cli("train", "--config", str(REPO / "experiments" / "debug.py"), "--workdir", str(workdir), *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done.stdout


def test_training_logs_closed_loop_success_at_each_validation(trained):
    workdir, stdout = trained
    lines = [line for line in stdout.splitlines() if "closed loop (demo, 6 held-out episodes, " in line]
    assert [line.split(":")[0] for line in lines] == ["step 3", "step 3", "step 6", "step 6"]
    assert ["flow)" in line for line in lines] == [True, False, True, False]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    found = [r for r in logged if "closed_loop/flow/success_rate" in r]
    assert [r["step"] for r in found] == [3, 6]
    for record in found:
        for decoder in ("flow", "fast"):  # debug.py is fast+flow: both decoders are evaluated
            kinds = ("success", "wrong_object", "timeout", "invalid_action")
            rates = [record[f"closed_loop/{decoder}/{k}_rate"] for k in kinds]
            assert sum(rates) == pytest.approx(1.0) and all(0.0 <= r <= 1.0 for r in rates)
            assert 0 <= record[f"closed_loop/{decoder}/mean_length"] <= 60


def test_the_hook_evaluates_the_saved_policy_like_vla_jax_eval(trained, tmp_path):
    """The step-6 figures the trainer logged are those of `vla-jax eval WORKDIR --step 6` on the same scenes."""
    workdir, _ = trained
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    at_6 = next(r for r in logged if r.get("step") == 6 and "closed_loop/fast/success_rate" in r)
    for decoder in ("flow", "fast"):
        out = tmp_path / decoder
        args = ["--env", "demo", "--episodes", str(EPISODES), "--num-envs", "3", "--execute", "2", "--step", "6"]
        done = _cli("eval", str(workdir), *args, "--decoder", decoder, "--video-episodes", "0", "--out", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        summary = json.loads((out / "results.json").read_text())
        for key in ("success_rate", "wrong_object_rate", "invalid_action_rate", "mean_length"):
            assert summary[key] == pytest.approx(at_6[f"closed_loop/{decoder}/{key}"]), (decoder, key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_eval_in_process_and_through_the_server_run_the_same_episodes(trained, tmp_path):
    workdir, _ = trained
    common = ["--env", "demo", "--episodes", str(EPISODES), "--num-envs", "3", "--execute", "2", "--seed", "1"]
    local = _cli("eval", str(workdir), *common, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    assert f"/{EPISODES}, 95% CI" in local.stdout

    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    server = subprocess.Popen(
        [sys.executable, "-m", "vla_jax.cli", "serve", str(workdir), "--port", str(port), "--max-batch", "1"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        served = _cli("eval", "--server", f"127.0.0.1:{port}", *common, "--out", str(tmp_path / "served"))
        assert served.returncode == 0, served.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=60)

    a = json.loads((tmp_path / "local" / "results.json").read_text())
    b = json.loads((tmp_path / "served" / "results.json").read_text())
    assert b["policy"].startswith("policy server ws://127.0.0.1")
    for x, y in zip(a["episodes_detail"], b["episodes_detail"], strict=True):
        assert (x["seed"], x["length"], x["queries"], x["success"]) == (
            y["seed"],
            y["length"],
            y["queries"],
            y["success"],
        )
        np.testing.assert_allclose(x["final_state"], y["final_state"], atol=1e-4)
    assert a["success_rate"] == b["success_rate"]
    assert (tmp_path / "local" / "episodes.gif").is_file()


def test_the_blank_camera_control_changes_what_the_policy_does(trained, tmp_path):
    workdir, _ = trained
    common = ["--env", "demo", "--episodes", "3", "--num-envs", "3", "--video-episodes", "0", "--json"]
    plain = _cli("eval", str(workdir), *common, "--out", str(tmp_path / "plain"))
    blank = _cli("eval", str(workdir), *common, "--blank-camera", "primary", "--out", str(tmp_path / "blank"))
    assert plain.returncode == 0 and blank.returncode == 0, blank.stderr[-2000:]
    x = json.loads((tmp_path / "plain" / "results.json").read_text())["episodes_detail"]
    y = json.loads((tmp_path / "blank" / "results.json").read_text())["episodes_detail"]
    assert any(not np.allclose(a["final_state"], b["final_state"]) for a, b in zip(x, y, strict=True))
    assert json.loads(blank.stdout)["controls"]["blank_cameras"] == ["primary"]
