"""The per-parameter plan of a fine-tune's initialization (training.init), on parameter listings alone."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from vla_jax.errors import ConfigError
from vla_jax.models import moe
from vla_jax.models.presets import model_config
from vla_jax.training import init as init_lib

F32 = "float32"
SOURCE = {
    "vit/patch_embed/kernel": ((768, 32), F32),
    "backbone/layers/0/query": ((32, 2, 16), F32),
    "action_expert/action_in/kernel": ((4, 32), F32),
    "action_expert/action_out/kernel": ((32, 4), F32),
    "action_expert/decoder/layers/0/ffn/router": ((7 + 4, 3), F32),
    "action_expert/decoder/layers/0/ffn/experts/gate": ((3, 32, 64), F32),
    "action_expert/decoder/layers/1/ffn/router": ((32, 4), F32),  # an HB router: it never sees the action space
    "old_head/kernel": ((32, 2), F32),
}
AS_BLOCKS = ("action_expert/decoder/layers/0/ffn/",)


def _init(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"load": ".*", "reinit": "", "action_space_expert": "share", **fields})


def _target(action_dim: int) -> dict:
    target = {k: v for k, v in SOURCE.items() if not k.startswith("old_head")}
    target["action_expert/action_in/kernel"] = ((action_dim, 32), F32)
    target["action_expert/action_out/kernel"] = ((32, action_dim), F32)
    target["action_expert/decoder/layers/0/ffn/router"] = ((7 + action_dim, 3), F32)
    target["backbone/layers/0/query_lora/a"] = ((32, 4), F32)
    return target


def test_a_new_action_dim_reinitializes_the_projections_and_resizes_the_routers():
    decisions = init_lib.plan(_init(), _target(7), SOURCE, action_dim_changed=True, as_blocks=AS_BLOCKS)
    status = {path: d["status"] for path, d in decisions.items()}
    assert status == {
        "vit/patch_embed/kernel": "loaded",
        "backbone/layers/0/query": "loaded",
        "action_expert/action_in/kernel": "reinitialized",
        "action_expert/action_out/kernel": "reinitialized",
        "action_expert/decoder/layers/0/ffn/router": "resized",
        "action_expert/decoder/layers/0/ffn/experts/gate": "loaded",
        "action_expert/decoder/layers/1/ffn/router": "loaded",
        "backbone/layers/0/query_lora/a": "new",
    }
    assert "action dim" in decisions["action_expert/action_in/kernel"]["why"]


def test_the_same_shapes_without_the_rule_are_a_named_error_unless_reinit_covers_them():
    with pytest.raises(ConfigError, match=r"action_expert/action_in/kernel is \(4, 32\) in the source, \(7, 32\) here"):
        init_lib.plan(_init(), _target(7), SOURCE, action_dim_changed=False, as_blocks=AS_BLOCKS)
    decisions = init_lib.plan(
        _init(reinit="^action_expert/"), _target(7), SOURCE, action_dim_changed=False, as_blocks=AS_BLOCKS
    )
    assert {p for p, d in decisions.items() if d["status"] == "reinitialized"} == {
        p for p in _target(7) if p.startswith("action_expert/")
    }
    decisions = init_lib.plan(_init(load="^vit/"), _target(4), SOURCE, action_dim_changed=False, as_blocks=AS_BLOCKS)
    assert [p for p, d in decisions.items() if d["status"] == "loaded"] == ["vit/patch_embed/kernel"]


def test_router_rows_keep_what_fits_and_copy_a_trained_space():
    old = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)  # 7 spaces + 4 dims
    fresh = -np.ones((7 + 6, 3), np.float32)  # 7 spaces + 6 dims
    rows = init_lib._router_rows(fresh, old, copies={1: 6})
    np.testing.assert_array_equal(rows[:11], np.where(np.arange(11)[:, None] == 1, old[6], old))
    np.testing.assert_array_equal(rows[11:], fresh[11:])  # the two new dims start fresh
    same = init_lib._router_rows(fresh[:11], old, copies={})
    np.testing.assert_array_equal(same, old)


def test_new_experts_grow_the_as_stack_and_a_wrong_count_is_a_named_error():
    target = dict(_target(4))
    target["action_expert/decoder/layers/0/ffn/router"] = ((7 + 4, 4), F32)
    target["action_expert/decoder/layers/0/ffn/experts/gate"] = ((4, 32, 64), F32)
    decisions = init_lib.plan(_init(), target, SOURCE, action_dim_changed=False, as_blocks=AS_BLOCKS, new_experts=1)
    status = {path: d["status"] for path, d in decisions.items()}
    assert status["action_expert/decoder/layers/0/ffn/router"] == "resized"
    assert status["action_expert/decoder/layers/0/ffn/experts/gate"] == "resized"
    assert status["action_expert/decoder/layers/1/ffn/router"] == "loaded"
    copy = _init(action_space_expert="copy")
    assert init_lib._check_expert_count(copy, target, SOURCE, AS_BLOCKS, ["eef_absolute"]) == 1
    with pytest.raises(ConfigError, match=r"model.expert.moe.as_experts' is 4; .* set it to 5"):
        init_lib._check_expert_count(copy, target, SOURCE, AS_BLOCKS, ["eef_absolute", "joints"])
    with pytest.raises(ConfigError, match=r"model.expert.moe.as_experts' is 4; the source has 3"):
        init_lib._check_expert_count(_init(action_space_expert="share"), target, SOURCE, AS_BLOCKS, ["joints"])


def _as_block(num_experts: int, action_dim: int):
    config = model_config("tiny").expert
    config.moe.as_experts = num_experts
    config.moe.as_dispatch = "dense"
    with nnx.use_eager_sharding(False):
        return moe.build_ffn(
            "as", 16, config, num_spaces=7, action_dim=action_dim, rngs=nnx.Rngs(params=num_experts), dtype=jnp.float32
        )


def _routing(space: int, action_dim: int, width: int, batch: int = 3):
    return {
        "token_weight": jnp.ones((batch, 2), jnp.float32),
        "action_space": jnp.full((batch,), space, jnp.int32),
        "action_dim_mask": jnp.broadcast_to(jnp.arange(width) < action_dim, (batch, width)),
    }


@pytest.mark.parametrize("new_dim", [4, 6])
def test_a_copied_expert_serves_the_new_space_as_the_shared_one_would_and_leaves_the_others(new_dim):
    """Growing a trained AS block by a copy: every space's output equals that of routing the new space like the
    trained one (``share``), and the new space alone uses the new expert."""
    trained, new = 2, 5  # action space ids; the trained block saw 4 action dims
    source = _as_block(3, action_dim=4)
    rng = np.random.default_rng(0)
    old_router = rng.normal(scale=2.0, size=(7 + 4, 3)).astype(np.float32)
    source.router[...] = jnp.asarray(old_router)
    shared, copied = _as_block(3, new_dim), _as_block(4, new_dim)
    fresh_rows = np.asarray(shared.router[...])
    shared.router[...] = jnp.asarray(init_lib._router_rows(fresh_rows, old_router, {new: trained}))
    fresh_copied = np.concatenate([fresh_rows, np.asarray(copied.router[...])[:, 3:]], axis=1)  # same new dim rows
    rows = init_lib._router_rows(fresh_copied, old_router, {new: trained})
    picked = init_lib._add_space_experts(rows, 7, {new: (trained, new_dim)}, first_new=3)
    copied.router[...] = jnp.asarray(rows)
    for name in ("gate", "up", "down"):
        old = np.asarray(getattr(source.experts, name)[...])
        getattr(shared.experts, name)[...] = jnp.asarray(old)
        getattr(copied.experts, name)[...] = jnp.asarray(np.concatenate([old, old[[picked[3]]]]))
    x = jnp.asarray(rng.normal(size=(3, 2, 16)), jnp.float32)
    for space in range(7):
        routing = _routing(space, new_dim, new_dim)
        want, _ = shared(x, routing)
        got, _ = copied(x, routing)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=str(space))
        chosen = int(np.argmax(np.asarray(copied.route(routing))[0]))
        assert (chosen == 3) == (space == new), space
    assert picked[3] == int(np.argmax(np.asarray(shared.route(_routing(new, new_dim, new_dim)))[0]))
