"""From a data config to batches: the whole pipeline, in its one-way order.

RLDS -> standardize -> normalize -> chunk -> flatten to frames -> shuffle (on
encoded bytes) -> [resume skip] -> decode/resize + tokenize -> batch -> NumPy
-> global ``jax.Array`` on the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from vla_jax.data import demo, frame_transforms, standardize, statistics, traj_transforms, trajectory
from vla_jax.data.specs import DatasetSpec, get_spec
from vla_jax.errors import ConfigError
from vla_jax.tokenizers import WordHashTokenizer


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A dataset ready to read: its spec, where it lives, its statistics."""

    spec: DatasetSpec
    builder_dir: pathlib.Path
    builder: object  # tfds ReadOnlyBuilder
    statistics: statistics.DatasetStatistics


def resolve_builder_dir(spec: DatasetSpec, data_dir: str) -> pathlib.Path:
    """``data_dir/name[/config]/version``.

    With no ``data_dir``, the demo dataset is generated into (or read from) the
    cache dir; any other dataset needs an explicit ``data_dir``.
    """
    if not data_dir:
        if spec.name == demo.NAME:
            return demo.ensure_demo_dataset()
        raise ConfigError(f"dataset {spec.name!r} needs data.data_dir (the directory holding {spec.name}/)")
    path = pathlib.Path(data_dir) / spec.name
    if spec.config_name:
        path = path / spec.config_name
    path = path / spec.version
    if spec.name == demo.NAME and path.exists():
        demo.verify_cache(path)
    return path


def open_source(data_config: ml_collections.ConfigDict) -> DataSource:
    """Opens the configured dataset and loads (or computes and caches) its statistics."""
    if data_config.normalization not in statistics.NORMALIZATION_MODES:
        raise ConfigError(
            f"config key 'data.normalization' is {data_config.normalization!r}; "
            f"expected one of {statistics.NORMALIZATION_MODES}"
        )
    spec = get_spec(data_config.dataset)
    builder_dir = resolve_builder_dir(spec, data_config.data_dir)
    builder = trajectory.open_builder(builder_dir, spec.name)
    standardized = trajectory.traj_map(
        trajectory.from_rlds(builder, data_config.train_split), functools.partial(standardize.standardize, spec=spec)
    )
    stats = statistics.load_or_compute(spec, builder_dir, _without_images(standardized))
    return DataSource(spec, builder_dir, builder, stats)


def _without_images(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.map(lambda t: {"action": t["action"], "observation": {"proprio": t["observation"]["proprio"]}})


def _frames(source: DataSource, data_config: ml_collections.ConfigDict, split: str, shard: tuple[int, int]):
    """Normalized, chunked frames of one split with images still encoded."""
    ds = trajectory.from_rlds(source.builder, split)
    ds = ds.shard(shard[1], shard[0]) if shard[1] > 1 else ds
    ds = trajectory.traj_map(ds, functools.partial(standardize.standardize, spec=source.spec))
    ds = trajectory.traj_map(
        ds,
        functools.partial(
            traj_transforms.normalize_trajectory, stats=source.statistics, mode=data_config.normalization
        ),
    )
    ds = trajectory.traj_map(ds, functools.partial(traj_transforms.chunk_actions, horizon=data_config.action_horizon))
    return trajectory.flatten(ds)


def _to_model_inputs(frame: dict, data_config: ml_collections.ConfigDict) -> dict:
    """Decodes images, tokenizes the instruction and flattens to the batch layout."""
    cameras = tuple(data_config.cameras)
    frame = frame_transforms.decode_and_resize(frame, cameras, data_config.image_size)
    text_ids, text_mask = WordHashTokenizer(data_config.text_vocab_size, data_config.max_text_length).encode_tf(
        frame["language_instruction"]
    )
    obs = frame["observation"]
    out = {
        "state": obs["proprio"],
        "text_ids": text_ids,
        "text_mask": text_mask,
        "actions": frame["action"],
        "action_mask": frame["action_mask"],
    }
    for role in cameras:
        out[f"image_{role}"] = obs[f"image_{role}"]
        out[f"image_{role}_mask"] = obs[f"image_{role}_present"]
    return out


def train_batches(
    source: DataSource,
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """An endless, seeded stream of this process's part of each global batch.

    The stream is a function of ``seed`` alone; resuming at ``start_step`` skips
    the frames of earlier steps before their images are decoded, so a resumed
    run sees exactly the batches an uninterrupted run would have.
    """
    process_count, process_index = jax.process_count(), jax.process_index()
    if global_batch_size % process_count:
        raise ConfigError(f"batch_size {global_batch_size} is not divisible by the {process_count} processes")
    local_batch = global_batch_size // process_count
    ds = _frames(source, data_config, data_config.train_split, (process_index, process_count))
    ds = ds.repeat().shuffle(data_config.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    ds = ds.skip(start_step * local_batch)
    ds = trajectory.frame_map(ds, functools.partial(_to_model_inputs, data_config=data_config))
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
    return ds.as_numpy_iterator()


def val_batches(
    source: DataSource, data_config: ml_collections.ConfigDict, *, global_batch_size: int
) -> list[dict[str, np.ndarray]]:
    """The validation split in a fixed order, at most ``data.val_batches`` full batches."""
    process_count, process_index = jax.process_count(), jax.process_index()
    local_batch = global_batch_size // process_count
    ds = _frames(source, data_config, data_config.val_split, (process_index, process_count))
    ds = trajectory.frame_map(ds, functools.partial(_to_model_inputs, data_config=data_config))
    ds = ds.batch(local_batch, drop_remainder=True).take(data_config.val_batches)
    return list(ds.as_numpy_iterator())


def to_global_batch(local_batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded over the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
