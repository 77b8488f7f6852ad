"""From a data config to batches: the whole pipeline, in its one-way order.

Per dataset: RLDS files (this host's share) -> standardize -> filter ->
resample -> normalize -> pad to the unified widths -> goal relabel -> chunk ->
history -> subsample -> frames -> shuffle (on encoded bytes).
Then: weighted interleave -> [resume skip] -> decode/resize/augment/drop
cameras + tokenize -> batch -> NumPy -> global ``jax.Array`` on the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import queue
import threading
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from vla_jax.data import demo, frame_transforms, mixture, standardize, statistics, traj_transforms, trajectory
from vla_jax.data.specs import DatasetSpec, get_spec, resolve_mixture
from vla_jax.errors import ConfigError, DataError
from vla_jax.observation import Batch, Observation
from vla_jax.tokenizers.prompt import PROMPT_KEYS, PromptTokenizer


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One dataset ready to read: spec, location, splits, statistics, rate conversion."""

    spec: DatasetSpec
    builder_dir: pathlib.Path
    builder: object  # tfds ReadOnlyBuilder
    train_split: str
    val_split: str
    stride: int  # native steps per training step (control-rate resampling)
    statistics: statistics.DatasetStatistics

    @property
    def bytes_per_frame(self) -> float:
        """Encoded bytes per frame on disk (what a frame costs in a shuffle buffer)."""
        info = self.builder.info
        episodes = sum(int(split.num_examples) for split in info.splits.values())
        bytes_per_episode = float(info.dataset_size) / max(episodes, 1)
        stats = self.statistics
        native_steps_per_episode = stats.num_transitions * self.stride / max(stats.num_trajectories, 1)
        return max(bytes_per_episode / max(native_steps_per_episode, 1.0), 1.0)


@dataclasses.dataclass(frozen=True)
class DataMixture:
    """The datasets of a run, their sampling probabilities and the unified widths."""

    name: str
    sources: tuple[DataSource, ...]
    probabilities: np.ndarray
    action_dim: int
    state_dim: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.spec.name for s in self.sources)

    def statistics_json(self) -> dict:
        """Per-dataset statistics with their normalization mode (saved with checkpoints)."""
        return {s.spec.name: s.statistics.to_json() for s in self.sources}


def _subdirs(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def locate_builder_dir(spec: DatasetSpec, data_dir: str | pathlib.Path) -> tuple[pathlib.Path, tuple[str, str] | None]:
    """The expected builder directory ``DATA_DIR/NAME/[CONFIG/]VERSION`` and, if it is not
    there, ``(kind, message)`` saying why (kinds: ``not_found``, ``wrong_version``)."""
    root = pathlib.Path(data_dir).expanduser()
    dataset_dir = root / spec.rlds_name
    config_dir = dataset_dir / spec.config_name if spec.config_name else dataset_dir
    expected = config_dir / spec.version
    if not root.is_dir():
        return expected, ("not_found", f"dataset {spec.name!r}: data dir {str(root)!r} does not exist")
    if not dataset_dir.is_dir():
        found = _subdirs(root)
        listing = f"it holds {found[:20]}{' ...' if len(found) > 20 else ''}" if found else "it is empty"
        return expected, (
            "not_found",
            f"dataset {spec.name!r}: no directory {spec.rlds_name!r} under data dir {str(root)!r} ({listing}); "
            "pass the TFDS data dir that holds NAME/[CONFIG/]VERSION/",
        )
    if spec.config_name and not config_dir.is_dir():
        return expected, (
            "not_found",
            f"dataset {spec.name!r}: no builder config {spec.config_name!r} in {str(dataset_dir)!r} "
            f"(found {_subdirs(dataset_dir)}); fix config_name in the spec",
        )
    if not expected.is_dir():
        versions = [v for v in _subdirs(config_dir) if v[:1].isdigit()]
        found = f"found versions {versions}" if versions else "no version directories there"
        return expected, (
            "wrong_version",
            f"dataset {spec.name!r}: version {spec.version!r} not found in {str(config_dir)!r} ({found}); "
            "set version in the spec to the one you converted, or convert again",
        )
    return expected, None


def resolve_builder_dir(spec: DatasetSpec, data_dir: str) -> pathlib.Path:
    """``data_dir/name[/config]/version``; a DataError says what is missing.

    With no ``data_dir``, the demo dataset is generated into (or read from) the
    cache dir; any other dataset needs an explicit ``data_dir``.
    """
    if not data_dir:
        if spec.rlds_name == demo.NAME:
            return demo.ensure_demo_dataset(config_name=spec.config_name)
        raise ConfigError(f"dataset {spec.name!r} needs data.data_dir (the directory holding {spec.rlds_name}/)")
    path, problem = locate_builder_dir(spec, data_dir)
    if problem is not None:
        raise DataError(f"{problem[1]} (config key data.data_dir)")
    if spec.rlds_name == demo.NAME:
        demo.verify_cache(path)
    return path


def resolve_splits(spec: DatasetSpec, builder) -> tuple[str, str]:
    """The train and validation splits by the spec's rule (a named split, or a held-out tail)."""
    available = set(builder.info.splits)
    if spec.train_split not in available:
        raise DataError(f"dataset {spec.name!r} has no split {spec.train_split!r}; it has {sorted(available)}")
    if spec.val_split is None:
        percent = round(100 * (1 - spec.val_fraction))
        train, val = f"{spec.train_split}[:{percent}%]", f"{spec.train_split}[{percent}%:]"
    else:
        if spec.val_split not in available:
            raise DataError(
                f"dataset {spec.name!r} has no split {spec.val_split!r} (its spec's val_split); it has "
                f"{sorted(available)}. Set val_split=None to hold out the end of {spec.train_split!r}."
            )
        train, val = spec.train_split, spec.val_split
    for split in (train, val):
        if trajectory.num_episodes(builder, split) == 0:
            raise DataError(f"dataset {spec.name!r}: split {split!r} has no episodes")
    return train, val


def _filters(spec: DatasetSpec, data_config) -> list:
    """The trajectory filters the config asks for (predicates on standardized trajectories)."""
    filters = []
    if data_config.skip_unlabeled and spec.language_key:
        filters.append(traj_transforms.has_language)
    if data_config.max_action > 0:
        filters.append(functools.partial(traj_transforms.actions_within, max_abs=data_config.max_action))
    return filters


def _apply_prepared(ds, spec, data_config, stride, threads=None):
    """Standardize, filter and resample: everything before normalization."""
    ds = trajectory.traj_map(ds, functools.partial(standardize.standardize, spec=spec), threads)
    for predicate in _filters(spec, data_config):
        ds = ds.filter(predicate)
    return trajectory.traj_map(ds, functools.partial(traj_transforms.resample, spec=spec, stride=stride), threads)


def open_source(spec: DatasetSpec, data_config: ml_collections.ConfigDict) -> DataSource:
    """Opens one dataset and loads (or computes and caches) its statistics on its train split."""
    builder_dir = resolve_builder_dir(spec, data_config.data_dir)
    builder = trajectory.open_builder(builder_dir, spec.name)
    train, val = resolve_splits(spec, builder)
    stride = traj_transforms.resample_stride(spec, data_config.target_control_hz)
    filters = _filters(spec, data_config)
    settings = f"stride={stride};skip_unlabeled={data_config.skip_unlabeled};max_action={data_config.max_action}"
    trajectories = _apply_prepared(
        trajectory.from_rlds(builder, train, num_parallel_reads=data_config.read_threads), spec, data_config, stride
    )
    without_images = trajectories.map(
        lambda t: {"action": t["action"], "observation": {"proprio": t["observation"]["proprio"]}}
    )
    stats = statistics.load_or_compute(
        spec,
        builder_dir,
        without_images,
        transforms=[traj_transforms.resample, *[getattr(f, "func", f) for f in filters]],
        settings=settings,
    )
    stats = dataclasses.replace(stats, normalization=data_config.normalization)
    return DataSource(spec, builder_dir, builder, train, val, stride, stats)


# The model reads one frame per camera; a window of past frames is not wired into it (see docs/ARCHITECTURE.md).
HISTORY_REFUSED = (
    "config key 'data.history' is {}; expected 1: the model reads only the current frame "
    "(observation history is not wired into the model)"
)


def open_mixture(data_config: ml_collections.ConfigDict) -> DataMixture:
    """Opens every dataset of ``data.mixture`` and works out weights and unified widths."""
    if data_config.normalization not in statistics.NORMALIZATION_MODES:
        raise ConfigError(
            f"config key 'data.normalization' is {data_config.normalization!r}; "
            f"expected one of {statistics.NORMALIZATION_MODES}"
        )
    if data_config.history != 1:
        raise ConfigError(HISTORY_REFUSED.format(data_config.history))
    mix = resolve_mixture(data_config.mixture)
    sources = tuple(open_source(get_spec(name), data_config) for name, _ in mix.weights)
    probabilities = mixture.sampling_weights(
        [w for _, w in mix.weights], [s.statistics.num_transitions for s in sources], data_config.balance_weights
    )
    widths = {}
    for key, have in (
        ("action_dim", [s.spec.action_dim for s in sources]),
        ("state_dim", [len(s.statistics.state.mean) for s in sources]),
    ):
        wanted = data_config[key]
        widths[key] = wanted or max(have)
        if max(have) > widths[key]:
            worst = sources[int(np.argmax(have))].spec.name
            raise ConfigError(
                f"config key 'data.{key}' is {wanted}, but dataset {worst!r} has {max(have)} dims "
                "(0 means: the largest in the mixture)"
            )
    return DataMixture(mix.name, sources, probabilities, widths["action_dim"], widths["state_dim"])


def _trajectory_seed(seed: int, dataset_index: int, traj_index: tf.Tensor) -> tf.Tensor:
    return frame_transforms.op_seed(tf.constant([seed, dataset_index], tf.int64), traj_index)


def _frames(
    source: DataSource,
    dataset_index: int,
    mix: DataMixture,
    data_config: ml_collections.ConfigDict,
    *,
    training: bool,
    seed: int,
    threads: int,
    read_threads: int,
) -> tf.data.Dataset:
    """One dataset's normalized, chunked frames with images still encoded."""
    spec = source.spec
    files = _check_host_sharding(data_config) == "files"
    shard = (jax.process_index(), jax.process_count()) if files else (0, 1)
    split = source.train_split if training else source.val_split
    ds = trajectory.from_rlds(
        source.builder,
        split,
        shuffle_seed=seed + dataset_index if training else None,
        num_parallel_reads=read_threads,
        shard=shard,
    )
    if training:
        ds = ds.repeat()
    ds = _apply_prepared(ds, spec, data_config, source.stride, threads)
    mode = data_config.normalization

    def finish(index, traj):
        traj = traj_transforms.normalize_trajectory(traj, source.statistics, mode)
        traj = traj_transforms.pad_dims(traj, mix.action_dim, mix.state_dim)
        traj = _keep_used_cameras(traj, tuple(data_config.cameras), tuple(data_config.depth_cameras))
        length = tf.shape(traj["action"])[0]
        traj["dataset_index"] = tf.fill([length], dataset_index)
        traj["control_hz"] = tf.fill([length], tf.constant(spec.control_frequency_hz / source.stride, tf.float32))
        if data_config.goal_relabeling:
            traj = traj_transforms.relabel_goal(
                traj, tuple(data_config.cameras), _trajectory_seed(seed, dataset_index, 2 * index)
            )
        traj = traj_transforms.chunk_actions(traj, data_config.action_horizon)
        traj = traj_transforms.history_window(traj, data_config.history)
        if training and data_config.subsample_length > 0:
            traj = traj_transforms.subsample(
                traj, data_config.subsample_length, _trajectory_seed(seed, dataset_index, 2 * index + 1)
            )
        for key in ("episode_metadata", "timestep"):
            traj.pop(key, None)
        return traj

    ds = ds.enumerate().map(finish, num_parallel_calls=threads, deterministic=True)
    return trajectory.flatten(ds)


def _keep_used_cameras(traj: dict, cameras: tuple[str, ...], depth_cameras: tuple[str, ...]) -> dict:
    """Drops cameras the model does not use (before the shuffle buffer holds them) and adds
    empty, absent entries for used depth cameras a dataset lacks, so every dataset of a
    mixture yields the same structure."""
    obs = dict(traj["observation"])
    length = tf.shape(traj["action"])[0]
    for key in [k for k in obs if k.startswith(("image_", "depth_")) and not k.endswith("_present")]:
        prefix, role = key.split("_", 1)
        if role not in (cameras if prefix == "image" else depth_cameras):
            del obs[key], obs[f"{key}_present"]
    for role in depth_cameras:
        if f"depth_{role}" not in obs:
            obs[f"depth_{role}"] = tf.fill([length], "")
            obs[f"depth_{role}_present"] = tf.zeros([length], tf.bool)
    return dict(traj, observation=obs)


def _to_model_inputs(frame: dict, data_config: ml_collections.ConfigDict, seed: tf.Tensor | None) -> dict:
    """Decodes (and, with a seed, augments) images and flattens one frame to the flat layout of :func:`_as_batch`.

    The raw ``instruction`` string is kept for the prompt tokenizer to use after batching.
    """
    cameras, depth_cameras = tuple(data_config.cameras), tuple(data_config.depth_cameras)
    decode = functools.partial(
        frame_transforms.decode_frame,
        cameras=cameras,
        depth_cameras=depth_cameras,
        size=data_config.image_size,
        mode=data_config.resize_mode,
    )
    frame = decode(frame)
    if seed is not None:
        augment = {role: dict(ops) for role, ops in dict(data_config.augment).items() if role in cameras}
        frame = frame_transforms.augment_frame(frame, augment, seed) if augment else frame
        frame = frame_transforms.drop_cameras(frame, cameras, data_config.image_dropout, seed)
    obs = frame["observation"]
    out = {
        "state": obs["proprio"],
        "state_dim_mask": frame["state_dim_mask"],
        "actions": frame["action"],
        "action_mask": frame["action_mask"],
        "action_dim_mask": frame["action_dim_mask"],
        "action_space": frame["action_space"],
        "dataset_index": frame["dataset_index"],
        "control_hz": frame["control_hz"],
        "instruction": frame["language_instruction"],
    }
    for role in cameras:
        out[f"image/{role}"] = obs[f"image_{role}"]
        out[f"image_mask/{role}"] = obs[f"image_{role}_present"]
        if f"goal_image_{role}" in frame:
            out[f"image/goal_{role}"] = frame[f"goal_image_{role}"]
            out[f"image_mask/goal_{role}"] = obs[f"image_{role}_present"]
    for role in depth_cameras:
        out[f"image/depth_{role}"] = obs[f"depth_{role}"]
        out[f"image_mask/depth_{role}"] = obs[f"depth_{role}_present"]
    return out


def _as_batch(flat: dict[str, np.ndarray]) -> Batch:
    """The typed :class:`Batch` of one flat NumPy batch (the edge of tf.data).

    Without prompt arrays (a stream with no prompt tokenizer: the pipeline's own
    tests and throughput benchmark), the prompt fields are ``[B, 0]``; no model accepts that.
    """
    rows = flat["actions"].shape[0]
    no_prompt = np.zeros((rows, 0), bool)
    return Batch(
        observation=Observation(
            images={k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("image/")},
            image_masks={k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("image_mask/")},
            state=flat["state"],
            state_mask=flat["state_dim_mask"],
            prompt_tokens=flat.get("prompt_tokens", no_prompt.astype(np.int32)),
            prompt_mask=flat.get("prompt_mask", no_prompt),
            prompt_ar_mask=flat.get("prompt_ar_mask", no_prompt),
            action_dim_mask=flat["action_dim_mask"],
            action_space=flat["action_space"],
        ),
        actions=flat["actions"],
        action_mask=flat["action_mask"],
        prompt_loss_mask=flat.get("prompt_loss_mask", no_prompt),
        prompt_truncated=flat.get("prompt_truncated", np.zeros(rows, bool)),
        dataset_index=flat["dataset_index"],
        control_hz=flat["control_hz"],
    )


def _add_prompts(ds: tf.data.Dataset, prompt: PromptTokenizer, with_actions: bool) -> tf.data.Dataset:
    """Replaces each batch's ``instruction`` strings with π0-FAST prompt arrays (see ``PROMPT_KEYS``).

    Without ``with_actions`` the prompts hold only the prefix (no action postfix).

    Runs the prompt tokenizer (sentencepiece, FAST) on tf.data's threads, so it
    overlaps with the training step.
    """

    def tokenize(instruction, state, state_mask, actions):
        out = prompt.tokenize(instruction, state, state_mask, actions if with_actions else None)
        return [out[key] for key in PROMPT_KEYS]

    def add(batch: dict) -> dict:
        batch = dict(batch)
        inputs = [batch.pop("instruction"), batch["state"], batch["state_dim_mask"], batch["actions"]]
        dtypes = [tf.int32] + [tf.bool] * (len(PROMPT_KEYS) - 1)
        outputs = tf.numpy_function(tokenize, inputs, dtypes, stateful=False)
        rows = batch["state"].shape[0]
        for key, value in zip(PROMPT_KEYS, outputs, strict=True):
            value.set_shape([rows] if key == "prompt_truncated" else [rows, prompt.max_length])
            batch[key] = value
        return batch

    return ds.map(add, num_parallel_calls=2, deterministic=True)


def _local_batch_size(global_batch_size: int) -> int:
    process_count = jax.process_count()
    if global_batch_size % process_count:
        raise ConfigError(f"batch_size {global_batch_size} is not divisible by the {process_count} processes")
    return global_batch_size // process_count


def _options(data_config: ml_collections.ConfigDict) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.ram_budget = int(data_config.ram_budget_gb * 2**30)
    options.experimental_optimization.map_parallelization = True
    return options


def train_batches(
    mix: DataMixture,
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    prompt: PromptTokenizer | None = None,
    prompt_actions: bool | None = None,
) -> Iterator[Batch]:
    """An endless, seeded stream of this process's part of each global batch.

    With ``prompt``, batches carry π0-FAST prompt arrays (what the model
    needs); with ``prompt_actions`` False, prompts have no action postfix
    (default: a postfix when the prompt tokenizer has an action tokenizer).

    The stream is a function of ``seed`` alone; resuming at ``start_step`` skips
    the frames of earlier steps before their images are decoded, so a resumed
    run sees exactly the batches (and augmentations) an uninterrupted run would.
    With ``data.host_sharding = "replicated"`` every process builds the whole
    global batch and keeps its own rows.
    """
    local_batch = _local_batch_size(global_batch_size)
    if _check_host_sharding(data_config) == "replicated":
        local_batch = global_batch_size  # frames per step in this process's stream
    probabilities = mix.probabilities
    threads = mixture.split_budget(data_config.transform_threads, probabilities)
    reads = mixture.split_budget(data_config.read_threads, probabilities)
    budget = data_config.ram_budget_gb * 2**30 * data_config.shuffle_ram_fraction
    frame_cost = [s.bytes_per_frame for s in mix.sources]
    buffers = mixture.shuffle_buffers(probabilities, frame_cost, budget, data_config.shuffle_buffer_size)
    per_dataset = [
        _frames(s, i, mix, data_config, training=True, seed=seed, threads=threads[i], read_threads=reads[i]).shuffle(
            buffers[i], seed=seed + 1000 + i, reshuffle_each_iteration=True
        )
        for i, s in enumerate(mix.sources)
    ]
    ds = mixture.interleave(per_dataset, probabilities, seed)
    ds = ds.enumerate().skip(start_step * local_batch)
    base_seed = tf.constant([seed, 7], tf.int64)
    ds = ds.map(
        lambda i, frame: _to_model_inputs(frame, data_config, frame_transforms.op_seed(base_seed, i)),
        num_parallel_calls=data_config.transform_threads,
        deterministic=True,
    )
    ds = _batch_for_this_host(ds, data_config, global_batch_size)
    ds = _with_prompts(ds, prompt, prompt_actions)
    ds = ds.prefetch(2).with_options(_options(data_config))
    return map(_as_batch, ds.as_numpy_iterator())


def _with_prompts(ds: tf.data.Dataset, prompt: PromptTokenizer | None, with_actions: bool | None) -> tf.data.Dataset:
    """Batches with prompt arrays, or (no prompt tokenizer) without their instruction strings."""
    if prompt is None:
        return ds.map(lambda batch: {k: v for k, v in batch.items() if k != "instruction"})
    return _add_prompts(ds, prompt, prompt.actions is not None if with_actions is None else with_actions)


HOST_SHARDING = ("files", "replicated")


def _batch_for_this_host(ds: tf.data.Dataset, data_config: ml_collections.ConfigDict, global_batch_size: int):
    """Batches of this process's rows: its own stream's, or its slice of the whole global batch (replicated)."""
    local_batch = _local_batch_size(global_batch_size)
    if _check_host_sharding(data_config) == "files":
        return ds.batch(local_batch, drop_remainder=True)
    start = jax.process_index() * local_batch
    ds = ds.batch(global_batch_size, drop_remainder=True)
    return ds.map(lambda batch: {k: v[start : start + local_batch] for k, v in batch.items()})


def _check_host_sharding(data_config: ml_collections.ConfigDict) -> str:
    if data_config.host_sharding not in HOST_SHARDING:
        raise ConfigError(
            f"config key 'data.host_sharding' is {data_config.host_sharding!r}; expected one of {HOST_SHARDING}"
        )
    return data_config.host_sharding


def val_batches(
    mix: DataMixture,
    data_config: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    prompt: PromptTokenizer | None = None,
    prompt_actions: bool | None = None,
) -> list[Batch]:
    """At most ``data.val_batches`` full batches of the validation splits, mixed in a fixed order.

    ``prompt`` and ``prompt_actions`` as in :func:`train_batches`.
    """
    per_dataset = [
        _frames(s, i, mix, data_config, training=False, seed=0, threads=2, read_threads=1)
        for i, s in enumerate(mix.sources)
    ]
    if len(per_dataset) == 1:  # one dataset: each validation frame once, in order
        ds = per_dataset[0]
    else:  # several: drawn with the mixture's weights in a fixed order
        ds = mixture.interleave([d.repeat() for d in per_dataset], mix.probabilities, seed=0)
    ds = ds.map(functools.partial(_to_model_inputs, data_config=data_config, seed=None), num_parallel_calls=4)
    ds = _batch_for_this_host(ds, data_config, global_batch_size).take(data_config.val_batches)
    ds = _with_prompts(ds, prompt, prompt_actions)
    return [_as_batch(b) for b in ds.with_options(_options(data_config)).as_numpy_iterator()]


def action_chunks(
    mix: DataMixture, data_config: ml_collections.ConfigDict, *, split: str, max_chunks: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Up to ``max_chunks`` normalized, padded action chunks of a split, without reading images.

    Returns ``actions [N, H, A]``, ``action_mask [N, H]``, ``action_dim_mask [N, A]``,
    ``dataset_index [N]`` and ``instruction [N]`` (bytes). ``split="train"`` draws
    shuffled frames with the mixture's weights; ``"val"`` reads the held-out
    frames in order, mixed by weight. This is what action tokenizers are fit and
    evaluated on.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    no_images = ml_collections.ConfigDict(data_config.to_dict())
    no_images.cameras, no_images.depth_cameras, no_images.goal_relabeling = (), (), False
    keys = ("action", "action_mask", "action_dim_mask", "dataset_index", "language_instruction")
    training = split == "train"
    per_dataset = []
    for i, source in enumerate(mix.sources):
        ds = _frames(source, i, mix, no_images, training=training, seed=seed, threads=2, read_threads=2)
        ds = ds.map(lambda frame: {k: frame[k] for k in keys})
        per_dataset.append(ds.shuffle(10_000, seed=seed + i) if training else ds)
    ds = mixture.interleave(per_dataset, mix.probabilities, seed).take(max_chunks).batch(1024)
    parts = list(ds.with_options(_options(data_config)).as_numpy_iterator())
    if not parts:
        raise DataError(f"the {split} split of mixture {mix.name!r} has no frames")
    joined = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    joined["actions"], joined["instruction"] = joined.pop("action"), joined.pop("language_instruction")
    return joined


def to_global_batch(local_batch: Batch, sharding: jax.sharding.NamedSharding) -> Batch:
    """Assembles each process's rows into global arrays sharded over the batch axis."""
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), local_batch)


def prefetch_global_batches(
    batches: Iterator[Batch], sharding: jax.sharding.NamedSharding, size: int = 2
) -> Iterator[Batch]:
    """Global batches assembled ``size`` steps ahead on a background thread, in order.

    Taking the next batch from tf.data and placing it on the devices then
    overlaps with the running step instead of adding to it. An error in the
    stream is raised at the ``next`` that would have returned its batch.
    Close the generator when done with it (the trainer does), so the thread
    stops before the process exits.
    """
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def fill():
        try:
            for local in batches:
                item = to_global_batch(local, sharding)
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            buffer.put(error)
            return
        buffer.put(StopIteration())

    thread = threading.Thread(target=fill, name="vla_jax-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if isinstance(item, StopIteration):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # on close(): let the thread leave tf.data before the interpreter tears it down
        stop.set()
        thread.join(timeout=60)
