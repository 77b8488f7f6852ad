"""LoRA: trainable low-rank updates beside the backbone's frozen weights (Hu et al. 2021).

``config.model.lora``: ``rank`` (0: off), ``alpha``, ``targets`` (``attention``:
the query, key, value and output projections of every backbone layer;
``mlp``: its gate, up and down weights) and ``rslora`` (scale ``alpha /
sqrt(rank)`` instead of ``alpha / rank``; Kalajdzievski 2023).

A weight ``W`` with input axes ``I`` and output axes ``O`` gets ``A [I..., r]``
(random) and ``B [r, O...]`` (zeros), so a model starts exactly as it was; the
layer computes ``x·W + scale · (x·A)·B``. ``A`` and ``B`` are ``nnx.LoRAParam``
(a ``Param``): saved, restored, sharded and initialized from a source like the
rest (they are ``new`` in an init report). With LoRA on, the trainer freezes
the weights it adapts (:func:`frozen_base_pattern`); ``vla-jax export`` folds
each pair into its weight (:func:`merge`) and writes a config without LoRA.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

TARGETS = {"attention": ("query", "key", "value", "out"), "mlp": ("gate", "up", "down")}
SUFFIX = "_lora"  # the pair of weight ``name`` lives in the sibling module ``name + SUFFIX``


def lora_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.rank = 0  # 0: no LoRA
    c.alpha = 16.0
    c.targets = ("attention", "mlp")
    c.rslora = False
    c.update(overrides)
    return c


def enabled(cfg: ml_collections.ConfigDict | None) -> bool:
    return cfg is not None and cfg.rank > 0


def targets(cfg: ml_collections.ConfigDict | None, group: str) -> bool:
    """Whether LoRA adapts the weights of ``group`` ("attention" or "mlp")."""
    return enabled(cfg) and group in cfg.targets


def scale(cfg: ml_collections.ConfigDict) -> float:
    return cfg.alpha / (math.sqrt(cfg.rank) if cfg.rslora else cfg.rank)


class LoRA(nnx.Module):
    """The low-rank pair of one weight of shape ``in_shape + out_shape``."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str | None],
        out_axes: Sequence[str | None],
        cfg: ml_collections.ConfigDict,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
    ):
        fan_in = math.prod(in_shape)
        a = jax.random.normal(rngs.params(), (*in_shape, cfg.rank), jnp.float32) / math.sqrt(fan_in)
        self.a = nnx.LoRAParam(a, out_sharding=(*in_axes, None))
        self.b = nnx.LoRAParam(jnp.zeros((cfg.rank, *out_shape), jnp.float32), out_sharding=(None, *out_axes))
        self.num_in, self.scale, self.dtype = len(in_shape), scale(cfg), dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """``scale · (x·A)·B``, contracting the last ``len(in_shape)`` axes of ``x``."""
        low = jnp.tensordot(x.astype(self.dtype), self.a[...].astype(self.dtype), axes=self.num_in)
        return self.scale * jnp.tensordot(low, self.b[...].astype(self.dtype), axes=1)


def frozen_base_pattern(model: ml_collections.ConfigDict) -> str:
    """A regex over parameter paths matching the backbone weights LoRA adapts ("" without LoRA)."""
    if not enabled(model.get("lora")):
        return ""
    names = "|".join(n for group in model.lora.targets for n in TARGETS[group])
    return rf"^backbone/layers/\d+/(ffn/mlp/)?({names})$"


def merge(params: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Plain-dict params with every LoRA pair folded into its weight (``W + scale · A·B``) and removed."""
    factor = scale(cfg)

    def fold(tree: dict) -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(key, str) and key.endswith(SUFFIX):
                continue
            out[key] = fold(value) if isinstance(value, dict) else value
        for key, value in tree.items():
            if isinstance(key, str) and key.endswith(SUFFIX):
                weight = key[: -len(SUFFIX)]
                delta = jnp.tensordot(value["a"], value["b"], axes=1) * factor
                out[weight] = (out[weight] + delta.astype(out[weight].dtype)).astype(out[weight].dtype)
        return out

    return fold(params)


def is_lora_path(path: str) -> bool:
    return re.search(rf"{SUFFIX}/(a|b)$", path) is not None
