"""What a model config costs, computed from shapes alone (``jax.eval_shape``; nothing is allocated).

Parameters in total, per top-level module and active per token (a MoE layer
counts only the experts a token is sent to), forward/training FLOPs per
example, and the bytes of the train state (fp32 parameters and optimizer
state) one device holds on a given mesh, with the replicated fraction.
"""

from __future__ import annotations

import functools
import math

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from vla_jax import sharding
from vla_jax.models import moe
from vla_jax.models.vla import build_model, uses_fast, uses_flow
from vla_jax.observation import IOShapes
from vla_jax.training import state


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _inactive_params(model: nnx.Module) -> dict[str, int]:
    """Expert parameters a token does not use, per top-level module."""
    inactive: dict[str, int] = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, moe.ASMoE):
            used = 1
        elif isinstance(node, moe.HBMoE):
            used = node.top_k
        else:
            continue
        experts = _count(nnx.state(node.experts, nnx.Param))
        inactive[str(path[0])] = inactive.get(str(path[0]), 0) + experts * (node.experts.num - used) // node.experts.num
    return inactive


def backbone_tokens(model_config: ml_collections.ConfigDict, io: IOShapes) -> int:
    """Tokens per example in the backbone: every image stream's patches (cameras, depth, goals) and the prompt."""
    return len(io.image_streams) * (io.image_size // model_config.vit.patch_size) ** 2 + io.text_length


def forward_flops(model_config: ml_collections.ConfigDict, io: IOShapes) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one example's forward pass, per part; MoE at its active experts."""
    vit, bb, mode = model_config.vit, model_config.backbone, model_config.mode
    patches = (io.image_size // vit.patch_size) ** 2
    blocks = vit.depth * (2 * patches * (4 * vit.width**2 + 2 * vit.width * vit.mlp_dim) + 4 * patches**2 * vit.width)
    # Every image stream (cameras, depth cameras, goal images): its patch embedding (3 channels, or 1 for depth),
    # the shared blocks and the projection into the backbone.
    vision = sum(
        2 * patches * vit.patch_size**2 * channels * vit.width + blocks + 2 * patches * vit.width * bb.width
        for _, channels in io.image_streams
    )
    seq = backbone_tokens(model_config, io)
    heads, kv, hd = bb.num_heads, bb.num_kv_heads, bb.head_dim

    def attention(width: int, queries: int, keys: int) -> int:
        projections = 2 * queries * width * (2 * heads + 2 * kv) * hd
        return projections + 4 * queries * keys * heads * hd

    layer = attention(bb.width, seq, seq) + 2 * seq * 3 * bb.width * bb.mlp_dim
    if uses_fast(mode):
        backbone = bb.depth * layer + 2 * io.text_length * io.text_vocab_size * bb.width
    else:  # the expert reads only the backbone's keys/values: its last layer computes nothing else
        backbone = (bb.depth - 1) * layer + 2 * seq * bb.width * 2 * kv * hd
    flops = {"vision": vision, "backbone": backbone, "action_expert": 0}
    if uses_flow(mode):
        ex, cfg, h = model_config.expert, model_config.expert.moe, io.action_horizon
        width = ex.width
        router = {"hb": cfg.hb_experts}  # the AS router reads the action space, not the token
        hidden = {kind: 3 * moe.active_mlp_dim(kind, ex) + router.get(kind, 0) for kind in moe.KINDS}
        plan = tuple(ex.plan) or moe.default_plan(bb.depth)
        layers = sum(attention(width, h, seq + h) + 2 * h * width * hidden[kind] for kind in plan)
        projections = 2 * h * (2 * io.action_dim * width + 3 * width * width)
        flops["action_expert"] = layers + projections
    return flops


def summarize(
    model_config: ml_collections.ConfigDict,
    io: IOShapes,
    mesh: jax.sharding.AbstractMesh,
    *,
    rules=sharding.DEFAULT_RULES,
    fsdp_min_bytes: int = 4 * 2**20,
    optimizer: optax.GradientTransformation | None = None,
) -> dict:
    model_fn = functools.partial(build_model, model_config, io, 0)
    optimizer = optimizer or optax.adamw(1e-4)
    with sharding.logical_rules(rules):
        layout = state.make_layout(model_fn, optimizer, mesh, rules, fsdp_min_bytes)
    params = layout.abstract["params"]
    by_module = {str(name): _count(sub) for name, sub in params.items()}
    inactive = _inactive_params(nnx.merge(layout.graphdef, params))
    active = {name: count - inactive.get(name, 0) for name, count in by_module.items()}
    param_bytes = sharding.bytes_per_device(layout.abstract["params"], layout.shardings["params"])
    opt_bytes = sharding.bytes_per_device(layout.abstract["opt_state"], layout.shardings["opt_state"])
    flops = forward_flops(model_config, io)
    forward = sum(flops.values())
    return {
        "mode": model_config.mode,
        "io": {"cameras": list(io.cameras), "image_size": io.image_size, "prompt_length": io.text_length,
               "vocab_size": io.text_vocab_size, "action_dim": io.action_dim, "action_horizon": io.action_horizon},
        "params_total": sum(by_module.values()),
        "params_by_module": by_module,
        "params_active_per_token": sum(active.values()),
        "active_params_by_module": active,
        "flops_per_example_forward": forward,
        "flops_per_example_train": 3 * forward,
        "flops_forward_by_part": flops,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "replicated_fraction": layout.replicated_fraction,
        "bytes_per_device": param_bytes + opt_bytes,
        "param_bytes_per_device": param_bytes,
        "optimizer_bytes_per_device": opt_bytes,
        "param_bytes_total": int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(layout.abstract["params"]))),
    }  # fmt: skip


def format_summary(result: dict) -> str:
    gib = 2**30
    lines = [f"model ({result['mode']}): {result['params_total'] / 1e6:,.1f}M params, "
             f"{result['params_active_per_token'] / 1e6:,.1f}M active per token"]  # fmt: skip
    for name, count in result["params_by_module"].items():
        lines.append(
            f"  {name:<16} {count / 1e6:>12,.2f}M  (active {result['active_params_by_module'][name] / 1e6:,.2f}M)"
        )
    lines.append(
        f"FLOPs per example: forward {result['flops_per_example_forward']:.3e}, train {result['flops_per_example_train']:.3e}"
    )
    lines.append(
        f"mesh {result['mesh']}: {result['bytes_per_device'] / gib:.2f} GiB per device "
        f"(params {result['param_bytes_per_device'] / gib:.2f}, optimizer {result['optimizer_bytes_per_device'] / gib:.2f}), "
        f"{result['replicated_fraction']:.2%} of parameter bytes replicated"
    )
    return "\n".join(lines)
