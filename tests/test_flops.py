"""The analytic FLOP count (``summary.forward_flops``, x3 for training: what MFU uses) against XLA's.

XLA's count is ``cost_analysis()["flops"]`` of the compiled training computation,
``jax.value_and_grad`` of ``VLA.loss``, lowered from abstract shapes on one CPU
device (nothing is allocated). It also counts the elementwise work (norms,
softmax, activations, losses) that the matmul count leaves out: 0.5-2% of the
whole model here, 5% of tiny's small-width expert.

The comparison runs where the two definitions agree: MoE dispatch ``capacity``
with capacity factor 1 at a batch that fills every expert's buffer exactly, so
the compiled expert matmuls are the active ones. Elsewhere XLA also counts
padding that a count of useful FLOPs should not. Measured analytic / XLA
training FLOPs at batch 12 (tiny's plan with every layer kind, as below):

=================================  ==============  ===================
dispatch (AS, HB)                  whole model     action expert [1]_
                                   tiny / small    tiny / small
=================================  ==============  ===================
capacity 1.0, capacity 1.0 (here)  0.981 / 0.995   0.954 / 0.993
ragged, capacity 1.25 (presets)    0.978 / 0.995   0.825 / 0.900
ragged, ragged                     0.978 / -       0.800 / -
dense, dense                       0.975 / 0.989   0.687 / 0.484
=================================  ==============  ===================

.. [1] XLA's count of ``fast+flow`` minus that of ``fast``, against 3 x the
   expert's analytic FLOPs (the expert is 1-2% of the whole model).

Off TPU, ``ragged`` runs ranked buffers (``vla_jax.models.grouped``):
``M (1 + 1/2 + 1/3)`` rows for the ``M`` rows of three AS experts (XLA counts
each rank's ``lax.switch`` once, as one branch); HB capacity 1.25 runs 1.25x the
routed rows; ``dense`` runs every expert on every row. Tiny ``fast`` and
``flow`` agree as well as ``fast+flow`` (0.982, 0.982). Forward-only ratios are
the same: XLA's training count is 2.99-3.00x its forward count.

One gap was not padding: in ``flow`` mode with ``flow.knowledge_insulation`` the
ViT and the backbone get no gradient at all (XLA's training count of tiny is
1.05x its forward count; 3 x forward overstated it 2.79x). Nothing would train
them, so the config check now refuses that combination; the flow case here
turns the insulation off.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vla_jax.models import moe, presets
from vla_jax.models.vla import build_model
from vla_jax.observation import Batch, IOShapes, Observation
from vla_jax.training.summary import forward_flops


def abstract_batch(io: IOShapes, batch_size: int) -> Batch:
    """A training batch of ``io``'s shapes, as ``jax.ShapeDtypeStruct`` (the model checks it at trace time)."""
    b, length, size = batch_size, io.text_length, io.image_size
    shape = jax.ShapeDtypeStruct
    flags = lambda *dims: shape(dims, jnp.bool_)  # noqa: E731
    images = {
        name: shape((b, size, size, channels), jnp.uint8 if channels == 3 else jnp.float32)
        for name, channels in io.image_streams
    }
    observation = Observation(
        images=images,
        image_masks={name: flags(b) for name in images},
        state=shape((b, io.state_dim), jnp.float32),
        state_mask=flags(b, io.state_dim),
        prompt_tokens=shape((b, length), jnp.int32),
        prompt_mask=flags(b, length),
        prompt_ar_mask=flags(b, length),
        action_dim_mask=flags(b, io.action_dim),
        action_space=shape((b,), jnp.int32),
    )
    return Batch(
        observation=observation,
        actions=shape((b, io.action_horizon, io.action_dim), jnp.float32),
        action_mask=flags(b, io.action_horizon),
        prompt_loss_mask=flags(b, length),
        prompt_truncated=flags(b),
        dataset_index=shape((b,), jnp.int32),
        control_hz=shape((b,), jnp.float32),
    )


BATCH_SIZE = 12  # every expert's capacity-1 buffer is exactly full at this batch, in tiny and small
TOLERANCE = 0.10
# Options that only make the CPU backend emit code faster (3-4x here); the HLO whose FLOPs are counted is the same.
FAST_CODEGEN = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
# name -> (preset, mode, config overrides); tiny's fast+flow plan has every layer kind (its default has no dense).
CASES = {
    "tiny-fast": ("tiny", "fast", {}),
    "tiny-flow": ("tiny", "flow", {"flow.knowledge_insulation": False}),
    "tiny-fast+flow": ("tiny", "fast+flow", {"expert.plan": ("as", "hb", "dense", "as")}),
    "small-fast+flow": ("small", "fast+flow", {}),
}


def model_config(case: str):
    """The case's config, with the MoE dispatch at which XLA compiles exactly the active experts' matmuls."""
    name, mode, overrides = CASES[case]
    config = presets.model_config(name)
    config.mode = mode
    config.expert.moe.update(
        as_dispatch="capacity", hb_dispatch="capacity", as_capacity_factor=1.0, hb_capacity_factor=1.0
    )
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        functools.reduce(getattr, parents, config)[leaf] = value
    return config


@functools.cache
def xla_flops(case: str, io: IOShapes, grad: bool = True) -> float:
    """XLA's FLOPs of the compiled loss (with ``grad``: its value and gradient) on an abstract batch."""
    config = model_config(case)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config, io, 0)))

    def loss(params, batch, rng):
        return nnx.merge(graphdef, params).loss(batch, rng)

    fn = jax.value_and_grad(loss, has_aux=True) if grad else loss
    rng = jax.eval_shape(lambda: jax.random.key(0))
    compiled = jax.jit(fn).lower(params, abstract_batch(io, BATCH_SIZE), rng).compile(compiler_options=FAST_CODEGEN)
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def analytic(case: str, io: IOShapes, part: str | None = None, passes: int = 3) -> int:
    """``passes`` x ``forward_flops`` (one part, or all) of the batch; 3 passes: the training FLOPs of MFU."""
    flops = forward_flops(model_config(case), io)
    return passes * BATCH_SIZE * (flops[part] if part else sum(flops.values()))


@pytest.mark.parametrize("case", ["tiny-fast+flow", "small-fast+flow"])
def test_capacity_buffers_hold_exactly_the_assignments(case):
    """The premise of the comparison: no padding rows in any expert buffer."""
    config = model_config(case)
    cfg, tokens = config.expert.moe, BATCH_SIZE * presets.default_io(CASES[case][0]).action_horizon
    for experts, top_k in ((cfg.as_experts, 1), (cfg.hb_experts, cfg.hb_top_k)):
        assert moe.expert_capacity(tokens, top_k, experts, 1.0) * experts == tokens * top_k


# small's value-and-grad takes ~40 s to build, lower and compile on 2 cores (LLVM ~18 s of it even at -O0): slow.
SLOW = {"small-fast+flow"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW else []) for c in CASES])
def test_training_flops_match_xla(case):
    io = presets.default_io(CASES[case][0])
    ratio = analytic(case, io) / xla_flops(case, io)
    assert abs(ratio - 1) < TOLERANCE, f"{case}: analytic / XLA training FLOPs = {ratio:.3f}"


def test_action_expert_flops_match_xla():
    """The expert alone (1% of the total): XLA's fast+flow count minus its fast count."""
    io = presets.default_io("tiny")
    expert = xla_flops("tiny-fast+flow", io) - xla_flops("tiny-fast", io)
    ratio = analytic("tiny-fast+flow", io, "action_expert") / expert
    assert abs(ratio - 1) < TOLERANCE, f"analytic / XLA action-expert training FLOPs = {ratio:.3f}"


def test_every_image_stream_is_counted():
    """Depth cameras and goal images add ViT passes and backbone tokens (forward only, tiny)."""
    cameras = presets.default_io("tiny")
    streams = dataclasses.replace(cameras, depth_cameras=("primary",), goal_images=True)
    assert len(streams.image_streams) == 5
    added = xla_flops("tiny-fast", streams, grad=False) - xla_flops("tiny-fast", cameras, grad=False)
    ratio = (analytic("tiny-fast", streams, passes=1) - analytic("tiny-fast", cameras, passes=1)) / added
    assert abs(ratio - 1) < TOLERANCE, f"analytic / XLA forward FLOPs of three more streams = {ratio:.3f}"
