"""Where a HiMoE layer's cost goes: one AS or HB feed-forward block of the `small` expert against its dense twin.

For each MoE kind, the forward + backward of one block (the project's own
``moe.build_ffn``) on ``batch x 10`` action tokens of width 384, timed in turn
with:

- ``dense``: one gated MLP as wide as the experts a token uses (the
  ``moe_step.py`` baseline);
- ``flat_equivalent``: one gated MLP doing the same matmul FLOPs as the MoE
  block's dispatch (its buffers' rows times the expert width, plus the shared
  expert), so ``moe / flat_equivalent`` is what the grouped form (batched or
  switched per-expert matmuls, routing, scatter/gather) costs beyond its FLOPs,
  and ``flat_equivalent / dense`` what its padding costs.

    python benchmarks/moe_layer.py [--batch 32] [--repeats 20]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import interleaved_best_seconds

ACTION_DIM, HORIZON, NUM_SPACES = 24, 10, 7


def _routing(batch: int):
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "token_weight": jnp.ones((batch, HORIZON), jnp.float32),
        "action_space": jnp.asarray(rng.choice([0, 0, 0, 2, 3], batch), jnp.int32),  # moe_step.py's EEF-heavy mix
        "action_dim_mask": jnp.asarray(rng.random((batch, ACTION_DIM)) < 0.5),
    }


def _block_step(block, x, routing):
    """A jitted grad (parameters and input) of one block's output and auxiliary loss."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, params = nnx.split(block)

    def loss(params, x):
        y, aux = nnx.merge(graphdef, params)(x, routing)
        return jnp.mean(jnp.square(y)) + aux.get("loss", 0.0)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: step(params, x)


def _dispatched_rows(kind: str, dispatch: str, cfg, tokens: int) -> int:
    """Rows the experts run on in one block: capacity buffers, ranked buffers or every expert on every token."""
    from vla_jax.models import grouped, moe

    if kind == "as":
        experts, k, factor = cfg.as_experts, 1, cfg.as_capacity_factor
    else:
        experts, k, factor = cfg.hb_experts, cfg.hb_top_k, cfg.hb_capacity_factor
    if dispatch == "capacity":
        return experts * moe.expert_capacity(tokens, k, experts, factor)
    if dispatch == "ragged":  # grouped matmuls run exactly the assignments
        grouped_matmuls = moe.ragged_runs_grouped_matmuls()
        return tokens * k if grouped_matmuls else sum(grouped.rank_capacities(tokens * k, experts))
    return experts * tokens


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="samples (x10 action tokens)")
    parser.add_argument("--repeats", type=int, default=20, help="timing rounds")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from vla_jax.models import moe, presets

    expert = presets.model_config("small").expert
    cfg, width, tokens = expert.moe, expert.width, args.batch * HORIZON
    x = jnp.asarray(np.random.default_rng(1).normal(size=(args.batch, HORIZON, width)), jnp.float32)
    routing = _routing(args.batch)
    rngs = nnx.Rngs(params=0)
    expert_width = {"as": cfg.as_mlp_dim, "hb": cfg.hb_mlp_dim}
    shared = {"as": 0, "hb": cfg.hb_shared_mlp_dim}
    results = {"device": jax.devices()[0].device_kind, "tokens": tokens, "width": width}
    for kind, dispatch in (("as", cfg.as_dispatch), ("as", "capacity"), ("hb", cfg.hb_dispatch)):
        config = expert.copy_and_resolve_references()
        setattr(config.moe, f"{kind}_dispatch", dispatch)
        rows = _dispatched_rows(kind, dispatch, config.moe, tokens)
        flat_hidden = round((rows * expert_width[kind] + tokens * shared[kind]) / tokens)
        with nnx.use_eager_sharding(False):
            blocks = {
                "dense": moe.DenseFFN(width, moe.active_mlp_dim(kind, expert), activation="swish", rngs=rngs),
                "flat_equivalent": moe.DenseFFN(width, flat_hidden, activation="swish", rngs=rngs),
                "moe": moe.build_ffn(
                    kind, width, config, num_spaces=NUM_SPACES, action_dim=ACTION_DIM, rngs=rngs, dtype=jnp.float32
                ),
            }
        seconds = interleaved_best_seconds(
            {name: _block_step(block, x, routing) for name, block in blocks.items()}, args.repeats
        )
        results[f"{kind}_{dispatch}"] = {
            "dispatched_rows_per_token": round(rows / tokens, 3),
            "seconds": {name: round(s, 5) for name, s in seconds.items()},
            "moe_vs_dense": round(seconds["moe"] / seconds["dense"], 3),
            "flat_equivalent_vs_dense": round(seconds["flat_equivalent"] / seconds["dense"], 3),
            "moe_vs_flat_equivalent": round(seconds["moe"] / seconds["flat_equivalent"], 3),
        }
    results["settings"] = vars(args)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
