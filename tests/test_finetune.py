"""Fine-tuning: a run started from another run's parameters (config.init), a new embodiment, freeze presets."""

import contextlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import REPO, debug_config
from vla_jax import validation
from vla_jax.data.specs import ACTION_SPACE_IDS
from vla_jax.errors import ConfigError
from vla_jax.inference import bundle, release
from vla_jax.training import checkpoint, trainer
from vla_jax.training import init as init_lib
from vla_jax.training.optimizer import param_path

pytestmark = pytest.mark.slow  # trains a debug run once and starts several runs from it

# fast+flow with the HiMoE expert, FSDP over the 8 fake devices: restoring it re-shards every parameter.
SOURCE_OVERRIDES = ("num_steps=4", "checkpoint_every=4", "eval_every=4", "mesh.data=1", "mesh.fsdp=8")
SHARDED = ("sharding.fsdp_min_bytes=2048",)


@pytest.fixture(scope="module")
def source(demo_dir, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("finetune_source")
    trainer.train(debug_config(*SOURCE_OVERRIDES, *SHARDED), workdir)
    return workdir


def _flat(tree) -> dict[str, np.ndarray]:
    return {param_path(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _source_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    return _flat(bundle.load_checkpoint(workdir).params)


def _started(config, workdir: pathlib.Path) -> tuple[dict, dict]:
    """The initial params of a run of ``config`` (nothing trained) and its init report."""
    with contextlib.ExitStack() as resources:
        run = trainer.start(config, workdir, resources, end_step=0)
        params = _flat(run.state["params"])
    return params, json.loads((workdir / init_lib.REPORT_FILE).read_text())


def test_every_parameter_is_loaded_bit_equal_with_its_expert(source, tmp_path):
    config = debug_config(f"init.source={source}")
    assert validation.validate_config(config, device_count=8) == []
    params, report = _started(config, tmp_path / "ft")
    expected = _source_params(source)
    assert set(params) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(params[path], value, err_msg=path)
    assert report["counts"] == {"loaded": len(expected), "unused": 0}
    experts = [p for p in report["parameters"] if p.startswith("action_expert/") and "experts" in p]
    assert experts and all(report["parameters"][p]["status"] == "loaded" for p in experts)
    assert report["tokenizers"] == {"text.model": "source", "action_tokenizer.json": "source"}
    for name in ("text.model", "action_tokenizer.json"):
        assert (tmp_path / "ft" / "tokenizers" / name).read_bytes() == (source / "tokenizers" / name).read_bytes()


def test_a_shape_mismatch_names_the_parameter_unless_reinit_covers_it(source, tmp_path):
    wider = ("model.backbone.mlp_dim=48", f"init.source={source}")
    with pytest.raises(
        ConfigError, match=r"backbone/layers/0/ffn/mlp/gate is \(32, 64\) in the source, \(32, 48\) here"
    ):
        _started(debug_config(*wider), tmp_path / "a")
    params, report = _started(debug_config(*wider, "init.reinit=^backbone/layers/\\d+/ffn/"), tmp_path / "b")
    expected = _source_params(source)
    statuses = {p: d["status"] for p, d in report["parameters"].items()}
    reinit = {p for p, s in statuses.items() if s == "reinitialized"}
    assert reinit and all(p.startswith("backbone/layers/") and "/ffn/" in p for p in reinit)
    assert all(s == "loaded" for p, s in statuses.items() if p not in reinit)
    for path in set(statuses) - reinit:
        np.testing.assert_array_equal(params[path], expected[path], err_msg=path)


def test_not_loaded_parameters_start_fresh_and_the_flow_only_target_lists_fast_leftovers(source, tmp_path):
    params, report = _started(debug_config(f"init.source={source}", "init.load=^(vit|image_proj)/"), tmp_path / "a")
    expected = _source_params(source)
    loaded = {p for p, d in report["parameters"].items() if d["status"] == "loaded"}
    assert loaded == {p for p in expected if p.startswith(("vit/", "image_proj/"))}
    assert any(not np.array_equal(params[p], expected[p]) for p in set(expected) - loaded)


def test_a_new_embodiment_gets_new_statistics_and_a_routed_action_space(source, tmp_path):
    workdir = tmp_path / "absolute"
    overrides = (
        f"init.source={source}",
        "init.action_space_from=eef_delta_xyz",
        "data.mixture=vla_demo_absolute",
        "data.cameras=('primary',)",
        "num_steps=2",
        "checkpoint_every=2",
        "eval_every=2",
    )
    config = debug_config(*overrides)
    assert validation.validate_config(config, device_count=8) == []
    trainer.train(config, workdir)
    report = json.loads((workdir / init_lib.REPORT_FILE).read_text())
    assert report["action_spaces"]["routed_like"] == {"eef_absolute": "eef_delta_xyz"}
    assert report["statistics"] == {"new": ["vla_demo_absolute"], "kept_from_source": ["vla_demo"]}
    routers = [p for p, d in report["parameters"].items() if p.endswith("/router") and p.startswith("action_expert/")]
    assert routers and all(report["parameters"][p]["status"] == "resized" for p in routers)
    # The first checkpoint's routers: the new space's row is the trained space's row of the source.
    source_params = _source_params(source)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=1, save_interval_steps=1, read_only=True)
    try:
        saved = ckpt.saved_json(2, ["dataset_statistics", "policy"])
    finally:
        ckpt.close()
    assert set(saved["dataset_statistics"]) == {"vla_demo", "vla_demo_absolute"}
    (embodiment,) = saved["policy"]["embodiments"].values()
    assert embodiment["action_space"] == "eef_absolute"
    params, _ = _started(debug_config(*overrides), tmp_path / "again")
    new, old = ACTION_SPACE_IDS["eef_absolute"], ACTION_SPACE_IDS["eef_delta_xyz"]
    for path in routers:
        np.testing.assert_array_equal(params[path][new], source_params[path][old])
        np.testing.assert_array_equal(params[path][old], source_params[path][old])


def test_a_new_action_space_can_get_a_copy_of_the_trained_spaces_expert(source, tmp_path):
    overrides = (
        f"init.source={source}",
        "init.action_space_from=eef_delta_xyz",
        "init.action_space_expert=copy",
        "data.mixture=vla_demo_absolute",
        "data.cameras=('primary',)",
    )
    with pytest.raises(ConfigError, match=r"model\.expert\.moe\.as_experts' is 3; .* set it to 4"):
        _started(debug_config(*overrides), tmp_path / "three")
    with pytest.raises(ConfigError, match="needs the AS routers from the source"):
        _started(debug_config(*overrides, "model.expert.moe.as_experts=4", "init.reinit=router$"), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"model\.expert\.moe\.activation' is 'gelu'; .* set it to 'swish'"):
        _started(debug_config(f"init.source={source}", "model.expert.moe.activation=gelu"), tmp_path / "gelu")
    params, report = _started(debug_config(*overrides, "model.expert.moe.as_experts=4"), tmp_path / "four")
    source_params = _source_params(source)
    copies = report["action_spaces"]["expert_copies"]
    assert report["action_spaces"]["expert"] == "copy" and len(copies) == 2  # the debug plan: two AS blocks
    new, old = ACTION_SPACE_IDS["eef_absolute"], ACTION_SPACE_IDS["eef_delta_xyz"]
    for block, picked in copies.items():
        (original,) = picked.values()
        assert list(picked) == ["3"] and report["parameters"][block + "router"]["status"] == "resized"
        for name in ("gate", "up", "down"):
            path = f"{block}experts/{name}"
            assert report["parameters"][path]["status"] == "resized"
            np.testing.assert_array_equal(params[path][:3], source_params[path])
            np.testing.assert_array_equal(params[path][3], source_params[path][original])
        router, source_router = params[block + "router"], source_params[block + "router"]
        logits = router[new] + router[len(ACTION_SPACE_IDS) :].sum(axis=0)  # the new space, all 4 dims on
        assert np.argmax(logits) == 3 and router[new, 3] == source_router[old, original]
        np.testing.assert_array_equal(router[old, :3], source_router[old])


def test_a_release_is_a_source_and_bad_sources_are_config_errors(source, tmp_path):
    out = tmp_path / "release"
    release.export(source, out)
    params, report = _started(debug_config(f"init.source={out}"), tmp_path / "ft")
    expected = _source_params(source)
    for path, value in expected.items():
        np.testing.assert_array_equal(params[path], value, err_msg=path)
    assert report["step"] == 4
    with pytest.raises(ConfigError, match="init.source"):
        validation.validate_config(debug_config(f"init.source={tmp_path}/nothing"), device_count=8)
    with pytest.raises(ConfigError, match="init.action_space_from"):
        validation.validate_config(debug_config("init.action_space_from=joints"), device_count=8)
    with pytest.raises(ConfigError, match="init.step"):
        init_lib.open_source(out, step=3)


def test_an_8_device_fsdp_checkpoint_starts_a_1_device_run(source, tmp_path):
    script = f"""
import contextlib, json, pathlib
import jax, numpy as np
from vla_jax.config import load_config
from vla_jax.inference import bundle
from vla_jax.training import trainer
assert jax.device_count() == 1
flat = lambda tree: {{jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}}
config = load_config({str(REPO / "experiments" / "debug.py")!r}, ["init.source={source}"])
with contextlib.ExitStack() as resources:
    run = trainer.start(config, pathlib.Path({str(tmp_path / "one")!r}), resources, end_step=0)
    params = flat(run.state["params"])
expected = flat(bundle.load_checkpoint({str(source)!r}).params)
equal = set(params) == set(expected) and all(np.array_equal(params[p], v) for p, v in expected.items())
print(json.dumps({{"equal": equal, "count": len(expected)}}))
"""
    env = dict(os.environ, XLA_FLAGS="")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["equal"] and outcome["count"] > 50


def test_freeze_presets_leave_their_parameters_untouched(source, tmp_path):
    for preset, frozen_prefixes in (("vision", ("vit/", "image_proj/")), ("all_but_expert", None)):
        workdir = tmp_path / preset
        trainer.train(debug_config(f"init.source={source}", f"optimizer.freeze={preset}", "num_steps=2"), workdir)
        before, after = _source_params(source), _source_params(workdir)
        changed = {path: not np.array_equal(before[path], after[path]) for path in before}
        frozen = {
            path
            for path in before
            if (path.startswith(frozen_prefixes) if frozen_prefixes else not path.startswith("action_expert/"))
        }
        assert frozen and not any(changed[path] for path in frozen), preset
        assert any(changed[path] for path in set(before) - frozen), preset


def test_the_dry_run_counts_what_a_freeze_preset_leaves_trainable(demo_dir):
    everything = trainer.dry_run(debug_config())
    vision = trainer.dry_run(debug_config("optimizer.freeze=vision"))
    by_module = everything["params_by_module"]
    assert everything["params_trainable"] == everything["params_total"]
    assert vision["params_trainable"] == everything["params_total"] - by_module["vit"] - by_module["image_proj"]
    assert vision["optimizer_bytes_per_device"] < everything["optimizer_bytes_per_device"]
