"""The VLA policy: a SigLIP-style ViT and a Gemma-style backbone, with a flow-matching action expert.

Sequence: ``[camera tokens] [prompt tokens]``, where the prompt (see
:mod:`vla_jax.tokenizers.prompt`) holds the instruction and discretized state
as a bidirectional prefix and, when the run trains on FAST tokens, the action
tokens as a causal postfix. ``model.mode`` picks what is trained:

- ``"fast"`` (π0-FAST): next-token cross-entropy on the postfix; actions come
  from greedy decoding with a KV cache (:meth:`VLA.generate`).
- ``"flow"`` (π0): the action expert, a second decoder with its own weights
  (and HiMoE feed-forward blocks), attends layer by layer to the backbone's
  prefix keys/values and predicts the flow-matching velocity of the action
  chunk; actions come from ``flow.num_steps`` Euler steps
  (:meth:`VLA.sample_actions`).
- ``"fast+flow"``: both losses. With ``flow.knowledge_insulation`` the
  expert's loss sends no gradient into the backbone. Inference uses the expert.

A missing camera's tokens and prompt padding are never attended to, and the
expert never sees the FAST postfix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vla_jax import sharding
from vla_jax.errors import ConfigError
from vla_jax.models import lora as lora_lib
from vla_jax.models import moe
from vla_jax.models.action_expert import ActionExpert, euler_sample, noisy_chunks, start_noise
from vla_jax.models.layers import Dense, param
from vla_jax.models.transformer import Decoder, prefix_lm_mask
from vla_jax.models.vit import ViT
from vla_jax.observation import Batch, IOShapes, Observation, check_batch

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODES = ("fast", "flow", "fast+flow")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _remat(name: str):
    if name not in REMAT_POLICIES:
        raise ConfigError(f"config key 'model.remat' is {name!r}; expected one of {sorted(REMAT_POLICIES)}")
    policy = REMAT_POLICIES[name]
    return None if name == "none" else functools.partial(nnx.remat, policy=policy)


def uses_fast(mode: str) -> bool:
    return mode in ("fast", "fast+flow")


def uses_flow(mode: str) -> bool:
    return mode in ("flow", "fast+flow")


class VLA(nnx.Module):
    def __init__(self, model: ml_collections.ConfigDict, io: IOShapes, *, rngs: nnx.Rngs):
        if model.dtype not in DTYPES:
            raise ConfigError(f"config key 'model.dtype' is {model.dtype!r}; expected one of {sorted(DTYPES)}")
        if model.mode not in MODES:
            raise ConfigError(f"config key 'model.mode' is {model.mode!r}; expected one of {list(MODES)}")
        dtype, remat = DTYPES[model.dtype], _remat(model.remat)
        vit, bb = model.vit, model.backbone
        self.io, self.mode, self.dtype = io, model.mode, dtype
        self.vit = ViT(
            io.image_size, vit.patch_size, vit.width, vit.depth, vit.num_heads, vit.mlp_dim,
            rngs=rngs, dtype=dtype, remat=remat, depth_input=bool(io.depth_cameras),
            attention_bias=vit.get("attention_bias", False),
        )  # fmt: skip
        self.image_proj = Dense(vit.width, bb.width, ("vit_embed", "embed"), rngs=rngs, dtype=dtype)
        embed_init = nnx.initializers.normal(bb.width**-0.5)
        self.embed = param(rngs, embed_init, (io.text_vocab_size, bb.width), ("vocab", "embed"))
        attention = (bb.num_heads, bb.num_kv_heads, bb.head_dim)
        lora = model.get("lora")
        lora_pair = (
            functools.partial(lora_lib.LoRA, cfg=lora, rngs=rngs, dtype=dtype)
            if lora_lib.targets(lora, "mlp")
            else None
        )
        ffns = [
            moe.DenseFFN(bb.width, bb.mlp_dim, activation="gelu", rngs=rngs, dtype=dtype, lora_pair=lora_pair)
            for _ in range(bb.depth)
        ]
        self.backbone = Decoder(bb.width, *attention, ffns, rngs=rngs, dtype=dtype, remat=remat, lora=lora)
        if uses_flow(self.mode):
            self.action_expert = ActionExpert(
                model.expert, bb, action_dim=io.action_dim, num_action_spaces=io.num_action_spaces,
                state_dim=io.state_dim, rngs=rngs, dtype=dtype, remat=remat,
            )  # fmt: skip
            self.flow_steps, self.flow_loss_weight = model.flow.num_steps, model.flow.loss_weight
            self.knowledge_insulation = model.flow.knowledge_insulation

    # -- the prefix (cameras + prompt) through the backbone -------------------------------------------------------

    def embed_prompt(self, obs: Observation, tokens: jax.Array, token_mask: jax.Array, ar_mask: jax.Array):
        """Image-stream and prompt embeddings ``[B, S, width]`` with their token mask, ar mask and rotary positions.

        Every image stream (cameras, depth cameras, goal images; see
        ``IOShapes.image_streams``) becomes one group of ViT tokens, in order.
        Positions count real tokens only, so a missing camera or prompt padding
        leaves no gap.
        """
        pieces, masks = [], []
        for name, channels in self.io.image_streams:
            image_tokens = self.image_proj(self.vit(obs.images[name], depth=channels == 1))
            pieces.append(image_tokens)
            masks.append(jnp.broadcast_to(obs.image_masks[name][:, None], image_tokens.shape[:2]))
        pieces.append(self.embed_tokens(tokens))
        masks.append(token_mask)
        x = sharding.constrain(
            jnp.concatenate([p.astype(self.dtype) for p in pieces], axis=1), ("batch", None, "embed")
        )
        mask = jnp.concatenate(masks, axis=1)
        ar = jnp.concatenate([jnp.zeros(m.shape, bool) for m in masks[:-1]] + [ar_mask], axis=1)
        positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        return x, mask, ar, positions

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings scaled by ``sqrt(width)`` (Gemma), in the compute dtype."""
        width = self.embed.shape[1]
        return jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype) * jnp.sqrt(width).astype(self.dtype)

    def logits(self, x: jax.Array) -> jax.Array:
        """Next-token logits (fp32) from backbone outputs; the output layer is the tied embedding."""
        return jnp.einsum("bnd,vd->bnv", x, self.embed[...].astype(x.dtype)).astype(jnp.float32)

    def prompt_logits(
        self, obs: Observation, tokens: jax.Array, token_mask: jax.Array, ar_mask: jax.Array
    ) -> jax.Array:
        """Next-token logits ``[B, N, vocab]`` at each of the ``N`` prompt positions (full forward pass)."""
        x, mask, ar, positions = self.embed_prompt(obs, tokens, token_mask, ar_mask)
        out, _, _ = self.backbone(x, positions, prefix_lm_mask(mask, ar))
        return self.logits(out[:, -tokens.shape[1] :])

    # -- the action expert ----------------------------------------------------------------------------------------

    def _routing(self, obs: Observation) -> dict:
        return {
            "token_weight": jnp.ones((obs.batch_size, self.io.action_horizon), jnp.float32),
            "action_space": obs.action_space,
            "action_dim_mask": obs.action_dim_mask,
        }

    def _prefix_context(self, obs: Observation):
        """Backbone outputs, per-layer keys/values and the masks of the whole prompt in the batch."""
        x, mask, ar, positions = self.embed_prompt(obs, obs.prompt_tokens, obs.prompt_mask, obs.prompt_ar_mask)
        out, kvs, _ = self.backbone(x, positions, prefix_lm_mask(mask, ar))
        prefix = mask & ~ar  # the expert never sees a FAST postfix
        return out, kvs, prefix, jnp.sum(prefix, axis=-1)

    # -- training -------------------------------------------------------------------------------------------------

    def loss(self, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Cross-entropy on the FAST postfix and/or flow-matching MSE, plus the MoE auxiliary losses.

        ``metrics["example_loss"] [B]`` is each example's own loss (without the
        auxiliary terms), for losses per dataset.
        """
        check_batch(batch, self.io)
        obs = batch.observation
        out, kvs, prefix, prefix_length = self._prefix_context(obs)
        metrics: dict = {"prompt_truncated_fraction": batch.prompt_truncated.astype(jnp.float32).mean()}
        total = jnp.zeros((), jnp.float32)
        per_example = jnp.zeros(batch.actions.shape[:1], jnp.float32)  # for per-dataset losses
        if uses_fast(self.mode):
            tokens = obs.prompt_tokens
            logits = self.logits(out[:, -tokens.shape[1] :])[:, :-1]
            targets, weight = tokens[:, 1:], batch.prompt_loss_mask[:, 1:].astype(jnp.float32)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            count = jnp.maximum(weight.sum(), 1.0)
            ce = (losses * weight).sum() / count
            accuracy = ((jnp.argmax(logits, -1) == targets) * weight).sum() / count
            metrics.update(token_ce=ce, token_accuracy=accuracy)
            total = total + ce
            per_example += (losses * weight).sum(-1) / jnp.maximum(weight.sum(-1), 1.0)
        if uses_flow(self.mode):
            if self.knowledge_insulation:
                kvs = jax.lax.stop_gradient(kvs)
            noisy, time, target = noisy_chunks(rng, batch.actions)
            predicted, auxes = self.action_expert(
                noisy, time, kvs, prefix, prefix_length, self._routing(obs), obs.state
            )  # fmt: skip
            weight = action_weight(batch)
            flow_mse = action_errors(predicted, target, weight)["mse"]
            squared = (jnp.square(predicted - target) * weight).sum((1, 2))
            per_example += self.flow_loss_weight * squared / jnp.maximum(weight.sum((1, 2)), 1.0)
            aux_loss, moe_metrics = moe.summarize_aux(auxes)
            metrics.update(moe_metrics, flow_mse=flow_mse, moe_aux_loss=aux_loss)
            total = total + self.flow_loss_weight * flow_mse + aux_loss
        metrics["example_loss"] = per_example
        return total, metrics

    # -- inference ------------------------------------------------------------------------------------------------

    def sample_actions(
        self, obs: Observation, rng: jax.Array, num_steps: int | None = None, row_seeds: jax.Array | None = None
    ) -> jax.Array:
        """Flow modes: normalized action chunks ``[B, H, A]`` by Euler integration from noise (t=1) to data (t=0).

        Row ``i`` starts from noise of ``fold_in(rng, row_seeds[i])`` (default
        seeds ``0..B-1``; see :func:`start_noise`). The backbone runs once; each
        step runs only the expert. Any FAST postfix in the batch's prompt is ignored.
        """
        check_batch(obs, self.io, "observation")
        num_steps = num_steps or self.flow_steps
        _, kvs, prefix, prefix_length = self._prefix_context(obs)
        routing = self._routing(obs)
        rows = prefix.shape[0]
        row_seeds = jnp.arange(rows, dtype=jnp.int32) if row_seeds is None else row_seeds
        noise = start_noise(rng, row_seeds, self.io.action_horizon, self.io.action_dim)

        def velocity(x, time):
            return self.action_expert(x, time, kvs, prefix, prefix_length, routing, obs.state)[0]

        return euler_sample(velocity, noise, num_steps)

    def generate(self, obs: Observation, num_tokens: int, eos_id: int) -> jax.Array:
        """FAST modes: greedy postfix ids ``[B, num_tokens]`` after each prompt's prefix, with a KV cache.

        The prefix is the part of ``prompt_tokens`` with ``prompt_ar_mask``
        False (any postfix in the batch is ignored); it fills the cache once,
        then each step runs one token. A row stops at its EOS (later ids are
        EOS) and the loop ends when every row has stopped.
        """
        check_batch(obs, self.io, "observation")
        prefix_tokens = obs.prompt_mask & ~obs.prompt_ar_mask
        x, mask, _, positions = self.embed_prompt(obs, obs.prompt_tokens, prefix_tokens, jnp.zeros_like(prefix_tokens))
        b, length = mask.shape
        size = length + num_tokens
        bb = self.backbone.layers[0]
        kv_shape = (b, size, bb.key.shape[1], bb.key.shape[2])
        cache = [(jnp.zeros(kv_shape, self.dtype), jnp.zeros(kv_shape, self.dtype)) for _ in self.backbone.layers]
        key_mask = jnp.concatenate([mask, jnp.zeros((b, num_tokens), bool)], axis=1)
        out, cache, _ = self.backbone(x, positions, mask[:, :, None] & key_mask[:, None, :], cache=cache, write_at=0)
        last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # the last real prefix token predicts the first id
        first = jnp.argmax(self.logits(jnp.take_along_axis(out, last[:, None, None], axis=1))[:, 0], axis=-1)
        first = first.astype(jnp.int32)
        tokens = jnp.full((b, num_tokens), eos_id, jnp.int32).at[:, 0].set(first)
        next_position = jnp.sum(mask, axis=1)

        def step(carry):
            i, tokens, cache, done = carry
            written = jnp.arange(num_tokens)[None, :] <= i
            keys = jnp.concatenate([mask, jnp.broadcast_to(written, (b, num_tokens))], axis=1)
            out, cache, _ = self.backbone(
                self.embed_tokens(tokens[:, i][:, None]),
                (next_position + i)[:, None],
                keys[:, None, :],
                cache=cache,
                write_at=length + i,
            )
            next_id = jnp.argmax(self.logits(out)[:, 0], axis=-1).astype(jnp.int32)
            next_id = jnp.where(done, eos_id, next_id)
            return i + 1, tokens.at[:, i + 1].set(next_id), cache, done | (next_id == eos_id)

        def running(carry):
            i, _, _, done = carry
            return (i + 1 < num_tokens) & ~jnp.all(done)

        _, tokens, _, _ = jax.lax.while_loop(running, step, (jnp.int32(0), tokens, cache, first == eos_id))
        return tokens

    def generate_uncached(self, obs: Observation, num_tokens: int, eos_id: int) -> jax.Array:
        """The same greedy decoding as :meth:`generate` by full forward passes (the reference; slow)."""
        prefix_mask = obs.prompt_mask & ~obs.prompt_ar_mask
        rows, length = prefix_mask.shape
        tokens = jnp.concatenate([obs.prompt_tokens, jnp.zeros((rows, num_tokens), jnp.int32)], axis=1)
        last = jnp.sum(prefix_mask, axis=1) - 1  # where the first postfix id is predicted

        def step(carry):
            i, tokens, done = carry
            written = jnp.broadcast_to(jnp.arange(num_tokens)[None, :] < i, (rows, num_tokens))
            mask = jnp.concatenate([prefix_mask, written], axis=1)
            ar = jnp.concatenate([jnp.zeros_like(prefix_mask), mask[:, length:]], axis=1)
            logits = self.prompt_logits(obs, tokens, mask, ar)
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


def action_weight(batch: Batch) -> jax.Array:
    """1 where a target counts: a real chunk step (not end-of-episode padding) and a real dim (not width padding)."""
    return (batch.action_mask[:, :, None] & batch.observation.action_dim_mask[:, None, :]).astype(jnp.float32)


def action_errors(predicted: jax.Array, target: jax.Array, weight: jax.Array) -> dict[str, jax.Array]:
    """Mean squared and mean absolute error over the entries where ``weight`` is 1."""
    count = jnp.maximum(weight.sum(), 1.0)
    diff = predicted - target
    return {"mse": (jnp.square(diff) * weight).sum() / count, "mae": (jnp.abs(diff) * weight).sum() / count}


def dropless(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``model_config`` with every capacity-dispatched MoE layer dispatched dropless (``ragged``; same parameters).

    What predictions use (validation and inference): with capacity buffers a
    row's output would depend on the other rows of its batch and on how many
    devices share it; dropless, it depends on the row alone.
    """
    out = ml_collections.ConfigDict(model_config.to_dict())
    moe_config = out.expert.moe
    for key in ("as_dispatch", "hb_dispatch"):
        if moe_config[key] == "capacity":
            moe_config[key] = "ragged"
    return out


def build_model(model_config: ml_collections.ConfigDict, io: IOShapes, seed: int) -> VLA:
    """A freshly initialized model (variables unsharded; see ``training.state``)."""
    with nnx.use_eager_sharding(False):
        return VLA(model_config, io, rngs=nnx.Rngs(params=seed))
