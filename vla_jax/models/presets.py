"""Model sizes in one place: ``tiny`` (tests and the CPU demo), ``small`` (one GPU), ``paligemma_himoe`` (pods),
``pi0`` (openpi's π0: PaliGemma and a dense Gemma-300M expert, for imported weights).

``model_config(name)`` gives a complete ``config.model``; experiment files
start from one and override fields. ``default_io(name)`` gives the inputs a
preset is summarized with when no data config is at hand.
"""

from __future__ import annotations

import ml_collections

from vla_jax.models.lora import lora_config
from vla_jax.observation import IOShapes

PRESETS = ("tiny", "small", "paligemma_himoe", "pi0")


def _moe(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Dispatch per block kind (vla_jax.models.moe): "dense" (every expert on every token; the reference),
    # "capacity" (fixed per-expert buffers; overflow is dropped) or "ragged" (dropless: sorted grouped matmuls
    # on TPU, ranked buffers elsewhere). AS routing follows the action space, so one expert gets most of a
    # batch (all of it on a single-embodiment dataset): capacity would drop a third of it, so AS is dropless.
    c.as_dispatch = "ragged"
    c.hb_dispatch = "capacity"
    c.as_experts = 3
    c.as_mlp_dim = 4096
    c.as_capacity_factor = 2.0  # used only with as_dispatch="capacity"
    c.as_reg_weight = 0.002  # per layer
    c.as_reg_temperature = 0.1
    c.hb_experts = 32
    c.hb_mlp_dim = 1024
    c.hb_top_k = 4
    c.hb_shared_mlp_dim = 1024  # 0: no shared expert
    c.hb_capacity_factor = 1.25
    c.hb_balance_weight = 0.001  # per layer
    c.hb_z_loss_weight = 1e-4  # per layer
    c.activation = "swish"  # the AS/HB experts' gated MLPs: "swish" (SwiGLU, HiMoE) or "gelu" (GeGLU, π0's MLP)
    c.update(overrides)
    return c


def _config(mode: str, vit: dict, backbone: dict, expert: dict, moe: dict) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = mode  # "fast", "flow" or "fast+flow" (see vla_jax.models.vla)
    c.dtype = "float32"  # compute dtype; parameters are always fp32
    c.remat = "none"  # "none", "full" (recompute each layer) or "dots" (keep matmul outputs)
    c.vit = ml_collections.ConfigDict({"attention_bias": False, **vit})  # SigLIP's q/k/v/out biases
    c.backbone = ml_collections.ConfigDict(backbone)
    c.expert = ml_collections.ConfigDict({"state_token": False, **expert})  # state_token: π0's, first in the suffix
    c.expert.plan = ()  # per-layer "as" / "hb" / "dense"; empty: moe.default_plan(backbone.depth)
    c.expert.moe = _moe(**moe)
    c.lora = lora_config()  # LoRA on the backbone (vla_jax.models.lora); rank 0: off
    c.flow = ml_collections.ConfigDict()
    c.flow.num_steps = 10  # Euler steps at inference
    c.flow.loss_weight = 1.0
    c.flow.knowledge_insulation = True  # fast+flow: the expert's loss does not train the backbone
    return c


SO400M = dict(patch_size=14, width=1152, depth=27, num_heads=16, mlp_dim=4304, attention_bias=True)
GEMMA_2B = dict(width=2048, depth=18, num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16384)


def model_config(name: str) -> ml_collections.ConfigDict:
    if name == "tiny":
        return _config(
            "fast",
            vit=dict(patch_size=16, width=64, depth=1, num_heads=2, mlp_dim=128),
            backbone=dict(width=128, depth=4, num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=256),
            expert=dict(width=64, mlp_dim=128),
            moe=dict(as_mlp_dim=128, hb_experts=4, hb_mlp_dim=32, hb_top_k=2, hb_shared_mlp_dim=32),
        )
    if name == "small":
        return _config(
            "fast+flow",
            vit=dict(patch_size=16, width=512, depth=8, num_heads=8, mlp_dim=2048),
            backbone=dict(width=768, depth=12, num_heads=8, num_kv_heads=1, head_dim=128, mlp_dim=3072),
            expert=dict(width=384, mlp_dim=1536),
            moe=dict(as_mlp_dim=1536, hb_experts=16, hb_mlp_dim=384, hb_top_k=2, hb_shared_mlp_dim=384),
        )
    if name == "paligemma_himoe":
        # PaliGemma-3B (SigLIP So400m/14 at 224, Gemma-2B) and a Gemma-300M-shaped expert with HiMoE.
        return _config("fast+flow", vit=SO400M, backbone=GEMMA_2B, expert=dict(width=1024, mlp_dim=4096), moe=dict())
    if name == "pi0":
        # openpi's π0: PaliGemma-3B and a dense Gemma-300M action expert with a state token (vla-jax convert).
        config = _config(
            "flow", vit=SO400M, backbone=GEMMA_2B, expert=dict(width=1024, mlp_dim=4096, state_token=True), moe=dict()
        )
        config.expert.plan = ("dense",) * GEMMA_2B["depth"]
        return config
    raise ValueError(f"unknown model preset {name!r}; expected one of {PRESETS}")


def default_io(name: str) -> IOShapes:
    """Inputs to summarize a preset with: two cameras, a unified 24-D action of chunk 10 (HiMoE's)."""
    if name == "paligemma_himoe":
        return IOShapes(("primary", "wrist"), 224, 257_152, 200, 24, 24, 10)
    if name == "pi0":  # openpi's: three cameras, 48 prompt tokens, 32-D state and actions, chunks of 50
        return IOShapes(("primary", "secondary", "wrist"), 224, 257_152, 48, 32, 32, 50)
    if name == "small":
        return IOShapes(("primary", "wrist"), 224, 4096, 96, 24, 24, 10)
    if name == "tiny":
        return IOShapes(("primary", "wrist"), 64, 1536, 48, 8, 8, 4)
    raise ValueError(f"unknown model preset {name!r}; expected one of {PRESETS}")
