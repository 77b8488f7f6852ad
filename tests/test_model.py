import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vla_jax.models import moe, presets
from vla_jax.models.action_expert import flow_time, noisy_chunks
from vla_jax.models.vla import build_model
from vla_jax.observation import Batch, IOShapes, example_batch

from .conftest import debug_config

IO = IOShapes(("primary", "wrist"), 64, 300, 24, 4, 4, 4)


def _model_config(mode: str, *overrides: str):
    return debug_config(f"model.mode={mode}", *overrides).model


def _batch(rng, batch_size=4, prefix=10, postfix=8) -> Batch:
    """Random inputs; prompts of ``prefix`` bidirectional ids, ``postfix`` causal ids with loss, then padding."""
    batch = example_batch(IO, batch_size, seed=int(rng.integers(1 << 30)))
    positions = np.broadcast_to(np.arange(IO.text_length)[None, :], (batch_size, IO.text_length))
    mask = positions < prefix + postfix
    ar_mask = mask & (positions >= prefix)
    return dataclasses.replace(
        _obs(batch, prompt_mask=mask.copy(), prompt_ar_mask=ar_mask.copy()), prompt_loss_mask=ar_mask.copy()
    )


def _obs(batch: Batch, *, images=None, image_masks=None, **fields) -> Batch:
    """``batch`` with observation fields replaced (``images`` / ``image_masks`` updated by stream)."""
    obs = batch.observation
    obs = dataclasses.replace(
        obs,
        images={**obs.images, **(images or {})},
        image_masks={**obs.image_masks, **(image_masks or {})},
        **fields,
    )
    return dataclasses.replace(batch, observation=obs)


def _tokens(batch: Batch) -> np.ndarray:
    return batch.observation.prompt_tokens.copy()


def _fit_losses(model, batch, steps: int, lr: float = 3e-3) -> list[float]:
    """Losses of ``steps`` Adam steps fitting ``model`` to one batch (fixed flow noise)."""
    graphdef, params = nnx.split(model)
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    rng = jax.random.key(0)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch, rng)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("name", presets.PRESETS)
def test_every_preset_builds_with_eval_shape_and_names_every_axis(name):
    config = presets.model_config(name)
    config.mode = "fast+flow"
    model = nnx.eval_shape(lambda: build_model(config, presets.default_io(name), 0))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert leaves
    for variable in leaves:
        axes = variable.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == variable.get_value().ndim, variable
    expert_axes = {a for v in leaves for a in v.get_metadata()["out_sharding"]}
    plan = tuple(config.expert.plan) or moe.default_plan(config.backbone.depth)
    assert ("expert" in expert_axes) == (set(plan) != {"dense"})  # pi0's expert is dense, the others have MoE


def test_masked_camera_and_prompt_padding_are_ignored():
    model = build_model(_model_config("fast"), IO, seed=0)
    batch = _batch(np.random.default_rng(1))
    batch = _obs(batch, image_masks={"wrist": np.zeros(4, bool)})

    @jax.jit
    def logits(b):
        o = b.observation
        return model.prompt_logits(o, o.prompt_tokens, o.prompt_mask, o.prompt_ar_mask)

    base = logits(batch)
    tokens = _tokens(batch)
    tokens[:, 18:] = 7  # padding
    perturbed = _obs(batch, images={"wrist": 255 - batch.observation.images["wrist"]}, prompt_tokens=tokens)
    np.testing.assert_allclose(logits(perturbed)[:, :18], base[:, :18], atol=1e-5)
    visible = _obs(perturbed, image_masks={"wrist": np.ones(4, bool)})
    assert not np.allclose(logits(visible)[:, :18], base[:, :18], atol=1e-3)


def test_fast_prefix_is_unaffected_by_the_postfix_and_postfix_is_causal():
    model = build_model(_model_config("fast"), IO, seed=0)
    batch = _batch(np.random.default_rng(5))

    @jax.jit
    def logits(b):
        o = b.observation
        return model.prompt_logits(o, o.prompt_tokens, o.prompt_mask, o.prompt_ar_mask)

    base = logits(batch)
    tokens = _tokens(batch)
    tokens[:, 14:] = 5  # postfix ids from the 5th on, and padding
    changed = logits(_obs(batch, prompt_tokens=tokens))
    np.testing.assert_allclose(changed[:, :14], base[:, :14], atol=1e-5)  # prefix and earlier postfix unchanged
    assert not np.allclose(changed[:, 14:18], base[:, 14:18], atol=1e-3)  # the changed steps themselves do change
    tokens = _tokens(batch)
    tokens[:, 2] = 7  # a prefix id: every position sees it
    assert not np.allclose(logits(_obs(batch, prompt_tokens=tokens))[:, :2], base[:, :2], atol=1e-4)


def _greedy_by_full_forward(model, batch, row: int, num_tokens: int, eos_id: int) -> list[int]:
    obs = batch.observation
    prefix = obs.prompt_mask[row] & ~obs.prompt_ar_mask[row]
    prefix_ids = obs.prompt_tokens[row][prefix].tolist()
    one = jax.tree.map(lambda v: v[row : row + 1], obs)
    logits_fn = jax.jit(model.prompt_logits)
    ids: list[int] = []
    for _ in range(num_tokens):
        sequence = np.array([prefix_ids + ids])
        n = sequence.shape[1]
        ar = np.arange(n)[None, :] >= len(prefix_ids)
        step_logits = np.asarray(logits_fn(one, jnp.asarray(sequence), np.ones((1, n), bool), ar))
        ids.append(int(step_logits[0, -1].argmax()))
        if ids[-1] == eos_id:
            break
    return ids


def test_kv_cache_greedy_decoding_equals_full_forward_decoding():
    model = build_model(_model_config("fast"), IO, seed=1)
    batch = _batch(np.random.default_rng(6))
    obs = batch.observation
    obs.prompt_mask[1, 7:10] = False  # a shorter prefix in one row (padding before the postfix slots)
    obs.prompt_ar_mask[1, 7:10] = False
    obs.image_masks["wrist"][2] = False  # a missing camera in another
    cached = np.asarray(jax.jit(lambda o: model.generate(o, 6, eos_id=1))(obs))
    uncached = np.asarray(jax.jit(lambda o: model.generate_uncached(o, 6, eos_id=1))(obs))
    np.testing.assert_array_equal(cached, uncached)
    for row in (1, 2):  # the rows with a gap: padding before the postfix, a missing camera
        ids = _greedy_by_full_forward(model, batch, row, 6, eos_id=1)
        assert cached[row, : len(ids)].tolist() == ids
        assert (cached[row, len(ids) :] == 1).all()
    # Early stop: make the first prediction EOS for every row by choosing it as the EOS id.
    first = cached[:, 0]
    if len(set(first.tolist())) == 1:
        stopped = np.asarray(jax.jit(lambda o: model.generate(o, 6, eos_id=int(first[0])))(obs))
        assert (stopped == first[0]).all()


def test_fast_loss_counts_only_the_postfix_and_decreases():
    model = build_model(_model_config("fast"), IO, seed=2)
    batch = _batch(np.random.default_rng(7))
    tokens = _tokens(batch)
    tokens[:, 18:] = 9  # padding ids carry no loss
    changed = _obs(batch, prompt_tokens=tokens)
    rng = jax.random.key(0)
    np.testing.assert_allclose(model.loss(changed, rng)[0], model.loss(batch, rng)[0], rtol=1e-6)
    losses = _fit_losses(model, batch, 40)
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_action_expert_never_sees_the_postfix_and_prefix_never_sees_the_expert():
    model = build_model(_model_config("fast+flow", "model.expert.plan=('as', 'hb')"), IO, seed=3)
    batch = _batch(np.random.default_rng(8))
    rng = jax.random.key(1)
    sample = jax.jit(lambda b: model.sample_actions(b.observation, rng))
    base = np.asarray(sample(batch))
    tokens = _tokens(batch)
    tokens[:, 10:] = 5
    np.testing.assert_allclose(np.asarray(sample(_obs(batch, prompt_tokens=tokens))), base, atol=1e-5)
    tokens = _tokens(batch)
    tokens[:, 3] = 5
    assert not np.allclose(np.asarray(sample(_obs(batch, prompt_tokens=tokens))), base, atol=1e-4)
    # The backbone's CE term does not depend on the action chunk the expert denoises.
    token_ce = jax.jit(lambda b: model.loss(b, rng)[1]["token_ce"])
    ce = lambda b: float(token_ce(b))  # noqa: E731
    assert ce(dataclasses.replace(batch, actions=batch.actions + 3.0)) == ce(batch)


@pytest.mark.parametrize("insulated", [True, False])
def test_knowledge_insulation_stops_expert_gradients_into_the_backbone(insulated):
    config = _model_config("flow", "model.expert.plan=('dense', 'hb')", f"model.flow.knowledge_insulation={insulated}")
    model = build_model(config, IO, seed=4)
    batch = _batch(np.random.default_rng(9))
    graphdef, params = nnx.split(model)
    grads = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p).loss(batch, jax.random.key(0))[0]))(params)
    backbone_norm = float(optax.tree.norm(grads["backbone"]))
    assert float(optax.tree.norm(grads["action_expert"])) > 0
    assert (backbone_norm == 0.0) == insulated, backbone_norm


def test_flow_matching_loss_decreases_and_padding_carries_no_loss():
    model = build_model(_model_config("flow", "model.expert.plan=('as', 'hb')"), IO, seed=5)
    batch = _batch(np.random.default_rng(10), batch_size=8)
    batch.observation.action_dim_mask[:, 3] = False
    batch.action_mask[:2, 2:] = False
    rng = jax.random.key(2)

    @jax.jit
    def velocity_error(b):
        noisy, time, target = noisy_chunks(rng, b.actions)
        _, kvs, prefix, prefix_length = model._prefix_context(b.observation)
        velocity, _ = model.action_expert(noisy, time, kvs, prefix, prefix_length, model._routing(b.observation))
        return velocity - target, model.loss(b, rng)[1]["flow_mse"]

    error, flow_mse = velocity_error(batch)
    squared, flow_mse = np.square(np.asarray(error)), float(flow_mse)
    weight = batch.action_mask[:, :, None] & batch.observation.action_dim_mask[:, None, :]
    np.testing.assert_allclose(flow_mse, squared[weight].mean(), rtol=1e-5)
    assert abs(flow_mse - squared.mean()) > 1e-3
    losses = _fit_losses(model, batch, 60)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses[::10]


def test_flow_time_is_a_true_beta_1_5_1_mapped_into_the_unit_interval():
    from scipy import stats

    t = np.asarray(flow_time(jax.random.key(0), 50_000))
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert stats.kstest((t - 0.001) / 0.999, stats.beta(1.5, 1.0).cdf).pvalue > 0.01
    assert stats.kstest(t, stats.uniform().cdf).pvalue < 1e-6  # not the uniform schedule


@pytest.mark.slow  # compiles several models: the slow tier
def test_remat_policies_and_bfloat16_compute_give_the_same_loss():
    batch = _batch(np.random.default_rng(11))
    rng = jax.random.key(3)

    def loss_and_grad_norm(*overrides):
        model = build_model(_model_config("fast+flow", "model.expert.plan=('as', 'hb')", *overrides), IO, seed=6)
        graphdef, params = nnx.split(model)
        fn = jax.jit(jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch, rng)[0]))
        loss, grads = fn(params)
        return float(loss), float(optax.tree.norm(grads))

    reference = loss_and_grad_norm()
    for policy in ("full", "dots"):
        np.testing.assert_allclose(loss_and_grad_norm(f"model.remat={policy}"), reference, rtol=1e-5)
    bf16 = loss_and_grad_norm("model.dtype=bfloat16")
    np.testing.assert_allclose(bf16, reference, rtol=0.05)
    assert bf16 != reference  # the compute really ran in bfloat16
