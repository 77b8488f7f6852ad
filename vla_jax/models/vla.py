"""The VLA policy: camera and text tokens into one transformer, actions out.

``model.mode`` picks how actions are produced:

- ``"fast"`` (π0-FAST): ``[camera tokens] [prompt tokens]``, where the prompt
  (see :mod:`vla_jax.tokenizers.prompt`) holds the instruction and discretized
  state as a bidirectional prefix and the action tokens as a causal postfix.
  Trained with next-token cross-entropy on the postfix; actions come from
  greedy decoding (:meth:`VLA.generate`) and the action tokenizer.
- ``"regression"``: ``[camera tokens] [word-hash text tokens] [state token]
  [readout tokens]``, all bidirectional; the pooled readouts are mapped by an
  MLP head to an action chunk ``[horizon, action_dim]`` in normalized units,
  trained with a squared error masked by the chunk's padding mask.

A missing camera's tokens and text padding are always masked out.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vla_jax import sharding
from vla_jax.models.layers import Dense, param
from vla_jax.models.transformer import Encoder
from vla_jax.models.vit import ViT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODES = ("fast", "regression")


@dataclasses.dataclass(frozen=True)
class IOShapes:
    """What the data gives the model, fixed by the data config, dataset spec and tokenizers.

    In ``fast`` mode ``text_vocab_size`` and ``text_length`` are the prompt
    tokenizer's vocabulary and ``max_length``.
    """

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
        if model.mode not in MODES:
            raise ValueError(f"config key 'model.mode' is {model.mode!r}; expected one of {list(MODES)}")
        dtype = DTYPES[model.dtype]
        width = model.width
        self.io, self.mode = io, model.mode
        self.vit = ViT(
            io.image_size, model.patch_size, width, model.vit_depth, model.num_heads, model.mlp_dim,
            rngs=rngs, dtype=dtype,
        )  # fmt: skip
        self.camera_embed = param(rngs, nnx.initializers.normal(0.02), (len(io.cameras), width), (None, "embed"))
        self.text_embed = param(rngs, nnx.initializers.normal(0.02), (io.text_vocab_size, width), ("vocab", "embed"))
        self.text_position = param(rngs, nnx.initializers.normal(0.02), (io.text_length, width), (None, "embed"))
        self.encoder = Encoder(model.depth, width, model.num_heads, model.mlp_dim, rngs=rngs, dtype=dtype)
        if self.mode == "regression":
            self.state_proj = Dense(io.state_dim, width, (None, "embed"), rngs=rngs, dtype=dtype)
            self.readouts = param(rngs, nnx.initializers.normal(0.02), (model.num_readouts, width), (None, "embed"))
            self.head_hidden = Dense(width, model.mlp_dim, ("embed", "mlp"), rngs=rngs, dtype=dtype)
            out_dim = io.action_horizon * io.action_dim
            self.head_out = Dense(model.mlp_dim, out_dim, ("mlp", None), rngs=rngs, dtype=dtype)

    def _camera_tokens(self, batch: dict[str, jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        tokens, masks = [], []
        for i, role in enumerate(self.io.cameras):
            image_tokens = self.vit(batch[f"image_{role}"]) + self.camera_embed[i]
            tokens.append(image_tokens)
            masks.append(jnp.broadcast_to(batch[f"image_{role}_mask"][:, None], image_tokens.shape[:2]))
        return tokens, masks

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Regression mode: predicted normalized action chunks ``[B, horizon, action_dim]``."""
        if self.mode != "regression":
            raise ValueError(f"model.mode {self.mode!r} predicts actions with generate(), not __call__")
        tokens, masks = self._camera_tokens(batch)
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

    def prompt_logits(
        self, batch: dict[str, jax.Array], tokens: jax.Array, token_mask: jax.Array, ar_mask: jax.Array
    ) -> jax.Array:
        """Fast mode: next-token logits ``[B, N, vocab]`` (fp32) at each of the ``N`` prompt positions.

        Positions count real tokens only, so a prompt whose postfix follows padding
        (as during generation) is encoded like the packed training prompt.
        """
        image_tokens, image_masks = self._camera_tokens(batch)
        position = jnp.clip(jnp.cumsum(token_mask, axis=-1) - 1, 0, self.io.text_length - 1)
        text = jnp.take(self.text_embed[...], tokens, axis=0) + jnp.take(self.text_position[...], position, axis=0)
        x = jnp.concatenate([t.astype(image_tokens[0].dtype) for t in (*image_tokens, text)], axis=1)
        x = sharding.constrain(x, ("batch", None, "embed"))
        masks = jnp.concatenate([*image_masks, token_mask], axis=1)
        ar = jnp.concatenate([jnp.zeros(m.shape, bool) for m in image_masks] + [ar_mask], axis=1)
        x = self.encoder(x, masks, ar)[:, -tokens.shape[1] :]
        return jnp.einsum("bnd,vd->bnv", x, self.text_embed[...].astype(x.dtype)).astype(jnp.float32)

    def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Fast: cross-entropy of the postfix tokens. Regression: masked MSE in normalized units."""
        if self.mode == "regression":
            predicted = self(batch)
            metrics = action_errors(predicted, batch["actions"], action_weight(batch))
            return metrics["mse"], metrics
        tokens = batch["prompt_tokens"]
        logits = self.prompt_logits(batch, tokens, batch["prompt_mask"], batch["prompt_ar_mask"])[:, :-1]
        targets, weight = tokens[:, 1:], batch["prompt_loss_mask"][:, 1:].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        count = jnp.maximum(weight.sum(), 1.0)
        ce = (losses * weight).sum() / count
        accuracy = ((jnp.argmax(logits, -1) == targets) * weight).sum() / count
        truncated = batch["prompt_truncated"].astype(jnp.float32).mean()
        return ce, {"token_ce": ce, "token_accuracy": accuracy, "prompt_truncated_fraction": truncated}

    def generate(self, batch: dict[str, jax.Array], num_tokens: int, eos_id: int) -> jax.Array:
        """Fast mode: greedy postfix ids ``[B, num_tokens]`` after each prompt's prefix.

        The prefix is the part of ``prompt_tokens`` with ``prompt_ar_mask`` False
        (any postfix in the batch is ignored). Each step runs the whole sequence;
        a row stops at its EOS (later ids are EOS) and the loop ends when every
        row has stopped.
        """
        prefix_mask = batch["prompt_mask"] & ~batch["prompt_ar_mask"]
        rows, length = prefix_mask.shape
        tokens = jnp.concatenate([batch["prompt_tokens"], jnp.zeros((rows, num_tokens), jnp.int32)], axis=1)
        last = jnp.sum(prefix_mask, axis=1) - 1  # where the first postfix id is predicted

        def step(carry):
            i, tokens, done = carry
            written = jnp.broadcast_to(jnp.arange(num_tokens)[None, :] < i, (rows, num_tokens))
            mask = jnp.concatenate([prefix_mask, written], axis=1)
            ar = jnp.concatenate([jnp.zeros_like(prefix_mask), mask[:, length:]], axis=1)
            logits = self.prompt_logits(batch, tokens, mask, ar)
            where = jnp.where(i == 0, last, length + i - 1)
            next_id = jnp.argmax(jnp.take_along_axis(logits, where[:, None, None], axis=1)[:, 0], axis=-1)
            next_id = jnp.where(done, eos_id, next_id).astype(jnp.int32)
            tokens = tokens.at[:, length + i].set(next_id)
            return i + 1, tokens, done | (next_id == eos_id)

        def running(carry):
            i, _, done = carry
            return (i < num_tokens) & ~jnp.all(done)

        done = jnp.zeros((rows,), bool)
        i, tokens, done = jax.lax.while_loop(running, step, (jnp.int32(0), tokens, done))
        generated = tokens[:, length:]
        return jnp.where(jnp.arange(num_tokens)[None, :] < i, generated, eos_id)


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
