"""Decode, resize, augmentation seeds and camera dropout."""

import numpy as np
import pytest
import tensorflow as tf

from vla_jax.data import frame_transforms as ft


def _image(height, width, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_resize_modes_keep_or_ignore_aspect():
    wide = tf.ones([20, 40, 3], tf.uint8) * 200
    padded = ft.resize_image(wide, 16, "pad").numpy()
    assert padded.shape == (16, 16, 3)
    assert (padded[:3] == 0).all() and (padded[-3:] == 0).all() and (padded[6:10] == 200).all()  # bars top/bottom
    cropped = ft.resize_image(wide, 16, "crop").numpy()
    assert (cropped == 200).all()
    stretched = ft.resize_image(wide, 16, "stretch").numpy()
    assert (stretched == 200).all()
    with pytest.raises(ValueError, match="resize mode"):
        ft.resize_image(wide, 16, "zoom")


def test_decode_frame_masks_missing_cameras_and_drops_unused():
    encoded = tf.io.encode_jpeg(_image(24, 32))
    frame = {
        "observation": {
            "image_primary": encoded,
            "image_primary_present": tf.constant(True),
            "image_wrist": tf.constant(""),
            "image_wrist_present": tf.constant(False),
            "image_secondary": encoded,
            "image_secondary_present": tf.constant(True),
        }
    }
    out = ft.decode_frame(frame, ("primary", "wrist"), (), 16)["observation"]
    assert out["image_primary"].shape == (16, 16, 3) and out["image_primary"].numpy().any()
    assert not out["image_wrist"].numpy().any() and not bool(out["image_wrist_present"])
    assert "image_secondary" not in out


def test_augment_ops_draw_independent_seeds_and_are_deterministic():
    image = _image(32, 32)
    seed = tf.constant([5, 6], tf.int64)
    ops = {"crop_scale": (0.5, 0.9), "crop_ratio": (0.8, 1.25), "brightness": 0.3}
    a = ft.augment_image(image, ops, seed).numpy()
    np.testing.assert_array_equal(a, ft.augment_image(image, ops, seed).numpy())
    assert not np.array_equal(a, ft.augment_image(image, ops, tf.constant([5, 7], tf.int64)).numpy())
    # Each op folds its own index into the seed: the crop's and the brightness's seeds differ.
    assert not np.array_equal(ft.op_seed(seed, 0).numpy(), ft.op_seed(seed, 1).numpy())
    # Over many frames the crop area and the brightness shift are uncorrelated.
    flat = tf.ones([32, 32, 3], tf.uint8) * 128
    areas, shifts = [], []
    for frame_index in range(200):
        frame_seed = ft.op_seed(tf.constant([0, 0], tf.int64), frame_index)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [32, 32, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=ft.op_seed(frame_seed, 0),
            area_range=(0.5, 0.9), aspect_ratio_range=(0.8, 1.25), min_object_covered=0.0,
        )  # fmt: skip
        del begin
        areas.append(float(size[0] * size[1]))
        shifts.append(float(ft.augment_image(flat, {"brightness": 0.3}, frame_seed).numpy().mean()))
    assert abs(np.corrcoef(areas, shifts)[0, 1]) < 0.25
    assert np.std(shifts) > 5  # brightness really varies from frame to frame


def test_augment_frame_uses_a_different_seed_per_camera():
    image = _image(32, 32)
    frame = {"observation": {
        "image_primary": image, "image_primary_present": tf.constant(True),
        "image_wrist": image, "image_wrist_present": tf.constant(True),
    }}  # fmt: skip
    ops = {"brightness": 0.3, "hue": 0.1}
    out = ft.augment_frame(frame, {"primary": ops, "wrist": ops}, tf.constant([1, 2], tf.int64))["observation"]
    assert not np.array_equal(out["image_primary"].numpy(), out["image_wrist"].numpy())


def test_camera_dropout_always_keeps_one_present_camera():
    image = tf.ones([8, 8, 3], tf.uint8)
    kept_counts = []
    for i in range(100):
        frame = {"observation": {
            "image_primary": image, "image_primary_present": tf.constant(True),
            "image_wrist": image, "image_wrist_present": tf.constant(True),
            "image_secondary": tf.zeros_like(image), "image_secondary_present": tf.constant(False),
        }}  # fmt: skip
        out = ft.drop_cameras(frame, ("primary", "secondary", "wrist"), 0.7, tf.constant([i, 0], tf.int64))
        obs = out["observation"]
        present = [bool(obs[f"image_{r}_present"]) for r in ("primary", "secondary", "wrist")]
        assert not present[1]  # a missing camera never comes back
        assert any(present)
        for role, p in zip(("primary", "secondary", "wrist"), present):
            assert bool(obs[f"image_{role}"].numpy().any()) == p
        kept_counts.append(sum(present))
    assert 1 in kept_counts and 2 in kept_counts
