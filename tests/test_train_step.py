"""The jitted train step: gradient accumulation, freezing, EMA, per-dataset losses, schedules."""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from vla_jax import sharding
from vla_jax.data import loader
from vla_jax.training import optimizer, state, step, trainer

from .conftest import debug_config


@pytest.fixture(scope="module")
def demo_batch(demo_dir, tmp_path_factory):
    """One real demo batch of 16 (fast-mode prompts), with its config (full learning rate from step 0)."""
    config = debug_config("optimizer.warmup_steps=0", "model.mode=fast")  # no flow noise: comparable losses
    run = trainer.setup(config)
    prompt = trainer.prepare_prompt_tokenizer(config, run.data, tmp_path_factory.mktemp("tok"))
    batch = next(loader.train_batches(run.data, config.data, global_batch_size=16, seed=0, prompt=prompt))
    return config, batch


def _one_step(config, batch, tx=None, **step_kwargs):
    run = trainer.setup(config)
    layout, tx = run.layout, tx or run.optimizer
    if tx is not run.optimizer:
        with sharding.logical_rules(run.rules):
            layout = state.make_layout(run.model_fn, tx, run.mesh, run.rules, config.sharding.fsdp_min_bytes)
    with jax.set_mesh(run.mesh), sharding.logical_rules(run.rules):
        train_state = state.init_state(run.model_fn, tx, layout)
        before = jax.tree.map(np.asarray, jax.device_get(train_state))
        train_step = step.make_train_step(layout, tx, run.batch_sharding, config.seed, **step_kwargs)
        new_state, metrics = train_step(train_state, loader.to_global_batch(batch, run.batch_sharding))
        return before, jax.tree.map(np.asarray, jax.device_get(new_state)), jax.device_get(metrics)


@pytest.mark.slow  # six compiled steps (about 2.5 minutes on 2 cores)
def test_gradient_accumulation_matches_the_full_batch(demo_batch):
    config, batch = demo_batch
    sgd = optax.sgd(1.0)  # params_after = params - grads: the step's gradient, exactly
    before, full, full_metrics = _one_step(config, batch, sgd)
    _, accumulated, accumulated_metrics = _one_step(config, batch, sgd, grad_accum_steps=4)
    grads_full = jax.tree.map(np.subtract, before["params"], full["params"])
    grads_accumulated = jax.tree.map(np.subtract, before["params"], accumulated["params"])
    # The loss is a token mean per micro-batch, so the accumulated gradient is the mean of the micro-batches' own
    # gradients (micro-batch i: rows i, i+4, ...), not the full batch's token mean: computed here one by one, each
    # micro-batch tiled to the full batch's 16 rows (the same token mean) so it shards like the batch.
    micro_grads = []
    for i in range(4):
        tiled = jax.tree.map(lambda x, i=i: np.concatenate([np.asarray(x)[i::4]] * 4), batch)
        start, after, _ = _one_step(config, tiled, sgd)
        micro_grads.append(jax.tree.map(np.subtract, start["params"], after["params"]))
    expected = jax.tree.map(lambda *g: np.mean(g, axis=0), *micro_grads)
    difference = optax.tree.norm(jax.tree.map(np.subtract, grads_accumulated, expected))
    assert float(difference) < 1e-3 * float(optax.tree.norm(expected))
    # ... and close to the full batch's, which weights micro-batches by their token counts.
    np.testing.assert_allclose(accumulated_metrics["loss"], full_metrics["loss"], rtol=2e-2)
    full_difference = optax.tree.norm(jax.tree.map(np.subtract, grads_accumulated, grads_full))
    assert float(full_difference) < 0.15 * float(optax.tree.norm(grads_full))
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        _one_step(config, batch, grad_accum_steps=3)


def test_frozen_parameters_stay_bit_equal_and_have_no_optimizer_state(demo_batch):
    config, batch = demo_batch
    frozen = debug_config("optimizer.warmup_steps=0", "model.mode=fast", "optimizer.freeze=^(vit|backbone/layers/0)/")
    before, after, _ = _one_step(frozen, batch)
    flat_before = dict(jax.tree_util.tree_flatten_with_path(before["params"])[0])
    flat_after = dict(jax.tree_util.tree_flatten_with_path(after["params"])[0])
    changed = {optimizer.param_path(p): not np.array_equal(flat_before[p], flat_after[p]) for p in flat_before}
    frozen_paths = [p for p in changed if p.startswith("vit/") or p.startswith("backbone/layers/0/")]
    assert frozen_paths and not any(changed[p] for p in frozen_paths)
    assert any(changed[p] for p in changed if p.startswith("backbone/layers/1/"))
    # AdamW moments only for the trained parameters.
    trained = sum(x.size for p, x in flat_before.items() if optimizer.param_path(p) not in frozen_paths)
    opt_floats = sum(x.size for x in jax.tree.leaves(after["opt_state"]) if x.ndim > 0)
    assert opt_floats == 2 * trained


def test_ema_follows_the_params(demo_batch):
    config, batch = demo_batch
    ema_config = debug_config("optimizer.warmup_steps=0", "model.mode=fast", "ema_decay=0.75")
    before, after, _ = _one_step(ema_config, batch, ema_decay=0.75)
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, before["ema"], after["params"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after["ema"], expected)
    jax.tree.map(np.testing.assert_array_equal, before["ema"], before["params"])  # starts at the params


def test_loss_by_dataset_averages_each_datasets_examples(demo_batch):
    config, batch = demo_batch
    two = dataclasses.replace(batch, dataset_index=(np.arange(16) % 2).astype(batch.dataset_index.dtype))
    _, _, metrics = _one_step(config, two, num_datasets=3)
    by_dataset = metrics["loss_by_dataset"]
    assert np.isfinite(by_dataset[:2]).all() and np.isnan(by_dataset[2])  # no example of dataset 2
    assert abs(by_dataset[0] - by_dataset[1]) > 0  # different examples, different means


@pytest.mark.parametrize("kind", optimizer.SCHEDULES)
def test_schedules(kind):
    config = optimizer.optimizer_config(schedule=kind, peak_lr=1.0, end_lr=0.1, warmup_steps=10)
    lr = optimizer.learning_rate_schedule(config, 1000)
    np.testing.assert_allclose(float(lr(5)), 0.5, rtol=1e-6)  # linear warmup
    np.testing.assert_allclose(float(lr(10)), 1.0, rtol=1e-6)
    late = float(lr(1000))
    expected = {"cosine": 0.1, "rsqrt": np.sqrt(10 / 1000), "constant": 1.0}[kind]
    np.testing.assert_allclose(late, expected, rtol=1e-5)


def test_a_non_finite_step_keeps_the_previous_state(demo_batch):
    config, batch = demo_batch
    before, after, metrics = _one_step(config, batch, optax.sgd(float("nan")))
    assert not metrics["finite"] and not np.isfinite(metrics["update_norm"]) and np.isfinite(metrics["loss"])
    jax.tree.map(np.testing.assert_array_equal, after["params"], before["params"])
    assert after["step"] == before["step"] + 1
    _, good, good_metrics = _one_step(config, batch)
    assert good_metrics["finite"] and not np.array_equal(good["params"]["embed"], before["params"]["embed"])


def test_a_freeze_regex_that_matches_nothing_is_refused():
    from vla_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'optimizer.freeze' is '\^vitt/', which matches no parameter"):
        trainer.setup(debug_config("optimizer.freeze=^vitt/"))


def test_bad_optimizer_settings_are_config_errors():
    from vla_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer.schedule"):
        optimizer.learning_rate_schedule(optimizer.optimizer_config(schedule="linear"), 10)
    with pytest.raises(ConfigError, match="optimizer.freeze"):
        optimizer.make_optimizer(optimizer.optimizer_config(freeze="(vit"), 10)


@pytest.mark.slow  # compiles several models: the slow tier
def test_ragged_dispatch_trains_like_capacity_on_an_fsdp_mesh(demo_batch):
    _, batch = demo_batch
    sgd = optax.sgd(1.0)  # params_after = params - grads
    common = (
        "optimizer.warmup_steps=0",
        "mesh.data=1",
        "mesh.fsdp=8",
        "sharding.fsdp_min_bytes=0",
        'model.expert.plan=("as", "hb")',
        "model.expert.moe.as_capacity_factor=8.0",  # room for every assignment: capacity drops nothing
        "model.expert.moe.hb_capacity_factor=8.0",
    )
    runs = {}
    for dispatch in ("capacity", "ragged"):
        kinds = (f"model.expert.moe.as_dispatch={dispatch}", f"model.expert.moe.hb_dispatch={dispatch}")
        runs[dispatch] = _one_step(debug_config(*common, *kinds), batch, sgd)
    (before, _, capacity_metrics), (_, _, ragged_metrics) = runs["capacity"], runs["ragged"]
    assert capacity_metrics["moe_hb_dropped_fraction"] == 0.0 and ragged_metrics["moe_as_dropped_fraction"] == 0.0
    np.testing.assert_allclose(ragged_metrics["loss"], capacity_metrics["loss"], rtol=1e-5)
    grads = {k: jax.tree.map(np.subtract, before["params"], run[1]["params"]) for k, run in runs.items()}
    assert float(optax.tree.norm(grads["ragged"]["action_expert"])) > 0
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), grads["ragged"], grads["capacity"]
    )


def test_flow_mode_fits_no_action_tokenizer(demo_dir, tmp_path, monkeypatch):
    from vla_jax.tokenizers import build

    config = debug_config("model.mode=flow")
    run = trainer.setup(config)
    fitted = []
    monkeypatch.setattr(build, "fit_action_tokenizer", lambda *args, **kwargs: fitted.append(args))
    prompt = trainer.prepare_prompt_tokenizer(config, run.data, tmp_path)
    assert not fitted and prompt.actions is None
    assert sorted(p.name for p in (tmp_path / trainer.TOKENIZER_DIR).iterdir()) == [build.TEXT_FILE]
    assert run.io.text_vocab_size == prompt.vocab_size == config.tokenizer.text_vocab_size  # no action ids reserved
    batch = next(loader.train_batches(run.data, config.data, global_batch_size=16, seed=0, prompt=prompt))
    assert not batch.observation.prompt_ar_mask.any() and not batch.prompt_loss_mask.any()  # prefixes only
