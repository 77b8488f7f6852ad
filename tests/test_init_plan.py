"""The per-parameter plan of a fine-tune's initialization (training.init), on parameter listings alone."""

import ml_collections
import numpy as np
import pytest

from vla_jax.errors import ConfigError
from vla_jax.training import init as init_lib

F32 = "float32"
SOURCE = {
    "vit/patch_embed/kernel": ((768, 32), F32),
    "backbone/layers/0/query": ((32, 2, 16), F32),
    "action_expert/action_in/kernel": ((4, 32), F32),
    "action_expert/action_out/kernel": ((32, 4), F32),
    "action_expert/decoder/layers/0/ffn/router": ((7 + 4, 3), F32),
    "old_head/kernel": ((32, 2), F32),
}


def _init(**fields) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"load": ".*", "reinit": "", **fields})


def _target(action_dim: int) -> dict:
    target = {k: v for k, v in SOURCE.items() if not k.startswith("old_head")}
    target["action_expert/action_in/kernel"] = ((action_dim, 32), F32)
    target["action_expert/action_out/kernel"] = ((32, action_dim), F32)
    target["action_expert/decoder/layers/0/ffn/router"] = ((7 + action_dim, 3), F32)
    target["backbone/layers/0/query_lora/a"] = ((32, 4), F32)
    return target


def test_a_new_action_dim_reinitializes_the_projections_and_resizes_the_routers():
    decisions = init_lib.plan(_init(), _target(7), SOURCE, action_dim_changed=True)
    status = {path: d["status"] for path, d in decisions.items()}
    assert status == {
        "vit/patch_embed/kernel": "loaded",
        "backbone/layers/0/query": "loaded",
        "action_expert/action_in/kernel": "reinitialized",
        "action_expert/action_out/kernel": "reinitialized",
        "action_expert/decoder/layers/0/ffn/router": "resized",
        "backbone/layers/0/query_lora/a": "new",
    }
    assert "action dim" in decisions["action_expert/action_in/kernel"]["why"]


def test_the_same_shapes_without_the_rule_are_a_named_error_unless_reinit_covers_them():
    with pytest.raises(ConfigError, match=r"action_expert/action_in/kernel is \(4, 32\) in the source, \(7, 32\) here"):
        init_lib.plan(_init(), _target(7), SOURCE, action_dim_changed=False)
    decisions = init_lib.plan(_init(reinit="^action_expert/"), _target(7), SOURCE, action_dim_changed=False)
    assert {p for p, d in decisions.items() if d["status"] == "reinitialized"} == {
        p for p in _target(7) if p.startswith("action_expert/")
    }
    decisions = init_lib.plan(_init(load="^vit/"), _target(4), SOURCE, action_dim_changed=False)
    assert [p for p, d in decisions.items() if d["status"] == "loaded"] == ["vit/patch_embed/kernel"]


def test_router_rows_keep_what_fits_and_copy_a_trained_space():
    old = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)  # 7 spaces + 4 dims
    fresh = -np.ones((7 + 6, 3), np.float32)  # 7 spaces + 6 dims
    rows = init_lib._router_rows(fresh, old, copies={1: 6})
    np.testing.assert_array_equal(rows[:11], np.where(np.arange(11)[:, None] == 1, old[6], old))
    np.testing.assert_array_equal(rows[11:], fresh[11:])  # the two new dims start fresh
    same = init_lib._router_rows(fresh[:11], old, copies={})
    np.testing.assert_array_equal(same, old)
