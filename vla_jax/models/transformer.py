"""Gemma-style decoder: RMSNorm (1+w), rotary positions, grouped-query attention, a KV cache.

One :class:`Decoder` is the backbone; a second one with its own width and
feed-forward blocks is the action expert of a mixture-of-transformers: layer
``i`` of the expert attends to its own tokens and to the keys/values that layer
``i`` of the backbone computed for the prefix (``context``). The backbone never
sees the expert's tokens.

Keys/values come back from every call, so the backbone's prefix can be
computed once and reused: by the expert at each flow-matching step, and by
greedy decoding, which writes each new token into a fixed-size ``cache`` at
``write_at`` and attends over the whole buffer under a mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vla_jax import sharding
from vla_jax.models import lora as lora_lib
from vla_jax.models.layers import RMSNorm, param, rotary

KeyValue = tuple[jax.Array, jax.Array]  # each [B, S, kv_heads, head_dim]


def prefix_lm_mask(token_mask: jax.Array, ar_mask: jax.Array) -> jax.Array:
    """``[B, N, N]`` attention mask (query, key) of a prefix-LM.

    Tokens with ``ar_mask`` False form the bidirectional prefix; each token with
    ``ar_mask`` True starts a new causal step, seeing the prefix and the steps
    up to itself. Padding (``token_mask`` False) is never attended to.
    """
    step = jnp.cumsum(ar_mask.astype(jnp.int32), axis=-1)
    return (step[:, None, :] <= step[:, :, None]) & token_mask[:, None, :]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention: ``q [B, N, H, d]``, ``k, v [B, S, K, d]`` (H divisible by K), ``mask [B, N, S]``."""
    b, n, h, d = q.shape
    groups = h // k.shape[2]
    q = q.reshape(b, n, k.shape[2], groups, d)
    logits = jnp.einsum("bnkgd,bskd->bkgns", q, k).astype(jnp.float32) * d**-0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgns,bskd->bnkgd", weights, v).reshape(b, n, h, d)


class DecoderLayer(nnx.Module):
    """Pre-norm attention and feed-forward block; the feed-forward block may be a mixture of experts."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        ffn: nnx.Module,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        lora=None,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        self.attention_norm = RMSNorm(width, rngs=rngs)
        self.query = param(rngs, init, (width, num_heads, head_dim), ("embed", "heads", "head_dim"))
        self.key = param(rngs, init, (width, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
        self.value = param(rngs, init, (width, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"))
        out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.out = param(rngs, out_init, (num_heads, head_dim, width), ("heads", "head_dim", "embed"))
        self.mlp_norm = RMSNorm(width, rngs=rngs)
        self.ffn = ffn
        self.dtype = dtype
        if lora_lib.targets(lora, "attention"):  # see vla_jax.models.lora
            pair = lambda heads, axis: lora_lib.LoRA(  # noqa: E731
                (width,), (heads, head_dim), ("embed",), (axis, "head_dim"), lora, rngs=rngs, dtype=dtype
            )
            self.query_lora, self.key_lora = pair(num_heads, "heads"), pair(num_kv_heads, "kv_heads")
            self.value_lora = pair(num_kv_heads, "kv_heads")
            self.out_lora = lora_lib.LoRA(
                (num_heads, head_dim), (width,), ("heads", "head_dim"), ("embed",), lora, rngs=rngs, dtype=dtype
            )
        else:
            self.query_lora = self.key_lora = self.value_lora = self.out_lora = None

    def __call__(self, x, positions, mask, context, cache, write_at, routing):
        h = self.attention_norm(x).astype(self.dtype)

        def project(w, pair):
            y = jnp.einsum("bnd,dhk->bnhk", h, w[...].astype(self.dtype))
            return y if pair is None else y + pair(h)

        q = rotary(project(self.query, self.query_lora), positions)
        k, v = rotary(project(self.key, self.key_lora), positions), project(self.value, self.value_lora)
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), write_at, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), write_at, axis=1)
        keys, values = k, v
        if context is not None:
            keys = jnp.concatenate([context[0].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([context[1].astype(v.dtype), v], axis=1)
        attended = attend(q, keys, values, mask)
        out = jnp.einsum("bnhk,hkd->bnd", attended, self.out[...].astype(self.dtype))
        x = x + (out if self.out_lora is None else out + self.out_lora(attended))
        y, aux = self.ffn(self.mlp_norm(x), routing)
        x = sharding.constrain(x + y.astype(x.dtype), ("batch", None, "embed"))
        return x, (k, v), aux


class Decoder(nnx.Module):
    """A stack of :class:`DecoderLayer` (one feed-forward module per layer) and a final RMSNorm."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        ffns: Sequence[nnx.Module],
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat: Callable | None = None,
        lora=None,
    ):
        """``lora``: a ``model.lora`` config (LoRA on the attention projections when it targets them)."""
        self.layers = nnx.List(
            [
                DecoderLayer(width, num_heads, num_kv_heads, head_dim, ffn, rngs=rngs, dtype=dtype, lora=lora)
                for ffn in ffns
            ]
        )
        self.norm = RMSNorm(width, rngs=rngs)
        self.remat = remat

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        *,
        context: Sequence[KeyValue] | None = None,
        cache: Sequence[KeyValue] | None = None,
        write_at: jax.Array | int = 0,
        routing=None,
    ) -> tuple[jax.Array, list[KeyValue], list[dict]]:
        """Runs ``x [B, N, width]`` at rotary ``positions [B, N]``.

        ``mask [B, N, S]`` says which keys each token sees, where the keys are
        ``context`` keys (if any) followed by the layer's own: the ``N`` new
        ones, or the whole ``cache`` buffer with the new ones written at
        ``write_at``. Returns the normed output, the per-layer keys/values
        (the updated cache buffers when a cache is given) and the per-layer
        auxiliary outputs of the feed-forward blocks.
        """
        kvs, auxes = [], []
        for i, layer in enumerate(self.layers):
            args = (
                x,
                positions,
                mask,
                None if context is None else context[i],
                None if cache is None else cache[i],
                write_at,
                routing,
            )
            x, kv, aux = layer(*args) if self.remat is None else self.remat(_call_layer)(layer, *args)
            kvs.append(kv)
            auxes.append(aux)
        return self.norm(x), kvs, auxes


def _call_layer(layer, *args):
    return layer(*args)
