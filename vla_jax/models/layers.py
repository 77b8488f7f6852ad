"""Small building blocks shared by the models."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
    """An fp32 parameter with logical axis names."""
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(axes))


class Dense(nnx.Module):
    """``x @ kernel + bias`` over the last axis, kernel named ``axes``."""

    def __init__(
        self, d_in: int, d_out: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs, dtype=jnp.float32
    ):
        self.kernel = param(rngs, nnx.initializers.lecun_normal(), (d_in, d_out), axes)
        self.bias = param(rngs, nnx.initializers.zeros, (d_out,), axes[1:])
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype)) + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm computed in fp32, cast back to the input dtype."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.scale = param(rngs, nnx.initializers.ones, (width,), ("embed",))
        self.bias = param(rngs, nnx.initializers.zeros, (width,), ("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)
