"""HiMoE cost: the `small` action expert's training step with HiMoE vs dense, and the step's FLOP/s.

Measured in one process on this machine:

- ``himoe_vs_dense_step_ratio``: time of a training step (forward + backward)
  of the ``small`` preset's action expert with its HiMoE plan and the preset's
  dispatch (AS ``ragged``: dropless; HB ``capacity``), over the same expert
  made dense with the same active parameters per token (each MoE layer becomes
  one gated MLP as wide as the experts a token uses). Target <= 1.15. Each
  variant is timed in turn with the dense expert, round after round, so both
  share the load.
- Where the ratio comes from: ``himoe_vs_dense_flops_ratio`` (the compiled
  steps' FLOPs: dispatch buffers and routers), the same time ratio with only
  the AS or only the HB layers as MoE, and with other dispatches: AS
  ``capacity`` (factor 2.0; drops what does not fit), ``dense`` everywhere
  (every expert on every token, the reference) and ``ragged`` everywhere. The
  fraction of assignments each variant dropped is reported too.
- ``step_flops_fraction_of_matmul_peak``: model FLOPs of a whole ``small``
  training step (``vla_jax.training.summary``, active experts only) per second,
  over the FLOP/s of a large fp32 matmul measured here.

    python benchmarks/moe_step.py [--batch 32] [--context 128] [--repeats 8] [--model-batch 2]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import interleaved_best_seconds, preset_step_flops_fraction

ACTION_DIM = 24


def _build_expert(expert_config, backbone_config, dense_kinds: tuple[str, ...] = ()):
    """The action expert; each MoE layer of a kind in ``dense_kinds`` becomes one gated MLP of its active width."""
    from flax import nnx

    from vla_jax.models import moe
    from vla_jax.models.action_expert import ActionExpert

    rngs = nnx.Rngs(params=0)
    with nnx.use_eager_sharding(False):
        expert = ActionExpert(expert_config, backbone_config, action_dim=ACTION_DIM, num_action_spaces=7, rngs=rngs)
        for layer, kind in zip(expert.decoder.layers, expert.plan):
            if kind in dense_kinds:
                hidden = moe.active_mlp_dim(kind, expert_config)
                layer.ffn = moe.DenseFFN(expert_config.width, hidden, activation="swish", rngs=rngs)
    return expert


def _expert_step(expert, backbone_config, batch: int, context: int, horizon: int = 10):
    """A jitted grad step of the action expert on random inputs; returns (step fn, dropped fraction, FLOPs)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    action_dim = ACTION_DIM
    graphdef, params = nnx.split(expert)
    rng = np.random.default_rng(0)
    kv_shape = (batch, context, backbone_config.num_kv_heads, backbone_config.head_dim)
    kvs = [
        (jnp.asarray(rng.normal(size=kv_shape), jnp.float32), jnp.asarray(rng.normal(size=kv_shape), jnp.float32))
        for _ in range(backbone_config.depth)
    ]
    inputs = {
        "noisy": jnp.asarray(rng.normal(size=(batch, horizon, action_dim)), jnp.float32),
        "time": jnp.asarray(rng.uniform(size=batch), jnp.float32),
        "target": jnp.asarray(rng.normal(size=(batch, horizon, action_dim)), jnp.float32),
        "context_mask": jnp.ones((batch, context), bool),
        "first_position": jnp.full((batch,), context, jnp.int32),
    }
    routing = {
        "token_weight": jnp.ones((batch, horizon), jnp.float32),
        "action_space": jnp.asarray(rng.choice([0, 0, 0, 2, 3], batch), jnp.int32),  # an EEF-heavy mixture
        "action_dim_mask": jnp.asarray(rng.random((batch, action_dim)) < 0.5),
    }

    def loss(params):
        model = nnx.merge(graphdef, params)
        velocity, auxes = model(
            inputs["noisy"], inputs["time"], kvs, inputs["context_mask"], inputs["first_position"], routing
        )
        aux = sum(a["loss"] for a in auxes if a)
        dropped = [a[k] for a in auxes for k in a if k.endswith("dropped_fraction")]
        return jnp.mean(jnp.square(velocity - inputs["target"])) + aux, jnp.mean(jnp.stack(dropped)) if dropped else 0.0

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    flops = step.lower(params).compile().cost_analysis()["flops"]
    (_, dropped), _ = step(params)
    return lambda: step(params), float(dropped), flops


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="samples per expert step (x10 action tokens)")
    parser.add_argument("--context", type=int, default=128, help="prefix tokens the expert attends to")
    parser.add_argument("--repeats", type=int, default=8, help="timing rounds (every variant once per round)")
    parser.add_argument("--model-batch", type=int, default=2, help="examples per whole-model `small` step")
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args(argv)

    import jax

    from vla_jax.models import moe, presets

    small = presets.model_config("small")
    backbone, expert = small.backbone, small.expert
    plan = moe.default_plan(backbone.depth)
    results = {"device": jax.devices()[0].device_kind, "plan": "".join(k[0] for k in plan)}

    variants = {  # name: (AS dispatch, HB dispatch, kinds made dense); the preset's own dispatch first
        "dense": (expert.moe.as_dispatch, expert.moe.hb_dispatch, ("as", "hb")),
        "himoe": (expert.moe.as_dispatch, expert.moe.hb_dispatch, ()),
        "himoe_as_only": (expert.moe.as_dispatch, expert.moe.hb_dispatch, ("hb",)),
        "himoe_hb_only": (expert.moe.as_dispatch, expert.moe.hb_dispatch, ("as",)),
        "himoe_as_capacity": ("capacity", expert.moe.hb_dispatch, ()),
        "himoe_dense_dispatch": ("dense", "dense", ()),
        "himoe_all_ragged": ("ragged", "ragged", ()),
    }
    steps, flops, dropped = {}, {}, {}
    for name, (as_dispatch, hb_dispatch, dense_kinds) in variants.items():
        config = expert.copy_and_resolve_references()
        config.moe.as_dispatch, config.moe.hb_dispatch = as_dispatch, hb_dispatch
        built = _build_expert(config, backbone, dense_kinds)
        steps[name], dropped[name], flops[name] = _expert_step(built, backbone, args.batch, args.context)
    results["dispatch"] = {"as": expert.moe.as_dispatch, "hb": expert.moe.hb_dispatch}
    results["himoe_dropped_fraction"] = round(dropped["himoe"], 4)
    results["dropped_fraction"] = {k: round(v, 4) for k, v in dropped.items() if k != "dense"}
    # Each comparison is timed in turn with the dense expert alone, so a slow variant does not load its neighbours.
    ratios, times = {}, {}
    for name in variants:
        if name != "dense":
            pair = interleaved_best_seconds({"dense": steps["dense"], name: steps[name]}, args.repeats)
            ratios[name] = round(pair[name] / pair["dense"], 3)
            times[name], times[f"dense_beside_{name}"] = round(pair[name], 4), round(pair["dense"], 4)
    results["expert_step_s"] = times
    results["himoe_vs_dense_step_ratio"] = ratios["himoe"]
    results["himoe_vs_dense_flops_ratio"] = round(flops["himoe"] / flops["dense"], 3)
    results["step_ratio_vs_dense"] = ratios
    results["flops_ratio_vs_dense"] = {k: round(flops[k] / flops["dense"], 3) for k in ratios}

    # Whole `small` training step (the trainer's own step): model FLOPs per second over the matmul peak.
    whole = preset_step_flops_fraction("small", args.model_batch, max(2, args.repeats // 2), args.matmul_size)
    results.update(small_step=whole, step_flops_fraction_of_matmul_peak=whole["flops_fraction_of_matmul_peak"])
    results["settings"] = vars(args)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
