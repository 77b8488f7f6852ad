"""Sharded training on 8 fake CPU devices: mesh invariance, resume, restore, kill -9, failures.

The training loop end to end: the slow tier (``make test-fast`` leaves it out).
"""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vla_jax import sharding
from vla_jax.data import loader
from vla_jax.errors import CheckpointError
from vla_jax.training import checkpoint, state, step, trainer

from .conftest import REPO, debug_config

pytestmark = pytest.mark.slow


def _setup(config, mesh_shape, devices=None) -> trainer.Setup:
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_shape)
    return trainer.setup(config, devices)


def _params_np(train_state):
    return jax.tree.map(np.asarray, jax.device_get(train_state["params"]))


def test_same_loss_on_every_mesh(demo_dir, tmp_path):
    assert jax.device_count() == 8
    config = debug_config("sharding.fsdp_min_bytes=0")
    results, batch_local = {}, None
    for data, fsdp in ((1, 8), (2, 4), (8, 1)):
        run = _setup(config, {"data": data, "fsdp": fsdp})
        if fsdp > 1:
            assert run.layout.replicated_fraction < 0.5  # the FSDP rule really shards
        if batch_local is None:  # one batch (and one tokenizer fit) for every mesh
            prompt = trainer.prepare_prompt_tokenizer(config, run.data, tmp_path)
            batch_local = next(loader.train_batches(run.data, config.data, global_batch_size=16, seed=0, prompt=prompt))
        with jax.set_mesh(run.mesh), sharding.logical_rules(run.rules):
            train_state = state.init_state(run.model_fn, run.optimizer, run.layout)
            batch = loader.to_global_batch(batch_local, run.batch_sharding)
            train_step = step.make_train_step(run.layout, run.optimizer, run.batch_sharding, config.seed)
            new_state, metrics = train_step(train_state, batch)
            results[(data, fsdp)] = (float(metrics["loss"]), float(metrics["grad_norm"]), _params_np(new_state))
    (loss0, norm0, params0), *others = results.values()
    for loss, norm, params in others:
        np.testing.assert_allclose(loss, loss0, rtol=1e-5)
        np.testing.assert_allclose(norm, norm0, rtol=1e-4)
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), params, params0)


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(demo_dir, tmp_path_factory):
    """An uninterrupted 6-step run on an 8-device FSDP mesh."""
    workdir = tmp_path_factory.mktemp("full")
    config = debug_config("mesh.data=1", "mesh.fsdp=8", "sharding.fsdp_min_bytes=0")
    summary = trainer.train(config, workdir)
    return config, workdir, summary


def test_workdir_contract(full_run):
    config, workdir, summary = full_run
    assert json.loads((workdir / "config.json").read_text())["num_steps"] == config.num_steps
    records = _metrics(workdir)
    assert all("step" in r for r in records)
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "val_action_error" in r] == [3, 6]
    assert all(0.0 <= r["val_fast_decode_valid_rate"] <= 1.0 for r in records if "val_action_error" in r)
    assert all(
        0.0 <= r["token_accuracy"] <= 1.0 and r["prompt_truncated_fraction"] == 0.0 for r in records if "loss" in r
    )
    assert summary["step"] == 6 and np.isfinite(summary["loss"])
    assert checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=2).all_steps() == [
        2,
        4,
        6,
    ]


def test_stop_and_resume_matches_uninterrupted(full_run, tmp_path):
    config, full_dir, _ = full_run
    trainer.train(config, tmp_path, stop_at_step=3)
    tokenizers = {p.name: p.read_bytes() for p in (tmp_path / trainer.TOKENIZER_DIR).iterdir()}
    assert tokenizers == {p.name: p.read_bytes() for p in (full_dir / trainer.TOKENIZER_DIR).iterdir()}  # deterministic
    # A resumed run reuses its tokenizers, even when the fitting settings changed since.
    refit = config.copy_and_resolve_references()
    refit.tokenizer.fit_chunks = 500
    summary = trainer.train(refit, tmp_path)
    assert tokenizers == {p.name: p.read_bytes() for p in (tmp_path / trainer.TOKENIZER_DIR).iterdir()}
    assert summary["start_step"] == 3 and summary["step"] == 6
    layout = _setup(config, {"data": 1, "fsdp": 8}).layout
    ckpt_a = checkpoint.Checkpointer(full_dir / "checkpoints", max_to_keep=3, save_interval_steps=2)
    ckpt_b = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=2)
    a = _params_np(ckpt_a.restore(6, layout.abstract)["state"])
    b = _params_np(ckpt_b.restore(6, layout.abstract)["state"])
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), a, b)
    losses_a = {r["step"]: r["loss"] for r in _metrics(full_dir) if "loss" in r and r["step"] > 3}
    losses_b = {r["step"]: r["loss"] for r in _metrics(tmp_path) if "loss" in r and r["step"] > 3}
    assert losses_a.keys() == losses_b.keys() == {4, 6}
    np.testing.assert_allclose([losses_a[k] for k in (4, 6)], [losses_b[k] for k in (4, 6)], rtol=1e-6)


def test_checkpoint_from_8_device_fsdp_restores_on_1_device_and_on_2x4(full_run):
    config, workdir, _ = full_run
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=2)
    assert set(ckpt.item_names(6)) >= {"params", "opt_state", "config", "dataset_statistics", "tokenizers", "meta"}
    layout8 = _setup(config, {"data": 1, "fsdp": 8}).layout
    layout24 = _setup(config, {"data": 2, "fsdp": 4}).layout
    layout1 = _setup(config, {"data": 1, "fsdp": 1}, devices=jax.devices()[:1]).layout
    on8, on24, on1 = (ckpt.restore(6, layout.abstract) for layout in (layout8, layout24, layout1))
    sharded = [x for x in jax.tree.leaves(on8["state"]["params"]) if not x.sharding.is_fully_replicated]
    assert sharded, "the 8-device checkpoint should hold sharded parameters"
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(on1["state"]))
    assert {x.sharding.spec for x in jax.tree.leaves(on24["state"]["params"])} != {jax.sharding.PartitionSpec()}
    for other in (on1, on24):
        jax.tree.map(np.testing.assert_array_equal, _params_np(on8["state"]), _params_np(other["state"]))
    assert on1["meta"]["step"] == 6 and int(on1["state"]["step"]) == 6
    assert on1["meta"]["frames_consumed"] == 6 * config.batch_size
    assert on1["dataset_statistics"]["vla_demo"]["normalization"] == "quantile"
    assert on1["config"]["model"]["backbone"]["width"] == config.model.backbone.width
    files = {p.name: p.read_bytes() for p in (workdir / trainer.TOKENIZER_DIR).iterdir()}
    assert on1["tokenizers"] == files and files


def test_two_runs_with_the_same_seed_give_identical_losses(full_run, tmp_path):
    config, full_dir, _ = full_run
    trainer.train(config, tmp_path, stop_at_step=4)
    first = {r["step"]: r["loss"] for r in _metrics(full_dir) if "loss" in r and r["step"] <= 4}
    second = {r["step"]: r["loss"] for r in _metrics(tmp_path) if "loss" in r}
    assert first == second and len(first) == 2


def test_resume_with_another_model_is_a_clear_error(full_run):
    config, workdir, _ = full_run
    before = (workdir / "config.json").read_text()
    changed = debug_config("mesh.data=1", "mesh.fsdp=8", "model.backbone.width=48", "num_steps=8")
    with pytest.raises(CheckpointError, match=r"checkpoint step 6 .* cannot be restored") as error:
        trainer.train(changed, workdir)
    message = str(error.value)
    assert re.search(r"params \S+ is \([^)]*32[^)]*\) float32 there, \([^)]*48[^)]*\) float32 here", message)
    assert "model.backbone.width: 32 -> 48" in message and "num_steps: 6 -> 8" in message  # why
    assert "\n" not in message
    assert (workdir / "config.json").read_text() == before  # nothing overwritten


def test_corrupt_latest_checkpoint_falls_back(full_run, tmp_path, capsys):
    import shutil

    config, workdir, _ = full_run
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    for path in (tmp_path / "checkpoints" / "6" / "params").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "manifest" not in path.name:
            path.write_bytes(b"garbage")
    layout = _setup(config, {"data": 1, "fsdp": 8}).layout
    restored = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=2).restore_latest(
        layout.abstract
    )
    assert restored["meta"]["step"] == 4
    assert "checkpoint step 6 is unreadable" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / "6.unreadable").is_dir()


def test_train_falls_back_past_a_latest_step_with_unreadable_config(full_run, tmp_path, capsys):
    import shutil

    config, workdir, _ = full_run
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    for path in (tmp_path / "checkpoints" / "6" / "config").rglob("*"):
        if path.is_file():
            path.write_text("{not json")
    summary = trainer.train(config, tmp_path)
    assert summary["start_step"] == 4 and summary["step"] == 6
    assert "checkpoint step 6 is unreadable" in capsys.readouterr().out
    assert (tmp_path / "checkpoints" / "6.unreadable" / "config").is_dir()  # kept for inspection
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=2)
    assert ckpt.all_steps() == [2, 4, 6]  # step 6 saved again by the resumed run


KILL_DURING_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
from vla_jax.config import load_config
from vla_jax.training import checkpoint, trainer

kill_step = int(sys.argv[3])
real_save = checkpoint.Checkpointer.save

def save(self, state, *, step, **kwargs):
    if step == kill_step:
        async def finalize(*args, **kw):  # the step's data is written; die before the rename
            os.kill(os.getpid(), signal.SIGKILL)
        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    saved = real_save(self, state, step=step, **kwargs)
    if saved and step < kill_step:
        self.wait()
    return saved

checkpoint.Checkpointer.save = save
trainer.train(load_config(sys.argv[1]), sys.argv[2])
"""


def test_kill_9_during_save_resumes_from_previous(demo_dir, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    config_path = str(REPO / "experiments" / "debug.py")
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_SAVE)
    workdir = tmp_path / "work"
    killed = subprocess.run(
        [sys.executable, str(script), config_path, str(workdir), "4"], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    leftovers = [p.name for p in (workdir / "checkpoints").iterdir()]
    assert any("orbax-checkpoint-tmp" in name for name in leftovers), leftovers
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=2)
    assert ckpt.all_steps() == [2]
    resumed = subprocess.run(
        [sys.executable, "-m", "vla_jax.cli", "train", "--config", config_path, "--workdir", str(workdir)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 2" in resumed.stdout
    assert checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=2).all_steps() == [
        2,
        4,
        6,
    ]


SIGTERM_RUN = """
import sys
from vla_jax.config import load_config
from vla_jax.training import trainer

summary = trainer.train(load_config(sys.argv[1], ["num_steps=400", "checkpoint_every=1000", "eval_every=1000"]), sys.argv[2])
print("SUMMARY", summary["step"], summary["preempted"], flush=True)
"""


def test_sigterm_saves_at_the_current_step_and_exits_0(demo_dir, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    script = tmp_path / "run.py"
    script.write_text(SIGTERM_RUN)
    workdir = tmp_path / "work"
    process = subprocess.Popen(
        [sys.executable, str(script), str(REPO / "experiments" / "debug.py"), str(workdir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics_file = workdir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        lines = metrics_file.read_text().splitlines() if metrics_file.exists() else []
        if any(json.loads(x).get("step", 0) >= 4 for x in lines if x.endswith("}")):
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    stopped = int(out.split("SUMMARY ")[1].split()[0])
    assert "preempted (SIGTERM)" in out and out.split("SUMMARY ")[1].split()[1] == "True"
    assert 4 <= stopped < 400
    steps = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=3, save_interval_steps=1000).all_steps()
    assert steps == [stopped]  # saved at the step it stopped, not at an interval


def test_a_save_that_fails_mid_write_is_reported_and_the_previous_one_stays_latest(
    demo_dir, tmp_path, monkeypatch, capsys
):
    import errno

    from orbax.checkpoint._src.path import atomicity

    real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if self.get_final().name == "4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)
    config = debug_config("num_steps=5", "eval_every=100")
    summary = trainer.train(config, tmp_path)
    assert summary["step"] == 5
    out = capsys.readouterr().out
    assert "WARNING: the checkpoint save of step 4 failed" in out and "No space left on device" in out
    assert "latest complete checkpoint is step 2" in out
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=2)
    assert ckpt.all_steps() == [2, 5]
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", real_finalize)
    resumed = trainer.train(debug_config("num_steps=6", "eval_every=100"), tmp_path)
    assert resumed["start_step"] == 5 and resumed["step"] == 6


def test_fast_flow_run_with_ema_and_accumulation_logs_everything(demo_dir, tmp_path):
    config = debug_config(
        "model.mode=fast+flow", "model.expert.plan=('as', 'hb')", "ema_decay=0.9", "grad_accum_steps=2",
        "num_steps=4", "eval_every=4", "checkpoint_every=4",
    )  # fmt: skip
    summary = trainer.train(config, tmp_path)
    records = _metrics(tmp_path)
    train_records = [r for r in records if "loss" in r]
    for key in ("token_ce", "flow_mse", "moe_aux_loss", "moe_as_reg", "moe_hb_balance", "loss/vla_demo",
                "examples_per_s", "tokens_per_s", "hb_load_layer1"):  # fmt: skip
        assert key in train_records[-1], key
    assert len(train_records[-1]["hb_load_layer1"]) == config.model.expert.moe.hb_experts
    (val,) = [r for r in records if "val_action_error" in r]
    for key in ("val_error_ratio", "val_fast_error_ratio", "val_fast_decode_valid_rate", "val_loss",
                "val_action_error_units/vla_demo"):  # fmt: skip
        assert key in val and np.isfinite(val[key]), key
    assert summary["step"] == 4
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=4)
    assert "ema" in ckpt.item_names(4)


def test_a_run_that_trains_another_dataset_mixture_with_the_same_shapes_resumes(full_run, tmp_path):
    """Only what cannot be restored refuses a resume: changed data settings with the same shapes go on."""
    import shutil

    config, workdir, _ = full_run
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    changed = debug_config("mesh.data=1", "mesh.fsdp=8", "sharding.fsdp_min_bytes=0", "num_steps=7")
    changed.unlock()
    changed.data.shuffle_buffer_size = 100
    summary = trainer.train(changed, tmp_path)
    assert summary["start_step"] == 6 and summary["step"] == 7


def _cli(*args, timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "vla_jax.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    return done, time.perf_counter() - started


def test_setup_failing_after_the_checkpointer_exists_exits_promptly_and_marks_the_workdir(full_run, tmp_path):
    import shutil

    _, workdir, _ = full_run
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    args = ["train", "--config", str(REPO / "experiments" / "debug.py"), "--workdir", str(tmp_path)]
    done, seconds = _cli(*args, "--config.model.backbone.width=48")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vla-jax: error: checkpoint step 6 "), lines
    assert seconds < 120  # no hang: the checkpointer, writers and threads were released
    assert (tmp_path / "FAILED").read_text().strip() == lines[0].removeprefix("vla-jax: error: ")
    done, _ = _cli(*args)  # the right config: the mark is reported and removed, the finished run stays finished
    assert done.returncode == 0, done.stderr[-2000:]
    assert "was marked failed" in done.stdout and not (tmp_path / "FAILED").exists()


def test_a_non_finite_step_stops_the_run_with_one_line_and_no_new_checkpoint(demo_dir, tmp_path):
    """peak_lr=nan (refused up front by the config check; here the check is bypassed to reach the guard)."""
    from vla_jax.training.trainer import NonFiniteError

    config = debug_config("optimizer.peak_lr=nan", "checkpoint_every=1")
    with pytest.raises(NonFiniteError) as error:
        trainer.train(config, tmp_path, validate_first=False)
    message = str(error.value)
    assert message.startswith("training stopped at step 1: non-finite ") and "update_norm nan" in message
    assert "the last good checkpoint is none" in message and "\n" not in message
    assert checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=1).all_steps() == []
    assert (tmp_path / "FAILED").read_text().strip() == message


def test_the_cli_refuses_peak_lr_nan_before_anything_exists(tmp_path):
    done, _ = _cli("train", "--config", str(REPO / "experiments" / "debug.py"), "--workdir", str(tmp_path / "w"),
                   "--config.optimizer.peak_lr=nan")  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "optimizer.peak_lr" in done.stderr and not (tmp_path / "w").exists()


def test_skipping_non_finite_steps_is_bounded_and_logged(demo_dir, tmp_path, capsys):
    config = debug_config("optimizer.peak_lr=nan", "max_nonfinite_skips=3", "num_steps=6", "eval_every=100")
    with pytest.raises(trainer.NonFiniteError, match=r"at step 4: .*\(3 earlier non-finite steps were skipped\)"):
        trainer.train(config, tmp_path, validate_first=False)
    out = capsys.readouterr().out
    assert [f"step {i} skipped" in out for i in (1, 2, 3)] == [True] * 3
    steps = checkpoint.Checkpointer(tmp_path / "checkpoints", max_to_keep=3, save_interval_steps=2).all_steps()
    assert steps == [2]  # the skipped steps left the parameters unchanged (finite), so step 2 was saved
