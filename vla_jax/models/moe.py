"""HiMoE feed-forward blocks for the action expert: dense, AS-MoE and HB-MoE.

Every block is called as ``block(x [B, N, D], routing) -> (y, aux)``;
``routing`` holds ``token_weight [B, N]`` (1 for tokens that count),
``action_space [B]`` and ``action_dim_mask [B, A]``. ``aux["loss"]`` is the
block's weighted auxiliary loss; the other ``aux`` entries are metrics.

- AS-MoE (action-space): a few experts, top-1. The router sees only the
  sample's action space (its id and action-dim mask), so every token of a
  sample goes to the same expert. AS-Reg, an InfoNCE loss on the routing
  distributions, pulls samples of the same action space together.
- HB-MoE (heterogeneity-balancing): many routed experts plus a shared one; a
  per-token router picks top-k with renormalized weights. Load balancing is
  computed over all tokens of the batch; a z-loss keeps router logits small.
  Routers run in fp32.

Three dispatches compute the same thing when no token is dropped, each set
per block kind (``as_dispatch``, ``hb_dispatch``):

- ``dense``: every expert on every token (the reference; E x the work).
- ``capacity``: tokens are scattered into per-expert buffers of fixed
  capacity, grouped over each device's share of the batch, and gathered back;
  assignments beyond capacity are dropped and counted.
- ``ragged``: assignments are sorted by expert within each device group and
  nothing is dropped. On TPU they run as grouped matmuls
  (``jax.lax.ragged_dot``); elsewhere, where XLA would expand those to every
  expert, as ranked buffers (:mod:`vla_jax.models.grouped`), about ``H(E)``
  times the rows (1.83 for three experts).

The presets route AS layers ``ragged``: AS load follows the action space, so
one expert gets most of a batch, or all of it on a single-embodiment dataset,
where a capacity of 2x the even share would drop a third of the tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vla_jax import sharding
from vla_jax.models import grouped
from vla_jax.models.layers import ACTIVATIONS, GatedMLP, param

KINDS = ("dense", "as", "hb")
DISPATCHES = ("dense", "capacity", "ragged")


def default_plan(depth: int) -> tuple[str, ...]:
    """The paper's layout scaled to ``depth``: AS at both ends, HB next to them, dense in the middle.

    At depth 18: AS at 0, 1, 16, 17; HB at 2-5 and 12-15; dense at 6-11.
    """
    if depth == 1:
        return ("as",)
    as_side = max(1, round(2 * depth / 18))
    hb_side = max(1, round(4 * depth / 18))
    if 2 * (as_side + hb_side) > depth:
        hb_side = max(0, depth // 2 - as_side)
    side = ("as",) * as_side + ("hb",) * hb_side
    middle = ("dense",) * (depth - 2 * len(side))
    return side + middle + side[::-1]


class DenseFFN(nnx.Module):
    """A gated MLP with the MoE blocks' call signature."""

    def __init__(self, width: int, hidden: int, *, activation: str, rngs: nnx.Rngs, dtype=jnp.float32, lora_pair=None):
        self.mlp = GatedMLP(width, hidden, activation=activation, rngs=rngs, dtype=dtype, lora_pair=lora_pair)

    def __call__(self, x: jax.Array, routing: dict | None = None) -> tuple[jax.Array, dict]:
        return self.mlp(x), {}


class Experts(nnx.Module):
    """``num`` stacked gated MLPs; weights named ``(expert, embed, mlp)``."""

    def __init__(self, num: int, width: int, hidden: int, *, activation: str, rngs: nnx.Rngs, dtype=jnp.float32):
        init = nnx.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=0)
        self.gate = param(rngs, init, (num, width, hidden), ("expert", "embed", "mlp"))
        self.up = param(rngs, init, (num, width, hidden), ("expert", "embed", "mlp"))
        self.down = param(rngs, init, (num, hidden, width), ("expert", "mlp", "embed"))
        self.activation, self.dtype = activation, dtype

    def weights(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(gate, up, down)`` in the compute dtype."""
        return tuple(w[...].astype(self.dtype) for w in (self.gate, self.up, self.down))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., E, C, D]`` (one slice of tokens per expert) to ``[..., E, C, D]``."""
        batched = lambda a, w: jnp.einsum("...ecd,edf->...ecf", a, w)  # noqa: E731
        return gated_mlp(self.activation, self.weights(), x.astype(self.dtype), batched)

    @property
    def num(self) -> int:
        return self.gate.shape[0]


def gated_mlp(activation: str, weights, x: jax.Array, matmul) -> jax.Array:
    """``down(act(x @ gate) * (x @ up))`` with the experts' ``weights`` and a ``matmul(x, w)`` that picks each row's expert."""
    gate, up, down = weights
    return matmul(ACTIVATIONS[activation](matmul(x, gate)) * matmul(x, up), down)


def _combine_dense(experts: Experts, x: jax.Array, ids: jax.Array, weights: jax.Array) -> jax.Array:
    """Every expert on every token; ``x [T, D]``, ``ids, weights [T, k]``."""
    outputs = experts(jnp.broadcast_to(x[None], (experts.num, *x.shape)))  # [E, T, D]
    combine = jnp.sum(jax.nn.one_hot(ids, experts.num, dtype=jnp.float32) * weights[..., None], axis=1)
    return jnp.einsum("te,etd->td", combine.astype(outputs.dtype), outputs)


def _group_dispatch(experts: Experts, x, ids, weights, valid, capacity: int):
    """Scatter/gather dispatch of one group. ``x [T, D]``, ``ids/weights [T, k]``, ``valid [T]``.

    Assignments are served in priority order: every token's first choice, then
    every token's second, and so on, each in token order; an expert's buffer
    holds ``capacity`` of them. Returns the output ``[T, D]`` and the number of
    valid assignments that were kept.
    """
    tokens, k = ids.shape
    num = experts.num
    flat_ids = ids.T.reshape(-1)  # choice-major
    flat_weights = weights.T.reshape(-1)
    token = jnp.tile(jnp.arange(tokens), k)
    ok = valid[token]
    one_hot = jax.nn.one_hot(flat_ids, num, dtype=jnp.int32) * ok[:, None].astype(jnp.int32)
    slot = jnp.take_along_axis(jnp.cumsum(one_hot, axis=0), flat_ids[:, None], axis=1)[:, 0] - 1
    keep = ok & (slot < capacity)
    slot = jnp.where(keep, slot, capacity)  # out of range: dropped by the scatter
    buffer = jnp.zeros((num, capacity, x.shape[-1]), x.dtype).at[flat_ids, slot].set(x[token], mode="drop")
    out = experts(buffer)
    gathered = out[flat_ids, jnp.minimum(slot, capacity - 1)]
    gathered = gathered * (keep * flat_weights)[:, None].astype(gathered.dtype)
    return gathered.reshape(k, tokens, -1).sum(0), keep.sum()


def _group_ragged(activation: str, expert_weights, x, ids, weights, valid):
    """Sorted grouped-matmul dispatch of one group of tokens; nothing is dropped.

    ``x [T, D]``, ``ids/weights [T, k]``, ``valid [T]``. Valid assignments are
    sorted by expert (invalid ones last, outside every group), run as grouped
    matmuls (``jax.lax.ragged_dot``) and put back in token order.
    """
    tokens, k = ids.shape
    num = expert_weights[0].shape[0]
    flat_ids = ids.T.reshape(-1)
    token = jnp.tile(jnp.arange(tokens), k)
    ok = valid[token]
    order = jnp.argsort(jnp.where(ok, flat_ids, num), stable=True)
    group_sizes = jnp.sum(jax.nn.one_hot(flat_ids, num, dtype=jnp.int32) * ok[:, None], axis=0)
    rows = x[token[order]]
    if ragged_runs_grouped_matmuls():
        out = gated_mlp(activation, expert_weights, rows, lambda a, w: jax.lax.ragged_dot(a, w, group_sizes))
    else:  # XLA expands ragged_dot to every expert here; ranked buffers do ~H(E) x the rows instead of E x
        out = grouped.gated_mlp(rows, group_sizes, tuple(expert_weights), activation)
    unsorted = out[jnp.argsort(order)] * (ok * weights.T.reshape(-1))[:, None].astype(out.dtype)
    return unsorted.reshape(k, tokens, -1).sum(0)


def ragged_runs_grouped_matmuls() -> bool:
    """Whether ``ragged`` dispatch runs ``jax.lax.ragged_dot`` here (TPU) rather than ranked buffers."""
    return jax.default_backend() == "tpu"


def _ragged_dispatch(experts: Experts, x, ids, weights, valid) -> jax.Array:
    """Ragged dispatch of ``x [B, N, D]``: per device under a mesh (``shard_map`` over the batch axes), else whole."""
    b, n, d = x.shape
    k = ids.shape[-1]

    def local(x, ids, weights, valid, expert_weights):
        m = x.shape[0] * n
        y = _group_ragged(
            experts.activation,
            expert_weights,
            x.reshape(m, d).astype(experts.dtype),
            ids.reshape(m, k),
            weights.reshape(m, k),
            valid.reshape(m),
        )
        return y.reshape(x.shape)

    devices = sharding.batch_devices()
    if devices == 1 or b % devices:  # one group (a batch that does not split evenly is sorted whole)
        return local(x, ids, weights, valid, experts.weights())
    spec = jax.sharding.PartitionSpec(sharding.BATCH_AXES)
    replicated = jax.sharding.PartitionSpec()
    per_device = jax.shard_map(local, in_specs=(spec,) * 4 + (replicated,), out_specs=spec)
    return per_device(x, ids, weights, valid, experts.weights())


def expert_capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Buffer rows per expert for a group of ``tokens``: ``capacity_factor`` times the even share of assignments."""
    return max(1, math.ceil(capacity_factor * tokens * top_k / num_experts))


def dispatch(experts: Experts, x, ids, weights, valid, *, method: str, capacity_factor: float):
    """Runs the experts on ``x [B, N, D]`` for assignments ``ids/weights [B, N, k]``.

    Returns ``y [B, N, D]`` and the fraction of valid assignments dropped.
    """
    b, n, d = x.shape
    k = ids.shape[-1]
    if method == "ragged":
        return _ragged_dispatch(experts, x, ids, weights, valid), jnp.zeros((), jnp.float32)
    if method == "dense":
        y = _combine_dense(experts, x.reshape(b * n, d), ids.reshape(b * n, k), weights.reshape(b * n, k))
        return y.reshape(b, n, d), jnp.zeros((), jnp.float32)
    groups = sharding.batch_groups(b)
    per_group = b // groups * n
    shaped = lambda a: sharding.constrain(a.reshape(groups, per_group, *a.shape[2:]), ("batch",))  # noqa: E731
    capacity = expert_capacity(per_group, k, experts.num, capacity_factor)
    y, kept = jax.vmap(lambda *a: _group_dispatch(experts, *a, capacity))(
        shaped(x), shaped(ids), shaped(weights), shaped(valid)
    )
    total = jnp.maximum(jnp.sum(valid) * k, 1)
    return y.reshape(b, n, d), 1.0 - jnp.sum(kept) / total


class ASMoE(nnx.Module):
    """Action-space MoE: top-1 over ``num_experts`` by the sample's action space, with AS-Reg."""

    def __init__(self, width: int, hidden: int, cfg, *, num_spaces: int, action_dim: int, rngs, dtype=jnp.float32):
        self.num_spaces = num_spaces
        self.router = param(
            rngs, nnx.initializers.normal(0.02), (num_spaces + action_dim, cfg.as_experts), (None, None)
        )
        self.experts = Experts(cfg.as_experts, width, hidden, activation=expert_activation(cfg), rngs=rngs, dtype=dtype)
        self.method, self.capacity_factor = cfg.as_dispatch, cfg.as_capacity_factor
        self.reg_weight, self.temperature = cfg.as_reg_weight, cfg.as_reg_temperature

    def route(self, routing: dict) -> jax.Array:
        """Routing distribution ``[B, E]`` (fp32) from the action space alone."""
        features = jnp.concatenate(
            [
                jax.nn.one_hot(routing["action_space"], self.num_spaces, dtype=jnp.float32),
                routing["action_dim_mask"].astype(jnp.float32),
            ],
            axis=-1,
        )
        return jax.nn.softmax(features @ self.router[...], axis=-1)

    def __call__(self, x: jax.Array, routing: dict) -> tuple[jax.Array, dict]:
        probs = self.route(routing)
        expert = jnp.argmax(probs, axis=-1)
        weight = jnp.take_along_axis(probs, expert[:, None], axis=1)  # [B, 1]
        b, n = x.shape[:2]
        ids = jnp.broadcast_to(expert[:, None, None], (b, n, 1))
        weights = jnp.broadcast_to(weight[:, None, :], (b, n, 1))
        valid = routing["token_weight"] > 0
        y, dropped = dispatch(
            self.experts, x, ids, weights, valid, method=self.method, capacity_factor=self.capacity_factor
        )
        reg = as_regularizer(probs, routing["action_space"], self.temperature)
        load = jnp.mean(jax.nn.one_hot(expert, self.experts.num, dtype=jnp.float32), axis=0)
        return y, {"loss": self.reg_weight * reg, "as_reg": reg, "as_dropped_fraction": dropped, "as_load": load}


def as_regularizer(probs: jax.Array, action_space: jax.Array, temperature: float) -> jax.Array:
    """InfoNCE on routing distributions: samples of the same action space are positives.

    Cosine similarity over ``temperature``; averaged over the anchors that have a positive.
    """
    unit = probs / jnp.linalg.norm(probs, axis=-1, keepdims=True).clip(1e-6)
    logits = unit @ unit.T / temperature
    n = probs.shape[0]
    others = ~jnp.eye(n, dtype=bool)
    positive = (action_space[:, None] == action_space[None, :]) & others
    log_denominator = jax.nn.logsumexp(jnp.where(others, logits, -jnp.inf), axis=-1)
    log_numerator = jax.nn.logsumexp(jnp.where(positive, logits, -jnp.inf), axis=-1)
    has_positive = positive.any(-1)
    per_anchor = jnp.where(has_positive, log_denominator - jnp.where(has_positive, log_numerator, 0.0), 0.0)
    return per_anchor.sum() / jnp.maximum(has_positive.sum(), 1)


class HBMoE(nnx.Module):
    """Heterogeneity-balancing MoE: token router, top-k of ``num_experts`` plus a shared expert."""

    def __init__(self, width: int, cfg, *, rngs, dtype=jnp.float32):
        self.router = param(rngs, nnx.initializers.normal(0.02), (width, cfg.hb_experts), ("embed", None))
        activation = expert_activation(cfg)
        self.experts = Experts(cfg.hb_experts, width, cfg.hb_mlp_dim, activation=activation, rngs=rngs, dtype=dtype)
        self.shared = (
            GatedMLP(width, cfg.hb_shared_mlp_dim, activation=activation, rngs=rngs, dtype=dtype)
            if cfg.hb_shared_mlp_dim
            else None
        )
        self.top_k, self.method, self.capacity_factor = cfg.hb_top_k, cfg.hb_dispatch, cfg.hb_capacity_factor
        self.balance_weight, self.z_weight = cfg.hb_balance_weight, cfg.hb_z_loss_weight

    def __call__(self, x: jax.Array, routing: dict) -> tuple[jax.Array, dict]:
        logits = jnp.einsum("bnd,de->bne", x.astype(jnp.float32), self.router[...])
        probs = jax.nn.softmax(logits, axis=-1)
        top, ids = jax.lax.top_k(probs, self.top_k)
        weights = top / jnp.sum(top, axis=-1, keepdims=True)
        valid = routing["token_weight"] > 0
        y, dropped = dispatch(
            self.experts, x, ids, weights, valid, method=self.method, capacity_factor=self.capacity_factor
        )
        if self.shared is not None:
            y = y + self.shared(x)
        balance, load = load_balancing(probs, ids, valid)
        z = jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * valid) / jnp.maximum(valid.sum(), 1)
        aux = {"loss": self.balance_weight * balance + self.z_weight * z, "hb_balance": balance, "hb_z_loss": z}
        return y, dict(aux, hb_dropped_fraction=dropped, hb_load=load)


def load_balancing(probs: jax.Array, ids: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Switch-style balance ``E * sum_e f_e * P_e`` over every valid token of the batch.

    ``f_e`` is the fraction of top-k assignments that went to expert ``e`` and
    ``P_e`` its mean router probability; the loss is 1 when both are uniform.
    Returns the loss and ``f`` (the per-expert load).
    """
    num = probs.shape[-1]
    w = valid.astype(jnp.float32)
    count = jnp.maximum(w.sum(), 1.0)
    assigned = jnp.sum(jax.nn.one_hot(ids, num, dtype=jnp.float32), axis=-2)  # [B, N, E]
    load = jnp.einsum("bne,bn->e", assigned, w) / (count * ids.shape[-1])
    mean_prob = jnp.einsum("bne,bn->e", probs, w) / count
    return num * jnp.sum(load * mean_prob), load


def expert_activation(moe_cfg) -> str:
    """The gated MLPs' activation in AS and HB blocks: ``swish`` (HiMoE's SwiGLU) or ``gelu`` (GeGLU, like the
    dense MLP of π0 that an import upcycles them from)."""
    return moe_cfg.get("activation", "swish")


def active_mlp_dim(kind: str, expert_cfg) -> int:
    """Hidden width one token runs through in a ``kind`` layer of the expert: its top-k experts plus the shared one."""
    cfg = expert_cfg.moe
    widths = {
        "dense": expert_cfg.mlp_dim,
        "as": cfg.as_mlp_dim,
        "hb": cfg.hb_top_k * cfg.hb_mlp_dim + cfg.hb_shared_mlp_dim,
    }
    return widths[kind]


def build_ffn(kind: str, width: int, cfg, *, num_spaces: int, action_dim: int, rngs, dtype) -> nnx.Module:
    """The feed-forward block of one expert layer from the plan entry ``kind``."""
    if kind == "dense":
        return DenseFFN(width, cfg.mlp_dim, activation="gelu", rngs=rngs, dtype=dtype)
    if kind == "as":
        return ASMoE(
            width, cfg.moe.as_mlp_dim, cfg.moe, num_spaces=num_spaces, action_dim=action_dim, rngs=rngs, dtype=dtype
        )
    if kind == "hb":
        return HBMoE(width, cfg.moe, rngs=rngs, dtype=dtype)
    raise ValueError(f"unknown MoE plan entry {kind!r}; expected one of {KINDS}")


def summarize_aux(auxes: list[dict]) -> tuple[jax.Array, dict]:
    """Sums the per-layer auxiliary losses; averages scalar metrics by name, keeps per-layer loads."""
    total = jnp.zeros((), jnp.float32)
    scalars: dict[str, list] = {}
    metrics = {}
    for i, aux in enumerate(auxes):
        for key, value in aux.items():
            if key == "loss":
                total = total + value
            elif np.ndim(value) == 0:
                scalars.setdefault(key, []).append(value)
            else:
                metrics[f"{key}_layer{i}"] = value
    metrics.update({f"moe_{k}": jnp.mean(jnp.stack(v)) for k, v in scalars.items()})
    return total, metrics
