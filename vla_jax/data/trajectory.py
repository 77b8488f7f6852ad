"""A thin trajectory-dataset layer over tf.data.

A *trajectory* is a dict of tensors that share a leading time axis ``[T, ...]``;
a *frame* is one time step of it. RLDS episodes are read with their image
features left as encoded bytes (decoding comes after the shuffle, on frames).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import tensorflow as tf

from vla_jax.errors import DataError

tf.config.set_visible_devices([], "GPU")  # tf.data only: keep accelerators for JAX

Trajectory = dict


def skip_image_decoding(features):
    """A tfds decoders tree that leaves every Image feature as encoded bytes."""
    import tensorflow_datasets as tfds

    if isinstance(features, tfds.features.Image):
        return tfds.decode.SkipDecoding()
    if isinstance(features, tfds.features.Dataset):
        return skip_image_decoding(features.feature)
    if isinstance(features, tfds.features.FeaturesDict):
        decoders = {k: skip_image_decoding(v) for k, v in features.items()}
        return {k: v for k, v in decoders.items() if v is not None} or None
    return None


def open_builder(builder_dir: str | pathlib.Path, dataset_name: str):
    """Opens an RLDS builder directory (the one holding ``dataset_info.json``)."""
    import tensorflow_datasets as tfds

    path = pathlib.Path(builder_dir)
    if not (path / "dataset_info.json").is_file():
        raise DataError(
            f"dataset {dataset_name!r}: no RLDS builder directory at {path} "
            "(expected a dataset_info.json there; check config key data.data_dir)"
        )
    try:
        return tfds.builder_from_directory(str(path))
    except Exception as e:
        raise DataError(f"dataset {dataset_name!r}: cannot open RLDS builder at {path}: {e}") from None


def from_rlds(
    builder,
    split: str,
    *,
    shuffle_seed: int | None = None,
    num_parallel_reads: int = 1,
    shard: tuple[int, int] = (0, 1),
) -> tf.data.Dataset:
    """Episodes of an RLDS split as trajectories; images stay encoded.

    Each element holds the episode's ``steps`` features stacked over time plus
    ``episode_metadata`` (if the dataset has it), broadcast to every step.

    Args:
      split: a tfds split, sub-splits like ``train[:95%]`` included.
      shuffle_seed: if set, the order of the files is shuffled with this seed
        (reshuffled, deterministically, on every repetition).
      num_parallel_reads: how many files are read at once.
      shard: ``(index, count)``: this reader gets every ``count``-th file of the
        split starting at ``index``, so readers never share a file. With fewer
        files than readers it falls back to disjoint ranges of episodes.
    """
    import tensorflow_datasets as tfds

    base = split.split("[")[0]
    if base not in builder.info.splits:
        raise DataError(f"dataset {builder.name!r} has no split {base!r}; it has {sorted(builder.info.splits)}")
    index, count = shard
    read_config = dict(
        interleave_cycle_length=num_parallel_reads,
        shuffle_seed=shuffle_seed,
        shuffle_reshuffle_each_iteration=True,
        try_autocache=False,
    )
    if count > 1:
        if num_files(builder, split) >= count:
            read_config["input_context"] = tf.distribute.InputContext(count, index, 1)
        else:
            split = tfds.even_splits(split, count)[index]
    decoders = {"steps": skip_image_decoding(builder.info.features["steps"])}
    episodes = builder.as_dataset(
        split=split,
        decoders=decoders,
        shuffle_files=shuffle_seed is not None,
        read_config=tfds.ReadConfig(**read_config),
    )

    def to_trajectory(episode):
        steps = stack_steps(episode["steps"])
        if "episode_metadata" in episode:
            length = tf.shape(tf.nest.flatten(steps)[0])[0]
            steps["episode_metadata"] = tf.nest.map_structure(
                lambda x: tf.repeat(x[None], length, axis=0), episode["episode_metadata"]
            )
        return steps

    trajectories = episodes.map(to_trajectory, num_parallel_calls=num_parallel_reads, deterministic=True)
    # Episodes without steps hold no frames; `vla-jax data check` reports them.
    return trajectories.filter(lambda t: tf.shape(tf.nest.flatten(t)[0])[0] > 0)


def stack_steps(steps: tf.data.Dataset) -> dict:
    """An episode's step dataset as one dict of ``[T, ...]`` tensors (``T`` may be 0)."""
    batched = steps.batch(2**31 - 1)
    empty = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda spec: tf.zeros([0, *spec.shape[1:]], spec.dtype), batched.element_spec)
    )
    return batched.concatenate(empty).take(1).get_single_element()


def num_files(builder, split: str) -> int:
    """How many record files hold (part of) ``split``."""
    return len(builder.info.splits[split].file_instructions)


def num_episodes(builder, split: str) -> int:
    return int(builder.info.splits[split].num_examples)


def traj_map(
    ds: tf.data.Dataset, fn: Callable[[Trajectory], Trajectory], threads: int | None = None
) -> tf.data.Dataset:
    """Applies ``fn`` to whole trajectories, on ``threads`` threads (None: autotuned)."""
    return ds.map(fn, num_parallel_calls=threads or tf.data.AUTOTUNE, deterministic=True)


def flatten(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Trajectories to a stream of frames, in order.

    ``unbatch`` copies each frame out of its trajectory. Slicing views (what
    ``flat_map(from_tensor_slices)`` gives) would keep a whole trajectory alive
    for every frame of it left in a shuffle buffer, so host RAM would creep up
    for epochs instead of staying at the buffer's size.
    """
    return ds.unbatch()


def frame_map(ds: tf.data.Dataset, fn: Callable[[dict], dict], threads: int | None = None) -> tf.data.Dataset:
    """Applies ``fn`` to single frames (after :func:`flatten`), in parallel, order kept."""
    return ds.map(fn, num_parallel_calls=threads or tf.data.AUTOTUNE, deterministic=True)
