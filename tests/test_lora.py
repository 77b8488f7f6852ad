"""LoRA on the backbone: starts as the base model, trains only its pairs, folds into a plain model on export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import debug_config
from vla_jax.envs.demo import DemoEnv
from vla_jax.errors import ConfigError
from vla_jax.inference import bundle, release
from vla_jax.inference.policy import Policy
from vla_jax.models import lora as lora_lib
from vla_jax.models.vla import build_model
from vla_jax.observation import IOShapes, example_batch
from vla_jax.training import trainer
from vla_jax.training.optimizer import param_path

IO = IOShapes(
    cameras=("primary", "wrist"), image_size=64, text_vocab_size=300, text_length=24, state_dim=4, action_dim=4,
    action_horizon=4,
)  # fmt: skip


def _params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _logits(model_config, params, batch) -> np.ndarray:
    model = build_model(model_config, IO, 0)
    nnx.update(model, params)
    obs = jax.tree.map(jnp.asarray, batch.observation)
    return np.asarray(model.prompt_logits(obs, obs.prompt_tokens, obs.prompt_mask, obs.prompt_ar_mask))


def _with_lora(rank: int, **overrides):
    config = debug_config(f"model.lora.rank={rank}", *(f"model.lora.{k}={v}" for k, v in overrides.items()))
    return config.model


def test_lora_starts_as_the_base_model_and_merges_into_it():
    base_config, lora_config = debug_config().model, _with_lora(4, alpha=8.0)
    base = _params(build_model(base_config, IO, 0))
    adapted = _params(build_model(lora_config, IO, 0))
    flat = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(adapted)[0]}
    pairs = sorted(p for p in flat if lora_lib.is_lora_path(p))
    assert len(pairs) == 2 * 2 * 7  # 2 layers x (query, key, value, out, gate, up, down) x (a, b)
    assert all(p.startswith("backbone/layers/") for p in pairs)
    # Same base weights: with B = 0 the adapted model computes exactly what the base model does.
    adapted = jax.tree_util.tree_map_with_path(
        lambda p, x: x if lora_lib.is_lora_path(param_path(p)) else _at(base, p), adapted
    )
    batch = example_batch(IO, 2)
    np.testing.assert_array_equal(_logits(lora_config, adapted, batch), _logits(base_config, base, batch))
    # Trained pairs change the output; folding them in gives the same output from a model without LoRA.
    key = iter(jax.random.split(jax.random.key(1), len(pairs)))
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(next(key), x.shape) if param_path(p).endswith("_lora/b") else x, adapted
    )
    with_lora = _logits(lora_config, trained, batch)
    assert np.abs(with_lora - _logits(base_config, base, batch)).max() > 1e-2
    merged = lora_lib.merge(trained, lora_config.lora)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    np.testing.assert_allclose(_logits(base_config, merged, batch), with_lora, atol=2e-4, rtol=2e-4)


def _at(tree, path):
    for key in path:
        tree = tree[getattr(key, "key", getattr(key, "idx", key))]
    return tree


def test_rslora_scales_by_the_square_root_of_the_rank_and_targets_are_checked():
    assert lora_lib.scale(_with_lora(16, alpha=8.0).lora) == 0.5
    assert lora_lib.scale(_with_lora(16, alpha=8.0, rslora=True).lora) == 2.0
    attention_only = _params(build_model(_with_lora(2, targets=("attention",)), IO, 0))
    paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(attention_only)[0]]
    assert not any("gate_lora" in p for p in paths) and any("query_lora" in p for p in paths)
    assert lora_lib.frozen_base_pattern(_with_lora(0)) == ""
    from vla_jax import validation

    with pytest.raises(ConfigError, match="model.lora.targets"):
        validation.validate_config(debug_config("model.lora.targets=('ffn',)"))


def test_lora_on_the_small_preset_needs_under_5_percent_of_the_optimizer_state():
    from tests.conftest import REPO
    from vla_jax.config import load_config

    small = str(REPO / "experiments" / "pretrain_small.py")
    full = trainer.dry_run(load_config(small))
    adapted = trainer.dry_run(load_config(small, ["model.lora.rank=16", "optimizer.freeze=all_but_lora"]))
    assert adapted["optimizer_bytes_per_device"] <= 0.05 * full["optimizer_bytes_per_device"]
    assert 0 < adapted["params_trainable"] < 0.02 * full["params_trainable"]
    assert full["params_trainable"] == full["params_total"]


@pytest.mark.slow
def test_a_lora_run_trains_only_its_pairs_and_its_release_acts_the_same(demo_dir, tmp_path):
    source = tmp_path / "source"
    trainer.train(debug_config("num_steps=2", "eval_every=2", "checkpoint_every=2"), source)
    workdir = tmp_path / "lora"
    config = debug_config(
        f"init.source={source}", "model.lora.rank=4", "optimizer.freeze=backbone", "num_steps=3", "eval_every=3",
        "checkpoint_every=3",
    )  # fmt: skip
    trainer.train(config, workdir)
    before = bundle.load(source).params  # the parameters only: no policy compile
    after = bundle.load(workdir).params
    flat = lambda t: {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}  # noqa: E731
    before, after = flat(before), flat(after)
    frozen = {p for p in after if p.startswith(("vit/", "image_proj/", "backbone/")) or p == "embed"}
    frozen -= {p for p in frozen if lora_lib.is_lora_path(p)}
    assert frozen and all(np.array_equal(after[p], before[p]) for p in frozen)
    assert any(not np.array_equal(after[p], before[p]) for p in before if p not in frozen)  # the expert trains
    assert all(np.abs(after[p]).max() > 0 for p in after if p.endswith("_lora/b"))  # every B left zero
    out = tmp_path / "release"
    summary = release.export(workdir, out)
    assert summary["lora_merged"] and summary["num_params"] == sum(v.size for v in before.values())
    adapted, merged = Policy.load(workdir), Policy.load(out)
    assert merged.parts.config.model.lora.rank == 0
    env = DemoEnv()
    for seed in range(3):
        obs = env.reset(seed)
        for decoder in ("flow", "fast"):
            np.testing.assert_allclose(
                merged.infer(obs, decoder=decoder)["actions"],
                adapted.infer(obs, decoder=decoder)["actions"],
                atol=1e-4,
                err_msg=f"seed {seed}, {decoder}",
            )
