"""A dropless grouped gated MLP for few experts on backends without a fast grouped matmul (CPU, GPU).

``gated_mlp(x, group_sizes, weights, activation)`` computes, for rows
``x [M, D]`` sorted by expert (the first ``group_sizes[0]`` rows belong to
expert 0, the next ``group_sizes[1]`` to expert 1, ...; rows past their sum
are padding and give zeros), ``down_e(act(x @ gate_e) * (x @ up_e))`` with
each row's expert ``e``: what ``jax.lax.ragged_dot`` computes on TPU.

Experts are ranked by how many rows they got. The ``k``-th largest group holds
at most ``M / k`` rows, so the expert of rank ``k`` runs on a buffer of
``ceil(M / k)`` rows cut from the sorted rows at its group's start: nothing can
be dropped, every matmul has a static shape, and the work is
``M * (1 + 1/2 + ... + 1/E)`` rows (1.83 M for the three AS experts) instead of
``E * M`` for every expert on every row. Each rank picks its expert's weights
with ``lax.switch``. The backward pass is written out (``jax.custom_vjp``) so
that each expert's weight gradient is computed once, from its own buffer,
instead of as a full-size cotangent per rank and expert.

Work grows with the harmonic number of ``E``; for many experts (HB-MoE) the
capacity dispatch is the cheaper choice off TPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from vla_jax.models.layers import ACTIVATIONS

Weights = tuple[jax.Array, jax.Array, jax.Array]  # gate [E, D, H], up [E, D, H], down [E, H, D]


def rank_capacities(rows: int, num_experts: int) -> tuple[int, ...]:
    """Rows of the buffer of each rank: ``ceil(rows / k)`` for ``k = 1..E`` (the ``k``-th largest group fits)."""
    return tuple(math.ceil(rows / k) for k in range(1, num_experts + 1))


def _vma(a: jax.Array) -> frozenset:
    """The mesh axes ``a`` varies over inside ``shard_map`` (empty outside)."""
    manual = getattr(jax.typeof(a), "manual_axis_type", None)
    return frozenset() if manual is None else frozenset(manual.varying)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gated_mlp(x: jax.Array, group_sizes: jax.Array, weights: Weights, activation: str) -> jax.Array:
    """Per-row expert gated MLP of ``x [M, D]`` sorted by expert; see the module docstring."""
    return _forward(x, group_sizes, weights, activation)[0]


class _Layout:
    """Where each rank's buffer sits in the sorted rows, and which buffer row each sorted row reads."""

    def __init__(self, group_sizes: jax.Array, rows: int):
        num = group_sizes.shape[0]
        self.capacities = rank_capacities(rows, num)
        self.expert_of_rank = jnp.argsort(-group_sizes, stable=True)
        self.rank_of_expert = jnp.argsort(self.expert_of_rank)
        ends = jnp.cumsum(group_sizes)
        starts = ends - group_sizes
        self.starts = starts[self.expert_of_rank]
        self.sizes = group_sizes[self.expert_of_rank]
        row = jnp.arange(rows)
        row_expert = jnp.searchsorted(ends, row, side="right")  # == num for padding rows
        self.row_rank = jnp.where(row_expert < num, self.rank_of_expert[jnp.minimum(row_expert, num - 1)], num)
        self.row_offset = row - starts[jnp.minimum(row_expert, num - 1)]

    def cut(self, a: jax.Array, rank: int) -> jax.Array:
        """Rank ``rank``'s buffer of ``a [M, F]``: its group's rows, then zeros."""
        capacity = self.capacities[rank]
        index = self.starts[rank] + jnp.arange(capacity)
        valid = jnp.arange(capacity) < self.sizes[rank]
        return jnp.where(valid[:, None], jnp.take(a, index, axis=0, mode="fill", fill_value=0), 0)

    def join(self, buffers: list[jax.Array]) -> jax.Array:
        """The sorted rows ``[M, F]`` read back from every rank's buffer (zeros for padding rows)."""
        out = jnp.zeros((self.row_rank.shape[0], buffers[0].shape[-1]), buffers[0].dtype)
        for rank, buffer in enumerate(buffers):
            picked = buffer[jnp.clip(self.row_offset, 0, buffer.shape[0] - 1)]
            out = jnp.where((self.row_rank == rank)[:, None], picked, out)
        return out


def _expert_weights(weights: Weights) -> list[Weights]:
    """Each expert's ``(gate, up, down)``, sliced once."""
    return [tuple(w[e] for w in weights) for e in range(weights[0].shape[0])]


def _forward(x, group_sizes, weights, activation):
    act = ACTIVATIONS[activation]

    def branch(gate, up, down):
        def run(xt):
            h1, h2 = xt @ gate, xt @ up
            return h1, h2, (act(h1) * h2) @ down

        return run

    branches = [branch(*w) for w in _expert_weights(weights)]
    layout = _Layout(group_sizes, x.shape[0])
    inputs, hidden, outputs = [], [], []
    for rank in range(len(branches)):
        xt = layout.cut(x, rank)
        h1, h2, y = jax.lax.switch(layout.expert_of_rank[rank], branches, xt)
        inputs.append(xt)
        hidden.append((h1, h2))
        outputs.append(y)
    return layout.join(outputs), (group_sizes, weights, inputs, hidden)


def _backward(activation, residuals, dy):
    group_sizes, weights, inputs, hidden = residuals
    act = ACTIVATIONS[activation]

    def branch(gate, up, down):
        def run(dyt, h1, h2):
            a, act_vjp = jax.vjp(act, h1)
            dm = dyt @ down.T
            dh1 = act_vjp(dm * h2)[0]
            dh2 = dm * a
            return dh1 @ gate.T + dh2 @ up.T, dh1, dh2, a * h2

        return run

    branches = [branch(*w) for w in _expert_weights(weights)]
    layout = _Layout(group_sizes, dy.shape[0])
    dxs, by_rank = [], []
    for rank, (xt, (h1, h2)) in enumerate(zip(inputs, hidden)):
        dyt = layout.cut(dy, rank)
        dxt, dh1, dh2, m = jax.lax.switch(layout.expert_of_rank[rank], branches, dyt, h1, h2)
        dxs.append(dxt)
        by_rank.append((xt.T @ dh1, xt.T @ dh2, m.T @ dyt))
    # Rank order back to expert order: one gather per weight.
    grads = []
    for i, w in enumerate(weights):
        g = jnp.stack([piece[i] for piece in by_rank])[layout.rank_of_expert].astype(w.dtype)
        # Under shard_map, weights every device shares get the sum of the devices' gradients.
        grads.append(jax.lax.psum(g, tuple(_vma(g) - _vma(w))))
    return layout.join(dxs), None, tuple(grads)


gated_mlp.defvjp(_forward, _backward)
