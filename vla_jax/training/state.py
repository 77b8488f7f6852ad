"""The train state as plain pytrees, with its shardings derived from logical names.

The state is ``{"params": <pure dict>, "opt_state": <optax state>, "step": int32}``,
plus ``"ema"`` (a copy of the params, same shardings) when EMA is on;
parameters are plain nested dicts (``nnx.to_pure_dict``) so that checkpoints do
not depend on Flax internals, and the model is rebuilt inside jit with
``nnx.merge(graphdef, params)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vla_jax import sharding


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Everything needed to create, shard, restore and apply a train state."""

    graphdef: nnx.GraphDef
    abstract: dict  # ShapeDtypeStruct leaves carrying their target shardings
    shardings: dict
    replicated_fraction: float


def _param_shardings(abstract_state: nnx.State, mesh, rules, fsdp_min_bytes: int) -> dict:
    def one(variable: nnx.Variable):
        meta = variable.get_metadata()
        value = variable.get_value()
        return sharding.param_sharding(value.shape, value.dtype, meta.get("out_sharding"), mesh, rules, fsdp_min_bytes)

    shardings = jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(shardings)


def make_layout(
    model_fn: Callable[[], nnx.Module],
    optimizer: optax.GradientTransformation,
    mesh,
    rules,
    fsdp_min_bytes: int,
    *,
    ema: bool = False,
) -> StateLayout:
    """Shapes and shardings of the train state, computed without allocating it."""
    graphdef, abstract_state, non_params = nnx.split(nnx.eval_shape(model_fn), nnx.Param, ...)
    if jax.tree.leaves(non_params):
        raise ValueError("the model holds non-Param state; the train state only knows parameters")
    param_shardings = _param_shardings(abstract_state, mesh, rules, fsdp_min_bytes)
    abstract_params = nnx.to_pure_dict(abstract_state)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    # Optimizer state shaped like the params shares their shardings; a frozen parameter's slot is
    # an empty MaskedNode (no state), which stays as it is.
    masked = optax.transforms.MaskedNode
    opt_shardings = optax.tree_utils.tree_map_params(
        optimizer,
        lambda leaf, s: leaf if isinstance(leaf, masked) else s,
        abstract_opt,
        param_shardings,
        transform_non_params=lambda _: sharding.replicated(mesh),
        is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, masked)),
    )
    shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": sharding.replicated(mesh)}
    shapes = {"params": abstract_params, "opt_state": abstract_opt, "step": jax.ShapeDtypeStruct((), jnp.int32)}
    if ema:
        shardings["ema"], shapes["ema"] = param_shardings, abstract_params
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    fraction = sharding.replicated_fraction(abstract_params, param_shardings)
    return StateLayout(graphdef, abstract, shardings, fraction)


def init_state(
    model_fn: Callable[[], nnx.Module], optimizer: optax.GradientTransformation, layout: StateLayout
) -> dict:
    """A fresh train state, created directly in its target shardings."""

    def init():
        params = nnx.to_pure_dict(nnx.split(model_fn())[1])
        state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
        if "ema" in layout.shardings:
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    return jax.jit(init, out_shardings=layout.shardings)()
