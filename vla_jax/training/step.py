"""Pure, jitted train and eval steps over the plain-pytree train state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vla_jax.models.vla import action_errors, action_weight
from vla_jax.training.state import StateLayout


def make_train_step(layout: StateLayout, optimizer: optax.GradientTransformation, batch_sharding, seed: int):
    """``(state, batch) -> (state, metrics)``, jitted with the state donated.

    The step's randomness (flow-matching noise and times) is a function of
    ``seed`` and the step number, so a resumed run draws what an uninterrupted one would.
    """

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state["step"])

        def loss_fn(params):
            return nnx.merge(layout.graphdef, params).loss(batch, rng)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return jax.jit(
        train_step,
        in_shardings=(layout.shardings, batch_sharding),
        out_shardings=(layout.shardings, None),
        donate_argnums=(0,),
    )


def make_eval_step(layout: StateLayout, batch_sharding, seed: int = 0):
    """Flow modes: ``(params, batch) -> sums`` of absolute/squared errors of sampled chunks, and their counts.

    Sampling starts from noise drawn with ``seed``, the same for every evaluation.
    """

    def eval_step(params: dict, batch: dict) -> dict:
        predicted = nnx.merge(layout.graphdef, params).sample_actions(batch, jax.random.key(seed))
        weight = action_weight(batch)
        errors = action_errors(predicted, batch["actions"], weight)
        count = jnp.sum(weight)
        return {"abs_sum": errors["mae"] * count, "sq_sum": errors["mse"] * count, "count": count}

    return jax.jit(eval_step, in_shardings=(layout.shardings["params"], batch_sharding))


def make_generate_step(layout: StateLayout, batch_sharding, num_tokens: int, eos_id: int):
    """``(params, batch) -> {generated, actions, weight}`` for fast mode (KV-cache greedy decoding), replicated.

    ``generated [B, num_tokens]`` are greedy postfix ids; the targets come along so
    each host can decode and score the whole global batch.
    """

    def generate_step(params: dict, batch: dict) -> dict:
        generated = nnx.merge(layout.graphdef, params).generate(batch, num_tokens, eos_id)
        return {"generated": generated, "actions": batch["actions"], "weight": action_weight(batch)}

    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(generate_step, in_shardings=(layout.shardings["params"], batch_sharding), out_shardings=replicated)
