"""A pre-norm transformer with key padding masks and optional prefix-LM (causal postfix) masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vla_jax import sharding
from vla_jax.models.layers import Dense, LayerNorm, param


class Attention(nnx.Module):
    """Multi-head self-attention; projections named ``(embed, heads, head_dim)``."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        shape, axes = (width, num_heads, head_dim), ("embed", "heads", "head_dim")
        self.query = param(rngs, init, shape, axes)
        self.key = param(rngs, init, shape, axes)
        self.value = param(rngs, init, shape, axes)
        out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.out = param(rngs, out_init, (num_heads, head_dim, width), ("heads", "head_dim", "embed"))
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """``x [B, N, D]``, ``mask [B, N, N]`` (True = may attend)."""
        x = x.astype(self.dtype)
        q, k, v = (
            jnp.einsum("bnd,dhk->bnhk", x, w[...].astype(self.dtype)) for w in (self.query, self.key, self.value)
        )
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
        logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = jnp.einsum("bhqs,bshk->bqhk", weights, v)
        return jnp.einsum("bqhk,hkd->bqd", attended, self.out[...].astype(self.dtype))


class Block(nnx.Module):
    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.attention_norm = LayerNorm(width, rngs=rngs)
        self.attention = Attention(width, num_heads, rngs=rngs, dtype=dtype)
        self.mlp_norm = LayerNorm(width, rngs=rngs)
        self.mlp_in = Dense(width, mlp_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.mlp_out = Dense(mlp_dim, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x), mask)
        x = x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))
        return sharding.constrain(x, ("batch", None, "embed"))


class Encoder(nnx.Module):
    """``depth`` pre-norm blocks and a final norm."""

    def __init__(self, depth: int, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.blocks = nnx.List([Block(width, num_heads, mlp_dim, rngs=rngs, dtype=dtype) for _ in range(depth)])
        self.norm = LayerNorm(width, rngs=rngs)

    def __call__(self, x: jax.Array, token_mask: jax.Array, ar_mask: jax.Array | None = None) -> jax.Array:
        """``token_mask [B, N]``: padding tokens are never attended to. ``ar_mask``: see :func:`prefix_lm_mask`."""
        if ar_mask is None:
            mask = jnp.broadcast_to(token_mask[:, None, :], (*token_mask.shape, token_mask.shape[-1]))
        else:
            mask = prefix_lm_mask(token_mask, ar_mask)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def prefix_lm_mask(token_mask: jax.Array, ar_mask: jax.Array) -> jax.Array:
    """``[B, N, N]`` attention mask (query, key) of a prefix-LM.

    Tokens with ``ar_mask`` False form the bidirectional prefix; each token with
    ``ar_mask`` True starts a new causal step, seeing the prefix and the steps
    up to itself. Padding (``token_mask`` False) is never attended to.
    """
    step = jnp.cumsum(ar_mask.astype(jnp.int32), axis=-1)
    return (step[:, None, :] <= step[:, :, None]) & token_mask[:, None, :]
