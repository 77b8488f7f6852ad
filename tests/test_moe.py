import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vla_jax import sharding
from vla_jax.models import moe
from vla_jax.models.presets import PRESETS, model_config


def _moe_config(dispatch: str, capacity: float = 1.25):
    config = model_config("tiny").expert
    config.moe.as_dispatch = dispatch
    config.moe.hb_dispatch = dispatch
    config.moe.as_capacity_factor = capacity
    config.moe.hb_capacity_factor = capacity
    return config


def _routing(rng, batch=8, tokens=5, action_dim=6):
    return {
        "token_weight": jnp.ones((batch, tokens), jnp.float32),
        "action_space": jnp.asarray(rng.integers(0, 3, batch), jnp.int32),
        "action_dim_mask": jnp.asarray(rng.random((batch, action_dim)) < 0.8),
    }


def _block(kind: str, dispatch: str, capacity: float):
    cfg = _moe_config(dispatch, capacity)
    with nnx.use_eager_sharding(False):
        return moe.build_ffn(kind, 64, cfg, num_spaces=7, action_dim=6, rngs=nnx.Rngs(params=0), dtype=jnp.float32)


def test_default_plan_is_the_papers_at_18_layers():
    plan = moe.default_plan(18)
    assert [i for i, k in enumerate(plan) if k == "as"] == [0, 1, 16, 17]
    assert [i for i, k in enumerate(plan) if k == "hb"] == [2, 3, 4, 5, 12, 13, 14, 15]
    assert [i for i, k in enumerate(plan) if k == "dense"] == list(range(6, 12))
    for depth in (2, 4, 6, 12):
        assert len(moe.default_plan(depth)) == depth and moe.default_plan(depth)[0] == "as"


@pytest.mark.parametrize("kind", ["hb", "as"])
def test_dispatches_agree_when_nothing_is_dropped(kind):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 5, 64)), jnp.float32)
    routing = _routing(rng)
    dense = _block(kind, "dense", 1.0)
    scatter = _block(kind, "capacity", 8.0)  # capacity >= every assignment: nothing can drop
    nnx.update(scatter, nnx.state(dense))
    ragged = _block(kind, "ragged", 0.25)  # the capacity factor does not apply: nothing drops
    nnx.update(ragged, nnx.state(dense))
    y_dense, aux_dense = dense(x, routing)
    mesh = sharding.make_mesh({"data": 8})
    for block in (scatter, ragged):
        y, aux = block(x, routing)
        np.testing.assert_allclose(np.asarray(y), np.asarray(y_dense), rtol=2e-5, atol=2e-5)
        assert float(aux[f"{kind}_dropped_fraction"]) == 0.0
        np.testing.assert_allclose(float(aux["loss"]), float(aux_dense["loss"]), rtol=1e-6)
        # Grouped per device on an 8-device batch mesh: still the same result.
        with jax.set_mesh(mesh):
            y_grouped, _ = jax.jit(lambda x, r, block=block: block(x, r))(x, routing)
        np.testing.assert_allclose(np.asarray(y_grouped), np.asarray(y_dense), rtol=2e-5, atol=2e-5)
    # A tight capacity drops assignments and says so.
    tight = _block(kind, "capacity", 0.25)
    nnx.update(tight, nnx.state(dense))
    y_tight, aux_tight = tight(x, routing)
    assert float(aux_tight[f"{kind}_dropped_fraction"]) > 0.1
    assert not np.allclose(np.asarray(y_tight), np.asarray(y_dense), atol=1e-3)


@pytest.mark.slow  # compiles several models: the slow tier
def test_ragged_dispatch_matches_dense_in_value_and_gradient_with_padding():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 6, 64)), jnp.float32)
    routing = _routing(rng, batch=8, tokens=6)
    routing["token_weight"] = routing["token_weight"].at[:, 4:].set(0.0)
    mesh = sharding.make_mesh({"data": 8})
    for kind in ("hb", "as"):
        dense, ragged = _block(kind, "dense", 1.0), _block(kind, "ragged", 1.0)
        nnx.update(ragged, nnx.state(dense))

        def loss(block, x):
            y, aux = block(x, routing)
            return jnp.sum(jnp.square(y[:, :4])) + aux["loss"]

        grad = nnx.grad(loss, argnums=(0, 1))
        want_params, want_x = grad(dense, x)
        with jax.set_mesh(mesh):  # one shard_map group per device
            sharded = jax.jit(grad)(ragged, x)
        for got_params, got_x in (grad(ragged, x), sharded):
            np.testing.assert_allclose(np.asarray(got_x), np.asarray(want_x), rtol=1e-4, atol=1e-5)
            for (path, want), (_, got) in zip(nnx.to_flat_state(want_params), nnx.to_flat_state(got_params)):
                np.testing.assert_allclose(
                    np.asarray(got[...]), np.asarray(want[...]), rtol=1e-4, atol=1e-5, err_msg=path
                )
        np.testing.assert_allclose(float(loss(ragged, x)), float(loss(dense, x)), rtol=1e-5)
        # Padding tokens are routed nowhere: only the shared expert (HB) gives them an output.
        y, _ = ragged(x, routing)
        shared = ragged.shared(x)[:, 4:] if kind == "hb" else jnp.zeros_like(y[:, 4:])
        np.testing.assert_array_equal(np.asarray(y[:, 4:]), np.asarray(shared))


def test_unknown_dispatch_is_named_in_the_error():
    from vla_jax.models.action_expert import ActionExpert

    config = model_config("tiny")
    config.expert.moe.hb_dispatch = "sparse"
    error = pytest.raises(ValueError, match=r"model\.expert\.moe\.hb_dispatch.*'sparse'")
    with error, nnx.use_eager_sharding(False):
        ActionExpert(config.expert, config.backbone, action_dim=6, num_action_spaces=7, rngs=nnx.Rngs(params=0))


def test_capacity_dispatch_drops_padding_tokens_without_using_capacity():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 6, 64)), jnp.float32)
    routing = _routing(rng, batch=4, tokens=6)
    routing["token_weight"] = routing["token_weight"].at[:, 3:].set(0.0)
    dense, scatter = _block("hb", "dense", 1.0), _block("hb", "capacity", 2.0)
    nnx.update(scatter, nnx.state(dense))
    y_dense, _ = dense(x, routing)
    y_scatter, aux = scatter(x, routing)
    # Half the tokens are padding: a capacity of 2x the (whole-group) average leaves room for every real one.
    assert float(aux["hb_dropped_fraction"]) == 0.0
    np.testing.assert_allclose(np.asarray(y_scatter[:, :3]), np.asarray(y_dense[:, :3]), rtol=2e-5, atol=2e-5)


def test_as_routing_depends_only_on_the_action_space():
    block = _block("as", "dense", 1.0)
    rng = np.random.default_rng(2)
    routing = _routing(rng, batch=6)
    routing["action_space"] = jnp.asarray([0, 0, 1, 1, 2, 2], jnp.int32)
    routing["action_dim_mask"] = jnp.asarray(np.repeat(rng.random((3, 6)) < 0.7, 2, axis=0))
    probs = np.asarray(block.route(routing))
    np.testing.assert_array_equal(probs[0::2], probs[1::2])  # same space and mask: same routing
    # Tokens do not enter the router: the outputs of two samples of one space differ only through their tokens.
    x = jnp.asarray(rng.normal(size=(6, 3, 64)), jnp.float32)
    same_tokens = x.at[1].set(x[0])
    y, _ = block(same_tokens, routing)
    np.testing.assert_allclose(np.asarray(y[1]), np.asarray(y[0]), rtol=1e-6)
    # Every token of a sample goes to the same (one) expert.
    ids = np.argmax(probs, axis=-1)
    weight = probs[np.arange(6), ids]
    for row in range(6):
        stacked = jnp.broadcast_to(same_tokens[row][None], (3, 3, 64))
        per_expert = np.asarray(block.experts(stacked))
        np.testing.assert_allclose(np.asarray(y[row]), weight[row] * per_expert[ids[row]], rtol=1e-5, atol=1e-6)


def test_as_regularizer_prefers_routing_that_separates_action_spaces():
    spaces = jnp.asarray([0, 0, 1, 1, 2, 2])
    separated = jax.nn.one_hot(jnp.asarray([0, 0, 1, 1, 2, 2]), 3) * 0.9 + 0.1 / 3
    mixed = jax.nn.one_hot(jnp.asarray([0, 1, 2, 0, 1, 2]), 3) * 0.9 + 0.1 / 3
    assert float(moe.as_regularizer(separated, spaces, 0.1)) < float(moe.as_regularizer(mixed, spaces, 0.1)) - 1.0


def test_load_balancing_loss_is_minimal_for_uniform_routing():
    num, tokens, k = 8, 64, 2
    valid = jnp.ones((1, tokens), bool)
    uniform_probs = jnp.full((1, tokens, num), 1.0 / num)
    balanced_ids = jnp.asarray(np.arange(tokens * k).reshape(1, tokens, k) % num)
    uniform, load = moe.load_balancing(uniform_probs, balanced_ids, valid)
    np.testing.assert_allclose(float(uniform), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(load), np.full(num, 1.0 / num), rtol=1e-6)
    rng = np.random.default_rng(3)
    for _ in range(20):  # every token routed by one non-uniform distribution: E/k * (top-k mass) > 1
        probs = jnp.broadcast_to(jax.nn.softmax(jnp.asarray(rng.normal(size=num))), (1, tokens, num))
        ids = jax.lax.top_k(probs, k)[1]
        assert float(moe.load_balancing(probs, ids, valid)[0]) > float(uniform) + 1e-3
    # Per-token routing that favours some experts costs more than balanced routing.
    bias = np.linspace(0.0, 3.0, num)
    probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(1, tokens, num)) + bias), axis=-1)
    assert float(moe.load_balancing(probs, jax.lax.top_k(probs, k)[1], valid)[0]) > 1.5
    # Padding tokens do not count.
    skewed_padding = balanced_ids.at[:, tokens // 2 :].set(0)
    half = valid.at[:, tokens // 2 :].set(False)
    np.testing.assert_allclose(float(moe.load_balancing(uniform_probs, skewed_padding, half)[0]), 1.0, rtol=1e-6)


def test_preset_as_dispatch_keeps_every_token_of_a_single_action_space_batch():
    # One embodiment (e.g. Bridge V2): AS routing sends every sample to the same expert.
    rng = np.random.default_rng(5)
    routing = _routing(rng, batch=12, tokens=5)
    routing["action_space"] = jnp.zeros(12, jnp.int32)
    routing["action_dim_mask"] = jnp.ones((12, 6), bool)
    x = jnp.asarray(rng.normal(size=(12, 5, 64)), jnp.float32)
    cfg = model_config("small").expert
    assert {model_config(name).expert.moe.as_dispatch for name in PRESETS} == {"ragged"}
    with nnx.use_eager_sharding(False):
        preset = moe.build_ffn("as", 64, cfg, num_spaces=7, action_dim=6, rngs=nnx.Rngs(params=0), dtype=jnp.float32)
    reference = _block("as", "dense", 1.0)
    capacity = _block("as", "capacity", cfg.moe.as_capacity_factor)
    nnx.update(reference, nnx.state(preset))
    nnx.update(capacity, nnx.state(preset))
    y, aux = preset(x, routing)
    assert float(aux["as_dropped_fraction"]) == 0.0
    np.testing.assert_allclose(np.asarray(y), np.asarray(reference(x, routing)[0]), rtol=2e-5, atol=2e-5)
    # A capacity of 2x the even share holds 2/3 of the batch: the rest would be dropped.
    _, capacity_aux = capacity(x, routing)
    np.testing.assert_allclose(float(capacity_aux["as_dropped_fraction"]), 1 - 40 / 60, atol=1e-6)


def test_ranked_buffers_match_a_per_row_reference_for_any_group_sizes():
    from vla_jax.models import grouped

    rng = np.random.default_rng(6)
    rows, width, hidden, num = 23, 8, 12, 3
    x = jnp.asarray(rng.normal(size=(rows, width)), jnp.float32)
    weights = tuple(
        jnp.asarray(rng.normal(size=s) / 3, jnp.float32)
        for s in [(num, width, hidden), (num, width, hidden), (num, hidden, width)]
    )
    cotangent = jnp.asarray(rng.normal(size=(rows, width)), jnp.float32)

    def reference(x, weights, sizes):
        ids = np.repeat(np.arange(num + 1), [*sizes, rows - sum(sizes)])  # num: padding rows
        per_expert = [moe.gated_mlp("swish", [w[e] for w in weights], x, jnp.dot) for e in range(num)]
        return sum(jnp.where(jnp.asarray(ids == e)[:, None], per_expert[e], 0.0) for e in range(num))

    # Groups of every shape: one expert takes all, an empty expert, uniform, padding rows at the end.
    for sizes in ([23, 0, 0], [0, 23, 0], [2, 1, 20], [8, 8, 7], [5, 0, 3], [0, 0, 0]):
        group_sizes = jnp.asarray(sizes, jnp.int32)

        def ranked(x, w, group_sizes=group_sizes):
            return grouped.gated_mlp(x, group_sizes, w, "swish")

        def ranked_loss(x, w, ranked=ranked):
            return jnp.sum(ranked(x, w) * cotangent)

        def reference_loss(x, w, sizes=sizes):
            return jnp.sum(reference(x, w, sizes) * cotangent)

        want = reference(x, weights, sizes)
        np.testing.assert_allclose(np.asarray(jax.jit(ranked)(x, weights)), np.asarray(want), rtol=1e-5, atol=1e-5)
        got_grads = jax.grad(ranked_loss, argnums=(0, 1))(x, weights)
        want_grads = jax.grad(reference_loss, argnums=(0, 1))(x, weights)
        for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5, err_msg=str(sizes))
