import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vla_jax.models.vla import IOShapes, build_model

from .conftest import debug_config

IO = IOShapes(("primary", "wrist"), 64, 1024, 12, 4, 4, 4)
REGRESSION = debug_config("model.mode=regression").model
FAST = debug_config().model
PROMPT_IO = IOShapes(("primary", "wrist"), 64, 300, 24, 4, 4, 4)


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
    model = build_model(REGRESSION, IO, seed=0)
    out = model(_batch(np.random.default_rng(0)))
    assert out.shape == (8, 4, 4) and out.dtype == jnp.float32
    _, params = nnx.split(model)
    for path, variable in nnx.to_flat_state(params):
        axes = variable.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == variable.get_value().ndim, path


def test_masked_camera_and_text_padding_are_ignored():
    model = build_model(REGRESSION, IO, seed=0)
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


def _fit_losses(model, batch, steps: int) -> list[float]:
    """Losses of ``steps`` Adam steps fitting ``model`` to one batch."""
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        (loss, _), grads = jax.value_and_grad(lambda p: nnx.merge(graphdef, p).loss(batch), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses


def test_loss_decreases_when_fitting_a_batch():
    losses = _fit_losses(build_model(REGRESSION, IO, seed=0), _batch(np.random.default_rng(2)), 60)
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_padded_chunk_steps_carry_no_loss():
    model = build_model(REGRESSION, IO, seed=0)
    batch = _batch(np.random.default_rng(3))
    batch["action_mask"][:, 2:] = False
    loss = functools.partial(lambda b: model.loss(b)[0])
    changed = dict(batch, actions=batch["actions"].copy())
    changed["actions"][:, 2:] += 100.0
    np.testing.assert_allclose(loss(changed), loss(batch), rtol=1e-6)


def test_padded_action_dims_carry_no_loss():
    """Width padding (a dataset with fewer action dims than the mixture) is not a target."""
    model = build_model(REGRESSION, IO, seed=0)
    batch = _batch(np.random.default_rng(4))
    batch["action_dim_mask"][:4, 3] = False
    changed = dict(batch, actions=batch["actions"].copy())
    changed["actions"][:4, :, 3] += 100.0
    np.testing.assert_allclose(model.loss(changed)[0], model.loss(batch)[0], rtol=1e-6)
    changed["actions"][4:, :, 3] += 1.0  # a real dim of the other rows does count
    assert abs(float(model.loss(changed)[0]) - float(model.loss(batch)[0])) > 1e-3


def _prompt_batch(rng, batch_size=4, prefix=10, postfix=8):
    """Random prompts: ``prefix`` bidirectional ids, ``postfix`` causal ids with loss, then padding."""
    batch = _batch(rng, batch_size)
    length = PROMPT_IO.text_length
    tokens = rng.integers(3, PROMPT_IO.text_vocab_size, (batch_size, length)).astype(np.int32)
    positions = np.arange(length)[None, :]
    batch["prompt_tokens"] = tokens
    batch["prompt_mask"] = np.broadcast_to(positions < prefix + postfix, tokens.shape).copy()
    batch["prompt_ar_mask"] = batch["prompt_mask"] & (positions >= prefix)
    batch["prompt_loss_mask"] = batch["prompt_ar_mask"].copy()
    batch["prompt_truncated"] = np.zeros(batch_size, bool)
    return batch


def test_fast_prefix_is_unaffected_by_the_postfix_and_postfix_is_causal():
    model = build_model(FAST, PROMPT_IO, seed=0)
    batch = _prompt_batch(np.random.default_rng(5))

    def logits(b):
        return np.asarray(model.prompt_logits(b, b["prompt_tokens"], b["prompt_mask"], b["prompt_ar_mask"]))

    base = logits(batch)
    later = dict(batch, prompt_tokens=batch["prompt_tokens"].copy())
    later["prompt_tokens"][:, 14:] = 5  # postfix ids from the 5th on, and padding
    changed = logits(later)
    np.testing.assert_allclose(changed[:, :14], base[:, :14], atol=1e-5)  # prefix and earlier postfix unchanged
    assert not np.allclose(changed[:, 14:18], base[:, 14:18], atol=1e-3)  # the changed steps themselves do change
    earlier = dict(batch, prompt_tokens=batch["prompt_tokens"].copy())
    earlier["prompt_tokens"][:, 2] = 7  # a prefix id: every position sees it
    assert not np.allclose(logits(earlier)[:, :2], base[:, :2], atol=1e-4)


def test_fast_greedy_generation_matches_step_by_step_argmax():
    model = build_model(FAST, PROMPT_IO, seed=1)
    rng = np.random.default_rng(6)
    batch = _prompt_batch(rng)
    batch["prompt_mask"][1, 7:10] = False  # a shorter prefix in one row (padding before the postfix slots)
    batch["prompt_ar_mask"][1, 7:10] = False
    generated = np.asarray(model.generate(batch, 6, eos_id=1))
    for row in range(4):
        prefix_ids = batch["prompt_tokens"][row][batch["prompt_mask"][row] & ~batch["prompt_ar_mask"][row]].tolist()
        ids = []
        for _ in range(6):
            sequence = np.array([prefix_ids + ids])
            n = sequence.shape[1]
            one = {k: v[row : row + 1] for k, v in batch.items()}
            mask = np.ones((1, n), bool)
            ar = np.arange(n)[None, :] >= len(prefix_ids)
            step_logits = np.asarray(model.prompt_logits(one, jnp.asarray(sequence), mask, ar))
            ids.append(int(step_logits[0, -1].argmax()))
            if ids[-1] == 1:
                break
        assert generated[row, : len(ids)].tolist() == ids
        assert (generated[row, len(ids) :] == 1).all()


def test_fast_loss_counts_only_the_postfix_and_decreases():
    model = build_model(FAST, PROMPT_IO, seed=2)
    batch = _prompt_batch(np.random.default_rng(7))
    changed = dict(batch, prompt_tokens=batch["prompt_tokens"].copy())
    changed["prompt_tokens"][:, 18:] = 9  # padding ids carry no loss
    np.testing.assert_allclose(model.loss(changed)[0], model.loss(batch)[0], rtol=1e-6)
    losses = _fit_losses(model, batch, 40)
    assert losses[-1] < 0.3 * losses[0], losses[::10]
