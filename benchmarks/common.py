"""Helpers the benchmark scripts share: timing, the machine's matmul peak, a synthetic model batch."""

from __future__ import annotations

import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def best_seconds(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` (results waited for), after one warm-up call."""
    import jax

    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best_seconds(fns: dict, rounds: int) -> dict:
    """Fastest call of each of ``fns`` (name -> fn), timed in turn round after round.

    On a shared, noisy machine, taking turns puts every variant under the same
    load, so their ratios hold even when absolute times drift.
    """
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn())
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_flops_per_s(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted ``size x size`` fp32 matmul on the default device: this machine's dense peak."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    return 2 * size**3 / best_seconds(lambda: matmul(a, b), repeats)


def model_batch(io, batch_size: int):
    """Random inputs of the shapes ``io`` (an IOShapes) describes; half the prompt is a FAST postfix."""
    from vla_jax.observation import example_batch

    return example_batch(io, batch_size, seed=0)


def preset_step_flops_fraction(preset: str, batch_size: int, repeats: int, matmul_size: int = 2048) -> dict:
    """Model FLOP/s of the trainer's own jitted step for ``preset`` (synthetic batch, one device), vs the matmul peak.

    Model FLOPs are ``vla_jax.training.summary.forward_flops`` x 3 (active
    experts only), so this is the MFU against what this machine's matmul reaches.
    """
    import functools

    import jax

    from vla_jax import sharding
    from vla_jax.data import loader
    from vla_jax.models import presets
    from vla_jax.models.vla import build_model
    from vla_jax.training import optimizer, state, step, summary

    config = presets.model_config(preset)
    io = presets.default_io(preset)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    tx = optimizer.make_optimizer(optimizer.optimizer_config(), 1000)
    model_fn = functools.partial(build_model, config, io, 0)
    with sharding.logical_rules(sharding.DEFAULT_RULES):
        layout = state.make_layout(model_fn, tx, mesh, sharding.DEFAULT_RULES, 4 * 2**20)
    with jax.set_mesh(mesh), sharding.logical_rules(sharding.DEFAULT_RULES):
        train_state = state.init_state(model_fn, tx, layout)
        batch_sharding = sharding.batch_sharding(mesh)
        train_step = step.make_train_step(layout, tx, batch_sharding, seed=0)
        batch = loader.to_global_batch(model_batch(io, batch_size), batch_sharding)
        holder = {"state": train_state}

        def run():
            holder["state"], metrics = train_step(holder["state"], batch)
            return metrics["loss"]

        step_s = best_seconds(run, repeats)
    flops = 3 * sum(summary.forward_flops(config, io).values()) * batch_size
    peak = matmul_flops_per_s(matmul_size, 5)
    return {
        "preset": preset,
        "batch_size": batch_size,
        "step_s": round(step_s, 4),
        "step_model_flops": flops,
        "step_flops_per_s": round(flops / step_s),
        "matmul_flops_per_s": round(peak),
        "flops_fraction_of_matmul_peak": round(flops / step_s / peak, 3),
    }
