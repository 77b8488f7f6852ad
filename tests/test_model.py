import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vla_jax.models.vla import IOShapes, build_model

from .conftest import debug_config

IO = IOShapes(("primary", "wrist"), 64, 1024, 12, 4, 4, 4)


def _batch(rng, batch_size=8):
    return {
        "image_primary": rng.integers(0, 255, (batch_size, 64, 64, 3), dtype=np.uint8),
        "image_primary_mask": np.ones(batch_size, bool),
        "image_wrist": rng.integers(0, 255, (batch_size, 64, 64, 3), dtype=np.uint8),
        "image_wrist_mask": np.ones(batch_size, bool),
        "text_ids": rng.integers(1, 1024, (batch_size, 12)).astype(np.int32),
        "text_mask": np.ones((batch_size, 12), bool),
        "state": rng.normal(size=(batch_size, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (batch_size, 4, 4)).astype(np.float32),
        "action_mask": np.ones((batch_size, 4), bool),
        "action_dim_mask": np.ones((batch_size, 4), bool),
    }


def test_output_shape_and_parameter_axes():
    model = build_model(debug_config().model, IO, seed=0)
    out = model(_batch(np.random.default_rng(0)))
    assert out.shape == (8, 4, 4) and out.dtype == jnp.float32
    _, params = nnx.split(model)
    for path, variable in nnx.to_flat_state(params):
        axes = variable.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == variable.get_value().ndim, path


def test_masked_camera_and_text_padding_are_ignored():
    model = build_model(debug_config().model, IO, seed=0)
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    batch["image_wrist_mask"][:] = False
    batch["text_mask"][:, 6:] = False
    base = model(batch)
    perturbed = dict(batch, image_wrist=255 - batch["image_wrist"])
    perturbed["text_ids"] = batch["text_ids"].copy()
    perturbed["text_ids"][:, 6:] = 7
    np.testing.assert_allclose(model(perturbed), base, atol=1e-5)
    visible = dict(batch, image_primary=255 - batch["image_primary"])
    assert not np.allclose(model(visible), base, atol=1e-3)


def test_loss_decreases_when_fitting_a_batch():
    model = build_model(debug_config().model, IO, seed=0)
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    batch = _batch(np.random.default_rng(2))
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(60):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_padded_chunk_steps_carry_no_loss():
    model = build_model(debug_config().model, IO, seed=0)
    batch = _batch(np.random.default_rng(3))
    batch["action_mask"][:, 2:] = False
    loss = functools.partial(lambda b: model.loss(b)[0])
    changed = dict(batch, actions=batch["actions"].copy())
    changed["actions"][:, 2:] += 100.0
    np.testing.assert_allclose(loss(changed), loss(batch), rtol=1e-6)


def test_padded_action_dims_carry_no_loss():
    """Width padding (a dataset with fewer action dims than the mixture) is not a target."""
    model = build_model(debug_config().model, IO, seed=0)
    batch = _batch(np.random.default_rng(4))
    batch["action_dim_mask"][:4, 3] = False
    changed = dict(batch, actions=batch["actions"].copy())
    changed["actions"][:4, :, 3] += 100.0
    np.testing.assert_allclose(model.loss(changed)[0], model.loss(batch)[0], rtol=1e-6)
    changed["actions"][4:, :, 3] += 1.0  # a real dim of the other rows does count
    assert abs(float(model.loss(changed)[0]) - float(model.loss(batch)[0])) > 1e-3
