"""Two processes x 4 CPU devices on localhost train like one process x 8 devices (launch/local.sh)."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

STEPS = ("num_steps=4", "log_every=2", "eval_every=4", "checkpoint_every=4", "data.host_sharding=replicated")


def _train(workdir, processes: int, devices: int, port: int) -> list[dict]:
    overrides = [f"--config.{o}" for o in (*STEPS, "mesh.data=2", "mesh.fsdp=4", "sharding.fsdp_min_bytes=0")]
    command = [
        str(REPO / "launch" / "local.sh"),
        "--processes", str(processes), "--devices-per-process", str(devices), "--cpu", "--port", str(port),
        "--", sys.executable, "-m", "vla_jax.cli", "train",
        "--config", str(REPO / "experiments" / "debug.py"), "--workdir", str(workdir), *overrides,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["LOG_DIR"] = str(workdir.parent / f"logs_{processes}")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"vla_jax: {processes} processes, 8 devices" in done.stdout
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.slow


def test_two_processes_of_four_devices_train_like_one_of_eight(demo_dir, tmp_path):
    one = _train(tmp_path / "one", processes=1, devices=8, port=12361)
    two = _train(tmp_path / "two", processes=2, devices=4, port=12362)
    losses_one = {r["step"]: r["loss"] for r in one if "loss" in r}
    losses_two = {r["step"]: r["loss"] for r in two if "loss" in r}
    assert losses_one.keys() == losses_two.keys() == {2, 4}
    for step_ in (2, 4):
        assert abs(losses_one[step_] - losses_two[step_]) <= 1e-5 * abs(losses_one[step_]), (losses_one, losses_two)
    val_one = [r for r in one if "val_action_error" in r][-1]
    val_two = [r for r in two if "val_action_error" in r][-1]
    assert abs(val_one["val_action_error"] - val_two["val_action_error"]) < 1e-5
    assert (tmp_path / "two" / "checkpoints" / "4").is_dir()
