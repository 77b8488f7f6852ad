"""The typed observation: its schema check, and every image stream reaching the model."""

import dataclasses

import jax
import numpy as np
import pytest

from vla_jax.data.specs import ACTION_SPACES
from vla_jax.errors import DataError
from vla_jax.models.vla import build_model
from vla_jax.observation import NUM_ACTION_SPACES, IOShapes, check_batch, example_batch

from .conftest import debug_config

IO = IOShapes(("primary", "wrist"), 32, 300, 24, 4, 4, 4, depth_cameras=("primary",), goal_images=True)


def test_the_router_knows_every_registered_action_space():
    assert len(ACTION_SPACES) == NUM_ACTION_SPACES


def test_streams_are_cameras_then_depth_then_goals():
    assert IO.image_streams == (
        ("primary", 3),
        ("wrist", 3),
        ("depth_primary", 1),
        ("goal_primary", 3),
        ("goal_wrist", 3),
    )


def test_check_batch_names_the_field_and_what_was_expected():
    batch = example_batch(IO, 2)
    check_batch(batch, IO)
    check_batch(batch.observation, IO, "observation")
    wrong_dtype = dataclasses.replace(batch, actions=batch.actions.astype(np.float64))
    with pytest.raises(
        DataError, match=r"actions has shape \(2, 4, 4\) and dtype float64; expected \(2, 4, 4\) float32"
    ):
        check_batch(wrong_dtype, IO)
    obs = dataclasses.replace(batch.observation, state=np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match=r"observation.state has shape \(2, 5\)"):
        check_batch(dataclasses.replace(batch, observation=obs), IO)
    images = {k: v for k, v in batch.observation.images.items() if k != "depth_primary"}
    obs = dataclasses.replace(batch.observation, images=images)
    with pytest.raises(DataError, match="missing.*depth_primary"):
        check_batch(dataclasses.replace(batch, observation=obs), IO)


def test_the_model_refuses_a_batch_of_other_shapes():
    model = build_model(debug_config("model.mode=flow").model, IO, seed=0)
    other = example_batch(dataclasses.replace(IO, goal_images=False), 2)
    with pytest.raises(DataError, match="goal_primary"):
        model.loss(other, jax.random.key(0))


@pytest.mark.parametrize("stream", ["depth_primary", "goal_primary"])
def test_depth_and_goal_images_change_what_the_model_predicts(stream):
    """Both the expert's actions and the backbone's logits depend on the stream; masked, it has no effect."""
    model = build_model(debug_config("model.mode=fast+flow", "model.expert.plan=('as', 'hb')").model, IO, seed=0)
    batch = example_batch(IO, 2, seed=1)
    rng = jax.random.key(0)

    @jax.jit
    def outputs(obs):
        logits = model.prompt_logits(obs, obs.prompt_tokens, obs.prompt_mask, obs.prompt_ar_mask)
        return model.sample_actions(obs, rng), logits

    def changed(obs, mask=True):
        image = obs.images[stream]
        other = image.max() - image if image.dtype == np.uint8 else image * 3.0 + 1.0
        return dataclasses.replace(
            obs, images={**obs.images, stream: other}, image_masks={**obs.image_masks, stream: np.full(2, mask)}
        )

    obs = batch.observation
    actions, logits = outputs(obs)
    new_actions, new_logits = outputs(changed(obs))
    assert not np.allclose(new_actions, actions, atol=1e-4)
    assert not np.allclose(new_logits, logits, atol=1e-4)
    hidden = dataclasses.replace(obs, image_masks={**obs.image_masks, stream: np.zeros(2, bool)})
    hidden_actions, hidden_logits = outputs(hidden)
    changed_hidden_actions, changed_hidden_logits = outputs(changed(hidden, mask=False))
    np.testing.assert_allclose(changed_hidden_actions, hidden_actions, atol=1e-5)
    np.testing.assert_allclose(changed_hidden_logits, hidden_logits, atol=1e-5)
