import json

import jax
import pytest
from flax import nnx

from vla_jax import cli, sharding
from vla_jax.errors import ConfigError
from vla_jax.models.vla import build_model
from vla_jax.training import summary, trainer

from .conftest import debug_config


def _run_json(capsys, *argv) -> dict:
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_paligemma_himoe_summary_matches_the_published_sizes(capsys):
    result = _run_json(capsys, "model", "summary", "--preset", "paligemma_himoe", "--mesh", "fsdp=8", "--json")
    by_module = result["params_by_module"]
    action = by_module["action_expert"]
    paligemma = result["params_total"] - action
    assert abs(paligemma / 2.92e9 - 1) <= 0.02, paligemma
    assert abs(action / 1.15e9 - 1) <= 0.05, action
    assert abs(result["active_params_by_module"]["action_expert"] / 0.34e9 - 1) <= 0.05
    assert result["params_active_per_token"] == paligemma + result["active_params_by_module"]["action_expert"]
    assert result["replicated_fraction"] <= 0.02
    assert result["mesh"]["fsdp"] == 8
    # fp32 params + AdamW's two moments, split 8 ways (plus what stays replicated).
    full = 3 * 4 * result["params_total"]
    assert full / 8 <= result["bytes_per_device"] <= full / 8 * (1 + 8 * result["replicated_fraction"]) + 2**20
    assert result["flops_per_example_train"] == 3 * result["flops_per_example_forward"]


def test_summary_counts_equal_the_built_model(demo_dir):
    config = debug_config("model.mode=fast+flow", "model.expert.plan=('as', 'hb')")
    io = trainer.io_shapes(config)
    mesh = sharding.abstract_mesh({"fsdp": 8}, 8)
    result = summary.summarize(config.model, io, mesh, fsdp_min_bytes=0)
    model = build_model(config.model, io, 0)
    params = nnx.state(model, nnx.Param)
    assert result["params_total"] == sum(x.size for x in jax.tree.leaves(params))
    moe = config.model.expert.moe
    hb_experts = params["action_expert"]["decoder"]["layers"][1]["ffn"]["experts"]
    as_experts = params["action_expert"]["decoder"]["layers"][0]["ffn"]["experts"]
    hb_size = sum(x.size for x in jax.tree.leaves(hb_experts))
    as_size = sum(x.size for x in jax.tree.leaves(as_experts))
    inactive = (
        hb_size * (moe.hb_experts - moe.hb_top_k) // moe.hb_experts + as_size * (moe.as_experts - 1) // moe.as_experts
    )
    assert result["params_active_per_token"] == result["params_total"] - inactive
    # With fsdp_min_bytes 0 every divisible tensor is split 8 ways: far less than the whole state per device.
    whole = 3 * 4 * result["params_total"]
    assert result["bytes_per_device"] < 0.5 * whole
    flops = result["flops_forward_by_part"]
    assert flops["action_expert"] > 0 and flops["backbone"] > flops["action_expert"]


def test_summary_from_a_config_file_needs_no_device_of_the_mesh(demo_dir, capsys):
    result = _run_json(capsys, "model", "summary", "--config", "experiments/demo.py", "--mesh", "data=64", "--json")
    assert result["mesh"]["data"] == 64 and result["replicated_fraction"] == 1.0  # data parallel: all replicated
    assert result["mode"] == "fast+flow" and result["params_by_module"]["action_expert"] > 0


def test_summary_rejects_bad_mesh_and_preset(capsys):
    assert cli.main(["model", "summary", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert cli.main(["model", "summary", "--preset", "tiny", "--mesh", "fsdp"]) == 2
    assert "axis=size" in capsys.readouterr().err


def test_too_much_replication_on_an_fsdp_mesh_is_a_config_error():
    config = debug_config("mesh.data=1", "mesh.fsdp=8", "sharding.max_replicated_fraction=0.02")
    with pytest.raises(ConfigError, match="max_replicated_fraction"):
        trainer.check_replicated_fraction(config, sharding.abstract_mesh({"fsdp": 8}, 8), 0.5)
    trainer.check_replicated_fraction(config, sharding.abstract_mesh({"fsdp": 8}, 8), 0.01)
    trainer.check_replicated_fraction(config, sharding.abstract_mesh({"data": 8}, 8), 1.0)  # no fsdp: no check
