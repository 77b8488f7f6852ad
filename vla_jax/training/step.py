"""Pure, jitted train and eval steps over the plain-pytree train state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vla_jax import sharding
from vla_jax.models.vla import action_weight
from vla_jax.observation import Batch
from vla_jax.training.state import StateLayout


def _micro_batches(batch: Batch, count: int) -> Batch:
    """``[B, ...]`` leaves to ``[count, B / count, ...]``; micro-batch ``i`` takes rows ``i, i + count, ...``.

    Striding (rather than contiguous blocks) keeps every micro-batch spread
    over all the devices that hold the batch.
    """

    def split(x):
        if x.shape[0] % count:
            raise ValueError(f"batch of {x.shape[0]} does not split into grad_accum_steps={count} micro-batches")
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        return sharding.constrain(x, (None, "batch"))

    return jax.tree.map(split, batch)


def make_train_step(
    layout: StateLayout,
    optimizer: optax.GradientTransformation,
    batch_sharding,
    seed: int,
    *,
    grad_accum_steps: int = 1,
    ema_decay: float = 0.0,
    num_datasets: int = 1,
):
    """``(state, batch) -> (state, metrics)``, jitted with the state donated.

    The step's randomness (flow-matching noise and times) is a function of
    ``seed`` and the step number, so a resumed run draws what an uninterrupted
    one would. With ``grad_accum_steps > 1`` the gradient is the mean over
    micro-batches. ``metrics["loss_by_dataset"]`` is the mean example loss of
    each dataset of the mixture (NaN where the batch has none).

    A step whose loss, gradient norm or update norm is not finite keeps the
    previous parameters and optimizer state (``metrics["finite"]`` is False; the
    trainer stops or skips on it), so non-finite values never reach the state.
    """

    def grads_and_metrics(params, batch, rng):
        def loss_fn(params):
            return nnx.merge(layout.graphdef, params).loss(batch, rng)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        metrics = dict(metrics, loss=loss)
        example_loss = metrics.pop("example_loss")
        index = batch.dataset_index
        metrics["dataset_loss_sum"] = jax.ops.segment_sum(example_loss, index, num_datasets)
        metrics["dataset_count"] = jax.ops.segment_sum(jnp.ones_like(example_loss), index, num_datasets)
        return grads, metrics

    def train_step(state: dict, batch: Batch) -> tuple[dict, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state["step"])
        if grad_accum_steps == 1:
            grads, metrics = grads_and_metrics(state["params"], batch, rng)
        else:

            def accumulate(total, inputs):
                i, micro = inputs
                grads, metrics = grads_and_metrics(state["params"], micro, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, total, (grads, metrics)), None

            micro = _micro_batches(batch, grad_accum_steps)
            zeros = jax.eval_shape(grads_and_metrics, state["params"], jax.tree.map(lambda x: x[0], micro), rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            summed, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
            grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, summed)
            metrics["dataset_loss_sum"] *= grad_accum_steps  # sums and counts are not averaged
            metrics["dataset_count"] *= grad_accum_steps
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        count = metrics.pop("dataset_count")
        metrics["loss_by_dataset"] = metrics.pop("dataset_loss_sum") / jnp.where(count > 0, count, jnp.nan)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["update_norm"] = optax.tree.norm(updates)
        finite = (
            jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & jnp.isfinite(metrics["update_norm"])
        )
        metrics["finite"] = finite

        def if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        params, opt_state = if_finite(params, state["params"]), if_finite(opt_state, state["opt_state"])
        new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
        if "ema" in state:
            new_state["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"], params)
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(layout.shardings, batch_sharding),
        out_shardings=(layout.shardings, None),
        donate_argnums=(0,),
    )


def make_loss_step(layout: StateLayout, batch_sharding, seed: int = 0):
    """``(params, batch) -> loss`` (validation loss; the flow noise is fixed by ``seed``)."""

    def loss_step(params: dict, batch: Batch) -> jax.Array:
        return nnx.merge(layout.graphdef, params).loss(batch, jax.random.key(seed))[0]

    return jax.jit(loss_step, in_shardings=(layout.shardings["params"], batch_sharding))


def _targets(batch: Batch) -> dict:
    return {"actions": batch.actions, "weight": action_weight(batch), "dataset_index": batch.dataset_index}


def make_sample_step(layout: StateLayout, batch_sharding, seed: int = 0):
    """Flow modes: ``(params, batch) -> {predicted, actions, weight, dataset_index}``, replicated on every process.

    ``predicted`` are the action expert's chunks (normalized units), sampled
    from noise drawn with ``seed``, the same for every evaluation.
    """

    def sample_step(params: dict, batch: Batch) -> dict:
        predicted = nnx.merge(layout.graphdef, params).sample_actions(batch.observation, jax.random.key(seed))
        return {"predicted": predicted, **_targets(batch)}

    return jax.jit(
        sample_step,
        in_shardings=(layout.shardings["params"], batch_sharding),
        out_shardings=sharding.replicated(batch_sharding.mesh),
    )


def make_generate_step(layout: StateLayout, batch_sharding, num_tokens: int, eos_id: int):
    """Fast mode: ``(params, batch) -> {generated, actions, weight, dataset_index}``, replicated on every process.

    ``generated [B, num_tokens]`` are greedy postfix ids (KV-cache decoding); the
    targets come along so each host can decode and score the whole global batch.
    """

    def generate_step(params: dict, batch: Batch) -> dict:
        generated = nnx.merge(layout.graphdef, params).generate(batch.observation, num_tokens, eos_id)
        return {"generated": generated, **_targets(batch)}

    return jax.jit(
        generate_step,
        in_shardings=(layout.shardings["params"], batch_sharding),
        out_shardings=sharding.replicated(batch_sharding.mesh),
    )
