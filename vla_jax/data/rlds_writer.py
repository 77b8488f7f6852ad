"""Writes episodes held as NumPy arrays to an RLDS builder directory with tensorflow-datasets.

The conversion step of a data engineer's workflow (raw arrays -> RLDS) and the
way tests build small datasets of any layout. An *episode* is a dict::

    {"steps": {key: array [T, ...] or nested dict of them}, "episode_metadata": {...}}

Features are inferred from the first episode: ``uint8 [T, H, W, 3]`` arrays
become JPEG (or PNG) images, ``uint16 [T, H, W, 1]`` PNG depth images, string
arrays text, bool arrays scalars, and everything else float/int tensors of the
per-step shape. Image arrays may also be given as lists of encoded bytes.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from vla_jax.errors import DataError


def _feature(key: str, value, image_encoding: str):
    import tensorflow_datasets as tfds

    if isinstance(value, Mapping):
        return {k: _feature(f"{key}/{k}", v, image_encoding) for k, v in value.items()}
    if isinstance(value, list | tuple) and value and isinstance(value[0], bytes):
        raise DataError(f"step key {key!r}: encoded image bytes need an explicit `image_shapes` entry")
    array = np.asarray(value)
    if array.dtype.kind in "SUO":
        return tfds.features.Text()
    if array.dtype == np.bool_ and array.ndim == 1:
        return tfds.features.Scalar(dtype=np.bool_)
    if array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] in (1, 3):
        return tfds.features.Image(shape=array.shape[1:], encoding_format=image_encoding)
    if array.dtype == np.uint16 and array.ndim == 4 and array.shape[-1] == 1:
        return tfds.features.Image(shape=array.shape[1:], dtype=np.uint16, encoding_format="png")
    if array.ndim == 1:
        return tfds.features.Scalar(dtype=array.dtype)
    return tfds.features.Tensor(shape=array.shape[1:], dtype=array.dtype)


def _steps_features(steps: Mapping, image_encoding: str, image_shapes: Mapping[str, tuple]):
    import tensorflow_datasets as tfds

    features = {}
    for key, value in steps.items():
        if isinstance(value, Mapping):
            sub_shapes = {k[len(key) + 1 :]: s for k, s in image_shapes.items() if k.startswith(f"{key}/")}
            features[key] = _steps_features(value, image_encoding, sub_shapes)
        elif key in image_shapes:
            features[key] = tfds.features.Image(shape=tuple(image_shapes[key]), encoding_format=image_encoding)
        else:
            features[key] = _feature(key, value, image_encoding)
    return features


def _unstack(steps: Mapping, length: int) -> list[dict]:
    """Stepwise dict of ``[T, ...]`` arrays -> list of per-step dicts (what tfds encodes)."""
    out = [{} for _ in range(length)]
    for key, value in steps.items():
        if isinstance(value, Mapping):
            for i, sub in enumerate(_unstack(value, length)):
                out[i][key] = sub
        else:
            if len(value) != length:
                raise DataError(f"step key {key!r} has {len(value)} entries, expected {length} (one per step)")
            for i in range(length):
                out[i][key] = value[i]
    return out


def _length(steps: Mapping) -> int:
    for value in steps.values():
        return _length(value) if isinstance(value, Mapping) else len(value)
    raise DataError("an episode has no step keys")


def write_rlds(
    data_dir: str | pathlib.Path,
    name: str,
    splits: Mapping[str, Sequence[dict]],
    *,
    version: str = "1.0.0",
    config_name: str | None = None,
    description: str = "",
    image_encoding: str = "jpeg",
    image_shapes: Mapping[str, tuple] | None = None,
    num_shards: int | None = None,
) -> pathlib.Path:
    """Writes ``splits`` (split name -> episodes) as RLDS under ``data_dir/name[/config]/version``.

    Args:
      image_shapes: step key path (``observation/image``) -> ``(H, W, C)`` for
        image keys given as encoded bytes instead of arrays.
      num_shards: files per split, at most the episodes of the smallest split
        (None: tensorflow-datasets decides by size).

    Returns the builder directory.
    """
    import tensorflow_datasets as tfds

    first = next((eps[0] for eps in splits.values() if len(eps)), None)
    if first is None:
        raise DataError(f"dataset {name!r}: no episodes to write")
    step_features = _steps_features(first["steps"], image_encoding, dict(image_shapes or {}))
    features = {"steps": tfds.features.Dataset(step_features)}
    if "episode_metadata" in first:
        features["episode_metadata"] = {
            k: _feature(f"episode_metadata/{k}", np.asarray([v]), image_encoding)
            for k, v in first["episode_metadata"].items()
        }
    configs = [tfds.core.BuilderConfig(name=config_name)] if config_name else None

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)
        BUILDER_CONFIGS = configs or []

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(features), description=description
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, episodes) for split, episodes in splits.items()}

        def _generate_examples(self, split, episodes):
            for index, episode in enumerate(episodes):
                example = {"steps": _unstack(episode["steps"], _length(episode["steps"]))}
                if "episode_metadata" in episode:
                    example["episode_metadata"] = episode["episode_metadata"]
                yield f"{split}_{index:06d}", example

    _Builder.name = name
    tfds.disable_progress_bar()
    if num_shards is not None:
        num_shards = max(1, min(num_shards, *(len(eps) for eps in splits.values())))
    builder = _Builder(data_dir=str(data_dir), config=config_name) if config_name else _Builder(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=num_shards))
    return pathlib.Path(builder.data_dir)
