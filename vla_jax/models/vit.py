"""SigLIP-style vision encoder: patch embedding, learned positions, pre-norm LayerNorm/GELU blocks."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from vla_jax import sharding
from vla_jax.models.layers import Dense, LayerNorm, param


class SelfAttention(nnx.Module):
    """Bidirectional multi-head attention; projections named ``(embed, heads, head_dim)``."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, dtype=jnp.float32, bias: bool = False):
        """``bias``: biases on the query, key, value and output projections (SigLIP has them)."""
        if width % num_heads:
            raise ValueError(f"vit width {width} is not divisible by num_heads {num_heads}")
        head_dim = width // num_heads
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        shape, axes = (width, num_heads, head_dim), ("embed", "heads", "head_dim")
        self.query, self.key, self.value = (param(rngs, init, shape, axes) for _ in range(3))
        out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.out = param(rngs, out_init, (num_heads, head_dim, width), ("heads", "head_dim", "embed"))
        if bias:
            zeros = nnx.initializers.zeros
            self.query_bias, self.key_bias, self.value_bias = (
                param(rngs, zeros, (num_heads, head_dim), ("heads", "head_dim")) for _ in range(3)
            )
            self.out_bias = param(rngs, zeros, (width,), ("embed",))
        else:
            self.query_bias = self.key_bias = self.value_bias = self.out_bias = None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)

        def project(w, b):
            y = jnp.einsum("bnd,dhk->bnhk", x, w[...].astype(self.dtype))
            return y if b is None else y + b[...].astype(self.dtype)

        q, k, v = (
            project(w, b)
            for w, b in ((self.query, self.query_bias), (self.key, self.key_bias), (self.value, self.value_bias))
        )
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1])
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = jnp.einsum("bhqs,bshk->bqhk", weights, v)
        out = jnp.einsum("bqhk,hkd->bqd", attended, self.out[...].astype(self.dtype))
        return out if self.out_bias is None else out + self.out_bias[...].astype(self.dtype)


class EncoderBlock(nnx.Module):
    def __init__(
        self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, bias: bool = False
    ):
        self.attention_norm = LayerNorm(width, rngs=rngs)
        self.attention = SelfAttention(width, num_heads, rngs=rngs, dtype=dtype, bias=bias)
        self.mlp_norm = LayerNorm(width, rngs=rngs)
        self.mlp_in = Dense(width, mlp_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.mlp_out = Dense(mlp_dim, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x))
        x = x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x)), approximate=True))
        return sharding.constrain(x, ("batch", None, "embed"))


class ViT(nnx.Module):
    """uint8 images ``[B, H, W, 3]`` to tokens ``[B, (H/p)*(W/p), width]`` (SigLIP without the pooling head).

    With ``depth_input``, depth maps ``[B, H, W, 1]`` (float, any non-negative
    unit) go through the same blocks after their own patch embedding of
    ``log(1 + depth)``, which keeps metres and millimetres in a trainable range.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat=None,
        depth_input: bool = False,
        attention_bias: bool = False,
    ):
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by model.vit.patch_size {patch_size}")
        self.patch_size = patch_size
        self.num_tokens = (image_size // patch_size) ** 2
        self.patch_embed = Dense(patch_size * patch_size * 3, width, ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.depth_patch_embed = (
            Dense(patch_size * patch_size, width, ("patch", "embed"), rngs=rngs, dtype=dtype) if depth_input else None
        )
        self.position = param(rngs, nnx.initializers.normal(0.02), (self.num_tokens, width), (None, "embed"))
        self.blocks = nnx.List(
            [EncoderBlock(width, num_heads, mlp_dim, rngs=rngs, dtype=dtype, bias=attention_bias) for _ in range(depth)]
        )
        self.norm = LayerNorm(width, rngs=rngs) if depth else None
        self.remat = remat

    def __call__(self, images: jax.Array, depth: bool = False) -> jax.Array:
        if depth:
            x, embed = jnp.log1p(jnp.maximum(images.astype(jnp.float32), 0.0)), self.depth_patch_embed
        else:
            x, embed = images.astype(jnp.float32) / 127.5 - 1.0, self.patch_embed
        p = self.patch_size
        patches = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
        tokens = embed(patches) + self.position[...].astype(embed.dtype)
        for block in self.blocks:
            tokens = block(tokens) if self.remat is None else self.remat(lambda b, t: b(t))(block, tokens)
        return tokens if self.norm is None else self.norm(tokens)
