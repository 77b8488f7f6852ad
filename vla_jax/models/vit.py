"""Image encoder: patch embedding, learned positions and optional ViT blocks."""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from vla_jax.models.layers import Dense, param
from vla_jax.models.transformer import Encoder


class ViT(nnx.Module):
    """uint8 images ``[B, H, W, 3]`` to tokens ``[B, (H/p)*(W/p), width]``."""

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
    ):
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.patch_size = patch_size
        self.num_tokens = (image_size // patch_size) ** 2
        self.patch_embed = Dense(patch_size * patch_size * 3, width, ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.position = param(rngs, nnx.initializers.normal(0.02), (self.num_tokens, width), (None, "embed"))
        self.encoder = Encoder(depth, width, num_heads, mlp_dim, rngs=rngs, dtype=dtype) if depth else None

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 127.5 - 1.0
        p = self.patch_size
        patches = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
        tokens = self.patch_embed(patches) + self.position[...]
        if self.encoder is not None:
            tokens = self.encoder(tokens, jnp.ones(tokens.shape[:2], bool))
        return tokens
