"""Small building blocks shared by the models: parameters with logical axes, norms, MLPs, rotary positions."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=True), "swish": jax.nn.swish}


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
    """An fp32 parameter with logical axis names."""
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(axes))


class Dense(nnx.Module):
    """``x @ kernel (+ bias)`` over the last axis, kernel named ``axes``."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        axes: tuple[str | None, str | None],
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        use_bias: bool = True,
    ):
        self.kernel = param(rngs, nnx.initializers.lecun_normal(), (d_in, d_out), axes)
        self.bias = param(rngs, nnx.initializers.zeros, (d_out,), axes[1:]) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


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


class RMSNorm(nnx.Module):
    """Gemma's RMSNorm: ``x / rms(x) * (1 + scale)`` in fp32, scale initialized at 0."""

    def __init__(self, width: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.scale = param(rngs, nnx.initializers.zeros, (width,), ("embed",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (y * (1.0 + self.scale[...])).astype(x.dtype)


class GatedMLP(nnx.Module):
    """``down(act(x @ gate) * (x @ up))``: GeGLU with ``gelu``, SwiGLU with ``swish``; no biases."""

    def __init__(self, width: int, hidden: int, *, activation: str, rngs: nnx.Rngs, dtype=jnp.float32, lora_pair=None):
        """``lora_pair(in_shape, out_shape, in_axes, out_axes)``: a LoRA pair per weight (``vla_jax.models.lora``)."""
        init = nnx.initializers.lecun_normal()
        self.gate = param(rngs, init, (width, hidden), ("embed", "mlp"))
        self.up = param(rngs, init, (width, hidden), ("embed", "mlp"))
        self.down = param(rngs, init, (hidden, width), ("mlp", "embed"))
        self.activation, self.dtype = activation, dtype
        if lora_pair is not None:
            self.gate_lora = lora_pair((width,), (hidden,), ("embed",), ("mlp",))
            self.up_lora = lora_pair((width,), (hidden,), ("embed",), ("mlp",))
            self.down_lora = lora_pair((hidden,), (width,), ("mlp",), ("embed",))
        else:
            self.gate_lora = self.up_lora = self.down_lora = None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        gate, up, down = (w[...].astype(self.dtype) for w in (self.gate, self.up, self.down))
        if self.gate_lora is None:
            return jnp.dot(ACTIVATIONS[self.activation](jnp.dot(x, gate)) * jnp.dot(x, up), down)
        hidden = ACTIVATIONS[self.activation](jnp.dot(x, gate) + self.gate_lora(x)) * (jnp.dot(x, up) + self.up_lora(x))
        return jnp.dot(hidden, down) + self.down_lora(hidden)


def rotary(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
    """Rotary position embedding of ``x [B, N, heads, head_dim]`` at integer ``positions [B, N]`` (fp32 math)."""
    half = x.shape[-1] // 2
    inverse_frequency = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[:, :, None, None] * inverse_frequency
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1).astype(x.dtype)


def sinusoidal_embedding(t: jax.Array, width: int, min_period: float = 4e-3, max_period: float = 4.0) -> jax.Array:
    """Sine/cosine features ``[B, width]`` of scalars ``t [B]`` in [0, 1] (the flow-matching time)."""
    fraction = jnp.linspace(0.0, 1.0, width // 2)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.astype(jnp.float32)[:, None] / period[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
