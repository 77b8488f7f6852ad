"""The VLA policy: image, text and state tokens into one transformer, actions out.

Token layout per example::

    [camera tokens per role] [text tokens] [state token] [readout tokens]

All tokens attend to all non-padding tokens (a missing camera's tokens and
text padding are masked out). The readout tokens are pooled and mapped by an
MLP head to an action chunk ``[horizon, action_dim]`` in normalized units,
trained with a squared error masked by the chunk's padding mask.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vla_jax import sharding
from vla_jax.models.layers import Dense, param
from vla_jax.models.transformer import Encoder
from vla_jax.models.vit import ViT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class IOShapes:
    """What the data gives the model, fixed by the data config and dataset spec."""

    cameras: tuple[str, ...]
    image_size: int
    text_vocab_size: int
    text_length: int
    state_dim: int
    action_dim: int
    action_horizon: int


class VLA(nnx.Module):
    def __init__(self, model: ml_collections.ConfigDict, io: IOShapes, *, rngs: nnx.Rngs):
        if model.dtype not in DTYPES:
            raise ValueError(f"config key 'model.dtype' is {model.dtype!r}; expected one of {sorted(DTYPES)}")
        dtype = DTYPES[model.dtype]
        width = model.width
        self.io = io
        self.vit = ViT(
            io.image_size, model.patch_size, width, model.vit_depth, model.num_heads, model.mlp_dim,
            rngs=rngs, dtype=dtype,
        )  # fmt: skip
        self.camera_embed = param(rngs, nnx.initializers.normal(0.02), (len(io.cameras), width), (None, "embed"))
        self.text_embed = param(rngs, nnx.initializers.normal(0.02), (io.text_vocab_size, width), ("vocab", "embed"))
        self.text_position = param(rngs, nnx.initializers.normal(0.02), (io.text_length, width), (None, "embed"))
        self.state_proj = Dense(io.state_dim, width, (None, "embed"), rngs=rngs, dtype=dtype)
        self.readouts = param(rngs, nnx.initializers.normal(0.02), (model.num_readouts, width), (None, "embed"))
        self.encoder = Encoder(model.depth, width, model.num_heads, model.mlp_dim, rngs=rngs, dtype=dtype)
        self.head_hidden = Dense(width, model.mlp_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.head_out = Dense(model.mlp_dim, io.action_horizon * io.action_dim, ("mlp", None), rngs=rngs, dtype=dtype)

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Predicted normalized action chunks ``[B, horizon, action_dim]``."""
        tokens, masks = [], []
        for i, role in enumerate(self.io.cameras):
            image_tokens = self.vit(batch[f"image_{role}"]) + self.camera_embed[i]
            tokens.append(image_tokens)
            masks.append(jnp.broadcast_to(batch[f"image_{role}_mask"][:, None], image_tokens.shape[:2]))
        text = jnp.take(self.text_embed[...], batch["text_ids"], axis=0) + self.text_position[...]
        tokens.append(text)
        masks.append(batch["text_mask"])
        tokens.append(self.state_proj(batch["state"])[:, None])
        batch_size = batch["state"].shape[0]
        readouts = jnp.broadcast_to(self.readouts[...], (batch_size, *self.readouts.shape))
        tokens.append(readouts)
        masks.append(jnp.ones((batch_size, 1 + readouts.shape[1]), bool))
        x = jnp.concatenate([t.astype(tokens[0].dtype) for t in tokens], axis=1)
        x = sharding.constrain(x, ("batch", None, "embed"))
        x = self.encoder(x, jnp.concatenate(masks, axis=1))
        pooled = x[:, -readouts.shape[1] :].mean(axis=1)
        out = self.head_out(jax.nn.gelu(self.head_hidden(pooled))).astype(jnp.float32)
        return out.reshape(batch_size, self.io.action_horizon, self.io.action_dim)

    def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Masked mean squared error in normalized action units, plus metrics."""
        predicted = self(batch)
        metrics = action_errors(predicted, batch["actions"], action_weight(batch))
        return metrics["mse"], metrics


def action_weight(batch: dict[str, jax.Array]) -> jax.Array:
    """1 where a target counts: a real chunk step (not end-of-episode padding) and a real dim (not width padding)."""
    return (batch["action_mask"][:, :, None] & batch["action_dim_mask"][:, None, :]).astype(jnp.float32)


def action_errors(predicted: jax.Array, target: jax.Array, weight: jax.Array) -> dict[str, jax.Array]:
    """Mean squared and mean absolute error over the entries where ``weight`` is 1."""
    count = jnp.maximum(weight.sum(), 1.0)
    diff = predicted - target
    return {"mse": (jnp.square(diff) * weight).sum() / count, "mae": (jnp.abs(diff) * weight).sum() / count}


def build_model(model_config: ml_collections.ConfigDict, io: IOShapes, seed: int) -> VLA:
    """A freshly initialized model (variables unsharded; see ``training.state``)."""
    with nnx.use_eager_sharding(False):
        return VLA(model_config, io, rngs=nnx.Rngs(params=seed))
