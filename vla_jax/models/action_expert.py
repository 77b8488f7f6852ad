"""The π0-style flow-matching action expert: a second decoder beside the backbone, with HiMoE blocks.

Its layer ``i`` attends to its own action tokens and to the prefix
keys/values of backbone layer ``i`` (``context``); the backbone never attends
to it. Flow matching follows π0: ``x_t = t * noise + (1 - t) * actions`` with
``t`` from a Beta(1.5, 1) sample mapped into (0.001, 1), target velocity
``noise - actions``, and Euler steps from ``t = 1`` down to 0 at inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vla_jax.models import moe
from vla_jax.models.layers import Dense, sinusoidal_embedding
from vla_jax.models.transformer import Decoder


class ActionExpert(nnx.Module):
    """Noisy action chunk ``[B, H, A]`` and time ``[B]`` to velocity ``[B, H, A]``."""

    def __init__(
        self,
        expert: ml_collections.ConfigDict,
        backbone: ml_collections.ConfigDict,
        *,
        action_dim: int,
        num_action_spaces: int,
        state_dim: int = 0,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        remat=None,
    ):
        plan = tuple(expert.plan) or moe.default_plan(backbone.depth)
        if len(plan) != backbone.depth:
            raise ValueError(
                f"config key 'model.expert.plan' has {len(plan)} entries; the backbone has {backbone.depth} layers"
            )
        for key in ("as_dispatch", "hb_dispatch"):
            if expert.moe[key] not in moe.DISPATCHES:
                raise ValueError(
                    f"config key 'model.expert.moe.{key}' is {expert.moe[key]!r}; expected one of {moe.DISPATCHES}"
                )
        width = expert.width
        ffns = [
            moe.build_ffn(
                kind, width, expert, num_spaces=num_action_spaces, action_dim=action_dim, rngs=rngs, dtype=dtype
            )
            for kind in plan
        ]
        attention = (backbone.num_heads, backbone.num_kv_heads, backbone.head_dim)
        self.plan = plan
        self.decoder = Decoder(width, *attention, ffns, rngs=rngs, dtype=dtype, remat=remat)
        self.action_in = Dense(action_dim, width, (None, "embed"), rngs=rngs, dtype=dtype)
        self.time_mix = Dense(2 * width, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.time_out = Dense(width, width, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.action_out = Dense(width, action_dim, ("embed", None), rngs=rngs, dtype=dtype)
        # π0's state token: the proprioceptive state, projected, first in the expert's sequence.
        self.state_in = (
            Dense(state_dim, width, (None, "embed"), rngs=rngs, dtype=dtype) if expert.get("state_token") else None
        )

    def __call__(
        self, noisy, time, context, context_mask, first_position, routing, state=None
    ) -> tuple[jax.Array, list[dict]]:
        """Velocity (fp32) and the per-layer MoE outputs.

        ``context``: the backbone's per-layer keys/values; ``context_mask [B, S]``
        the context tokens the expert may see; ``first_position [B]`` the rotary
        position of the first expert token (right after the prefix). With a
        state token (``model.expert.state_token``, π0), ``state [B, state_dim]``
        is one more token before the actions: it sees the context and itself,
        the action tokens see the context, the state and each other.
        """
        b, h, _ = noisy.shape
        actions = self.action_in(noisy)
        times = sinusoidal_embedding(time, actions.shape[-1])[:, None].astype(actions.dtype)
        mixed = jnp.concatenate([actions, jnp.broadcast_to(times, actions.shape)], axis=-1)
        x = self.time_out(jax.nn.swish(self.time_mix(mixed)))
        own = jnp.ones((b, h, h), bool)
        if self.state_in is not None:
            x = jnp.concatenate([self.state_in(state)[:, None].astype(x.dtype), x], axis=1)
            state_row = jnp.arange(h + 1)[None, None, :] == 0  # the state token sees only itself of the suffix
            own = jnp.concatenate([jnp.broadcast_to(state_row, (b, 1, h + 1)), jnp.ones((b, h, h + 1), bool)], axis=1)
            routing = dict(
                routing, token_weight=jnp.concatenate([routing["token_weight"][:, :1], routing["token_weight"]], 1)
            )
        n = x.shape[1]
        positions = first_position[:, None] + jnp.arange(n)[None, :]
        seen = jnp.broadcast_to(context_mask[:, None, :], (b, n, context_mask.shape[1]))
        mask = jnp.concatenate([seen, own], axis=2)
        out, _, auxes = self.decoder(x, positions, mask, context=context, routing=routing)
        return self.action_out(out[:, n - h :]).astype(jnp.float32), auxes


def flow_time(rng: jax.Array, batch_size: int) -> jax.Array:
    """Flow-matching times: a true Beta(1.5, 1) sample mapped into (0.001, 1) (π0's schedule; 1 = noise)."""
    return jax.random.beta(rng, 1.5, 1.0, (batch_size,), jnp.float32) * 0.999 + 0.001


def noisy_chunks(rng: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x_t, t, target velocity)`` for clean chunks ``actions [B, H, A]``."""
    noise_rng, time_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, actions.shape, jnp.float32)
    time = flow_time(time_rng, actions.shape[0])
    t = time[:, None, None]
    return t * noise + (1.0 - t) * actions, time, noise - actions


def start_noise(rng: jax.Array, row_seeds: jax.Array, horizon: int, action_dim: int) -> jax.Array:
    """Sampling's starting noise ``[B, H, A]``: row ``i`` is drawn from ``fold_in(rng, row_seeds[i])`` alone.

    So a row's sample does not depend on what else is in its batch: the trainer's
    validation (row seeds 0..B-1) and a policy serving batched requests (each
    with its own seed) draw the same noise for the same seed.
    """
    return jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(rng, s), (horizon, action_dim), jnp.float32))(
        row_seeds
    )


def euler_sample(velocity_fn, noise: jax.Array, num_steps: int) -> jax.Array:
    """Integrates ``dx/dt = velocity_fn(x, t)`` from ``t = 1`` (noise) to 0 in ``num_steps`` Euler steps."""
    b = noise.shape[0]

    def step(i, x):
        time = jnp.full((b,), 1.0 - i / num_steps, jnp.float32)
        return x - velocity_fn(x, time) / num_steps

    return jax.lax.fori_loop(0, num_steps, step, noise)
