"""Transforms of single frames, run after the shuffle: decode, resize, augment, drop cameras.

Randomness is stateless: every random op of every camera of every frame draws
from its own seed, folded from the run seed, the frame's position in the
shuffled stream, the camera and the op, so crops and colour jitter are
independent of each other and a resumed run repeats them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from vla_jax.data.specs import CAMERA_ROLES

RESIZE_MODES = ("pad", "crop", "stretch")
AUGMENT_OPS = ("crop_scale", "crop_ratio", "brightness", "contrast", "saturation", "hue")
PNG_MAGIC = b"\x89PNG"


def resize_image(image: tf.Tensor, size: int, mode: str = "pad") -> tf.Tensor:
    """Resizes ``image [H, W, C]`` to ``[size, size, C]`` (same dtype).

    ``pad`` keeps the aspect ratio and pads with zeros, ``crop`` keeps it and
    takes the centre square, ``stretch`` ignores it.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}; expected one of {RESIZE_MODES}")
    dtype = image.dtype
    image = tf.cast(image, tf.float32)
    if mode == "crop":
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    if mode == "pad":
        image = tf.image.resize_with_pad(image, size, size, antialias=True)
    else:
        image = tf.image.resize(image, [size, size], antialias=True)
    if dtype == tf.uint8:
        image = tf.clip_by_value(tf.round(image), 0, 255)
    return tf.cast(image, dtype)


def fit_image(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """A decoded uint8 camera image ``[H, W, 3]`` as the model sees it: ``[size, size, 3]``, resized only if needed.

    The one resize of camera images: the pipeline applies it after decoding, a
    policy to a robot's raw frames.
    """
    shape = tf.shape(image)
    image = tf.cond(
        tf.logical_and(shape[0] == size, shape[1] == size),
        lambda: image,
        lambda: resize_image(image, size, mode),
    )
    return tf.ensure_shape(image, [size, size, 3])


def fit_depth(depth: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """A decoded float32 depth image ``[H, W, 1]`` as the model sees it: ``[size, size, 1]``."""
    return tf.ensure_shape(resize_image(depth, size, mode), [size, size, 1])


def decode_image(encoded: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """Encoded JPEG/PNG bytes to uint8 ``[size, size, 3]`` (see :func:`fit_image`)."""
    return fit_image(tf.io.decode_image(encoded, channels=3, expand_animations=False), size, mode)


def decode_depth(encoded: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """A 16-bit PNG or a serialized float tensor to float32 ``[size, size, 1]`` (raw units)."""

    def parse_float(encoded=encoded):
        array = tf.io.parse_tensor(encoded, tf.float32)
        return tf.reshape(array, tf.concat([tf.shape(array)[:2], [1]], 0))

    is_png = tf.equal(tf.strings.substr(encoded, 0, 4), PNG_MAGIC)
    depth = tf.cond(
        is_png, lambda: tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16), tf.float32), parse_float
    )
    depth.set_shape([None, None, 1])
    return fit_depth(depth, size, mode)


def decode_frame(
    frame: dict, cameras: tuple[str, ...], depth_cameras: tuple[str, ...], size: int, mode: str = "pad"
) -> dict:
    """Decodes the used cameras of one frame; drops the rest without decoding them.

    A missing camera becomes zeros with its ``*_present`` flag False (the model
    masks it). Keys ``goal_image_{role}``, if present, are decoded the same way.
    """
    frame = dict(frame, observation=dict(frame["observation"]))
    obs = frame["observation"]
    for prefix, roles, decode, channels, dtype in (
        ("image", cameras, decode_image, 3, tf.uint8),
        ("depth", depth_cameras, decode_depth, 1, tf.float32),
    ):
        for role in roles:
            key = f"{prefix}_{role}"
            if key not in obs:  # a depth camera this dataset does not have
                obs[key] = tf.zeros([size, size, channels], dtype)
                obs[f"{key}_present"] = tf.constant(False)
                continue
            encoded, present = obs[key], obs[f"{key}_present"]
            obs[key] = tf.cond(
                present,
                lambda encoded=encoded, decode=decode: decode(encoded, size, mode),
                lambda channels=channels, dtype=dtype: tf.zeros([size, size, channels], dtype),
            )
    for role in cameras:
        goal_key = f"goal_image_{role}"
        if goal_key in frame:
            frame[goal_key] = tf.cond(
                obs[f"image_{role}_present"],
                lambda g=frame[goal_key]: decode_image(g, size, mode),
                lambda: tf.zeros([size, size, 3], tf.uint8),
            )
    for key in list(obs):
        for prefix, roles in (("image_", cameras), ("depth_", depth_cameras)):
            if key.startswith(prefix) and not key.endswith("_present") and key[len(prefix) :] not in roles:
                del obs[key], obs[f"{key}_present"]
    for key in [k for k in frame if k.startswith("goal_image_") and k[len("goal_image_") :] not in cameras]:
        del frame[key]
    return frame


def op_seed(seed: tf.Tensor, *indices: int | tf.Tensor) -> tf.Tensor:
    """A stateless seed ``[2]`` folded from ``seed`` and each index in turn."""
    for index in indices:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(index, tf.int64))
    return seed


def augment_image(image: tf.Tensor, ops: Mapping, seed: tf.Tensor) -> tf.Tensor:
    """Random crop (resized back) and colour jitter of a uint8 ``[H, W, 3]`` image.

    ``ops`` keys (any subset): ``crop_scale (lo, hi)`` area fraction and
    ``crop_ratio (lo, hi)`` aspect range of the crop, ``brightness`` max delta
    (in [0, 1] units), ``contrast``/``saturation`` ``(lo, hi)`` factors, ``hue``
    max delta. Each op draws from its own seed.
    """
    unknown = set(ops) - set(AUGMENT_OPS)
    if unknown:
        raise ValueError(f"unknown augmentation ops {sorted(unknown)}; expected some of {AUGMENT_OPS}")
    height, width = image.shape[0], image.shape[1]
    x = tf.image.convert_image_dtype(image, tf.float32)
    if ops.get("crop_scale"):
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(x),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=op_seed(seed, 0),
            area_range=tuple(ops["crop_scale"]),
            aspect_ratio_range=tuple(ops.get("crop_ratio") or (1.0, 1.0)),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        x = tf.image.resize(tf.slice(x, begin, crop_size), [height, width], antialias=True)
    if ops.get("brightness"):
        x = tf.image.stateless_random_brightness(x, ops["brightness"], op_seed(seed, 1))
    if ops.get("contrast"):
        x = tf.image.stateless_random_contrast(x, *ops["contrast"], op_seed(seed, 2))
    if ops.get("saturation"):
        x = tf.image.stateless_random_saturation(x, *ops["saturation"], op_seed(seed, 3))
    if ops.get("hue"):
        x = tf.image.stateless_random_hue(x, ops["hue"], op_seed(seed, 4))
    return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), tf.uint8, saturate=True)


def _current(flag: tf.Tensor) -> tf.Tensor:
    """A camera's presence flag at the current step (the last of a history window)."""
    return flag[-1] if flag.shape.rank == 1 else flag


def augment_frame(frame: dict, augment: Mapping[str, Mapping], seed: tf.Tensor) -> dict:
    """Augments each camera named in ``augment`` (role -> ops) with its own seed.

    ``seed`` is the frame's seed. With a history window (images ``[W, H, W, 3]``)
    every step of the window gets the same crop and colour change. Absent
    cameras stay zeros.
    """
    frame = dict(frame, observation=dict(frame["observation"]))
    obs = frame["observation"]
    for role, ops in augment.items():
        if f"image_{role}" not in obs or not ops:
            continue
        camera_seed = op_seed(seed, CAMERA_ROLES.index(role))
        image = obs[f"image_{role}"]

        def apply(image=image, s=camera_seed, ops=ops):
            if image.shape.rank == 4:
                return tf.map_fn(lambda im: augment_image(im, ops, s), image)
            return augment_image(image, ops, s)

        obs[f"image_{role}"] = tf.cond(_current(obs[f"image_{role}_present"]), apply, lambda image=image: image)
    return frame


def drop_cameras(frame: dict, cameras: tuple[str, ...], probability: float, seed: tf.Tensor) -> dict:
    """Drops each present camera with ``probability`` (zeros, flag False), always keeping one.

    If every present camera would be dropped, the first present one in
    ``cameras`` order is kept. A dropped camera is dropped for its whole
    history window.
    """
    if probability <= 0 or not cameras:
        return frame
    frame = dict(frame, observation=dict(frame["observation"]))
    obs = frame["observation"]
    present = tf.stack([_current(obs[f"image_{r}_present"]) for r in cameras])
    draws = tf.random.stateless_uniform([len(cameras)], op_seed(seed, 99))
    keep = tf.logical_and(present, draws >= probability)
    first_present = tf.one_hot(tf.argmax(tf.cast(present, tf.int32)), len(cameras), on_value=True, off_value=False)
    keep = tf.cond(tf.reduce_any(keep), lambda: keep, lambda: tf.logical_and(first_present, present))
    for i, role in enumerate(cameras):
        obs[f"image_{role}_present"] = tf.logical_and(obs[f"image_{role}_present"], keep[i])
        obs[f"image_{role}"] = tf.where(keep[i], obs[f"image_{role}"], tf.zeros_like(obs[f"image_{role}"]))
    return frame
