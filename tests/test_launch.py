"""Launchers (printed, not run), multi-host environment detection, and --dry-run of every experiment config."""

import json
import pathlib
import subprocess

import pytest

from vla_jax import cli, distributed
from vla_jax.errors import ConfigError

from .conftest import REPO

LAUNCH = REPO / "launch"
EXPERIMENTS = sorted((REPO / "experiments").glob("*.py"))
TRAIN = ["vla-jax", "train", "--config", "experiments/pretrain_small.py", "--workdir", "gs://bucket/run 1"]


def _lines(*command) -> list[str]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_local_launcher_gives_each_process_its_rank():
    lines = _lines(
        LAUNCH / "local.sh", "--processes", "3", "--devices-per-process", "4", "--cpu", "--dry-run", "--", *TRAIN
    )
    assert len(lines) == 3
    for rank, line in enumerate(lines):
        assert f"VLA_JAX_PROCESS_ID={rank} " in line and "VLA_JAX_NUM_PROCESSES=3" in line
        assert "VLA_JAX_COORDINATOR=localhost:" in line
        assert "--xla_force_host_platform_device_count=4" in line and line.endswith(" ".join(TRAIN))
    single = _lines(LAUNCH / "local.sh", "--dry-run", "--", "echo", "x")
    assert single == ["env  echo x"] or single == ["env echo x"]


def test_local_launcher_runs_a_command_and_rejects_bad_options(tmp_path):
    assert _lines(LAUNCH / "local.sh", "--", "echo", "a b") == ["a b"]
    bad = subprocess.run([str(LAUNCH / "local.sh"), "--nodes", "2", "--", "echo"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --nodes" in bad.stderr


def test_tpu_pod_launcher_prints_create_install_run_delete():
    lines = _lines(
        LAUNCH / "tpu_pod.sh", "all", "--name", "pod", "--zone", "us-east5-a", "--type", "v5p-128",
        "--repo", "https://example.org/vla_jax.git", "--spot", "--dry-run", "--", *TRAIN,
    )  # fmt: skip
    assert len(lines) == 4
    create, install, run, delete = lines
    assert create.startswith("gcloud compute tpus tpu-vm create pod --zone=us-east5-a")
    assert "--accelerator-type=v5p-128" in create and "--spot" in create
    assert "--worker=all" in install and "git\\ clone" in install and "jax\\[tpu\\]" in install
    assert "--worker=all" in run and "experiments/pretrain_small.py" in run and "run\\\\\\ 1" in run
    assert delete.startswith("gcloud compute tpus tpu-vm delete pod")
    missing = subprocess.run([str(LAUNCH / "tpu_pod.sh"), "install", "--name", "p", "--zone", "z", "--dry-run"],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "--repo" in missing.stderr


def test_xpk_and_slurm_launchers_print_their_commands():
    (xpk,) = _lines(LAUNCH / "xpk.sh", "--cluster", "c1", "--zone", "z", "--type", "v5p-256", "--slices", "2",
                    "--workload", "w", "--dry-run", "--", *TRAIN)  # fmt: skip
    assert (
        xpk.startswith("xpk workload create --cluster=c1") and "--num-slices=2" in xpk and "--tpu-type=v5p-256" in xpk
    )
    assert "pretrain_small.py" in xpk
    sbatch, srun = _lines(LAUNCH / "slurm_gpu.sbatch", "--dry-run", "--nodes", "4", "--", *TRAIN)
    assert sbatch.startswith("sbatch --nodes=4") and srun.startswith("srun --kill-on-bad-exit=1")
    assert srun.endswith("gs://bucket/run\\ 1")
    header = (LAUNCH / "slurm_gpu.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in header and "#SBATCH --signal=TERM@" in header


def test_launch_readme_names_every_launcher():
    readme = (LAUNCH / "README.md").read_text()
    for script in ("local.sh", "tpu_pod.sh", "xpk.sh", "slurm_gpu.sbatch"):
        assert f"launch/{script}" in readme


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, "single"),
        ({"VLA_JAX_COORDINATOR": "h:1", "VLA_JAX_NUM_PROCESSES": "2", "VLA_JAX_PROCESS_ID": "1"}, "explicit"),
        ({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}, "slurm"),
        ({"SLURM_NTASKS": "1"}, "single"),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "CLOUD_TPU_TASK_ID": "0"}, "tpu"),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, "single"),
    ],
)
def test_cluster_detection(env, kind):
    assert distributed.cluster_kind(env) == kind


def test_partial_explicit_cluster_is_a_clear_error():
    with pytest.raises(ConfigError, match="VLA_JAX_PROCESS_ID"):
        distributed.cluster_kind({"VLA_JAX_COORDINATOR": "h:1", "VLA_JAX_NUM_PROCESSES": "2"})


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_config_passes_a_dry_run(path: pathlib.Path, demo_dir, capsys, tmp_path):
    extra = []
    if path.stem.startswith("finetune"):  # its source is a run of yours; a dry run reads nothing of it
        (tmp_path / "source" / "checkpoints").mkdir(parents=True)
        extra = [f"--config.init.source={tmp_path / 'source'}"]
    assert cli.main(["train", "--config", str(path), "--dry-run", "--json", *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params_total"] > 0 and result["state_bytes_per_device"] > 0
    doc = path.read_text().split('"""')[1]
    assert len(doc) > 100 and f"experiments/{path.name}" in doc  # documented at the top: what it is for, how to run it
    if path.stem == "pretrain_oxe_magic_soup":
        assert result["mesh"]["fsdp"] == 64 and result["replicated_fraction"] <= 0.02
        assert result["examples_per_device"] == 16
        # fp32 params, two AdamW moments and EMA over 64 chips; what stays replicated is whole on each chip.
        sharded = 4 * 4 * result["params_total"] / 64
        assert sharded < result["state_bytes_per_device"] <= sharded * (1 + 64 * result["replicated_fraction"]) + 2**20
