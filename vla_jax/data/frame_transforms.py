"""Transforms of single frames, run after the shuffle: image decoding and resizing."""

from __future__ import annotations

import tensorflow as tf


def decode_and_resize(frame: dict, cameras: tuple[str, ...], size: int) -> dict:
    """Decodes the JPEG/PNG bytes of ``cameras`` to uint8 ``[size, size, 3]``.

    A camera whose ``image_{role}_present`` is False becomes a black image (the
    model masks it). Images are resized with aspect ratio kept and padded.
    """
    frame = dict(frame, observation=dict(frame["observation"]))
    obs = frame["observation"]
    for role in cameras:
        encoded, present = obs[f"image_{role}"], obs[f"image_{role}_present"]

        def decode(encoded=encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            if image.shape[0] != size or image.shape[1] != size:
                image = tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size)
                image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            return tf.ensure_shape(image, [size, size, 3])

        obs[f"image_{role}"] = tf.cond(present, decode, lambda: tf.zeros([size, size, 3], tf.uint8))
    for role in [k[len("image_") :] for k in list(obs) if k.startswith("image_") and not k.endswith("_present")]:
        if role not in cameras:  # cameras the model does not use are dropped, not decoded
            del obs[f"image_{role}"], obs[f"image_{role}_present"]
    return frame
