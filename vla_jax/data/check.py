"""``vla-jax data check``: validates an RLDS dataset against its spec and scans it for bad data.

Two stages. First the builder directory is found under the TFDS layout
``DATA_DIR/NAME/[CONFIG/]VERSION/`` and its features are checked against the
spec (after the spec's ``standardize_fn``, if it has one): every named key
exists, cameras are encoded images, the action has ``len(spec.action_dims)``
dims. Then every episode of every split is read in the canonical tfds order
(episode ``i`` of split ``s`` is ``tfds split "s[i:i+1]"``) and checked for
empty episodes, NaN/inf, out-of-range actions, undecodable images, missing
instructions and inconsistent ``is_first``/``is_last`` flags.

The result is a JSON-able report; nothing about the data raises. Problems of
severity ``error`` make the dataset unusable (the pipeline would crash or
train on garbage); ``warning`` ones deserve a look but do not block training.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

import numpy as np
import tensorflow as tf

from vla_jax.data.loader import locate_builder_dir
from vla_jax.data.specs import GRIPPER_CONVENTIONS, DatasetSpec, get_spec
from vla_jax.data.standardize import lookup
from vla_jax.data.trajectory import open_builder, skip_image_decoding, stack_steps
from vla_jax.errors import DataError

ERROR = "error"
WARNING = "warning"
MAX_PER_KIND = 20  # problems listed per kind; the rest are only counted
MAX_ACTION_MAGNITUDE = 1e4
GRIPPER_TOLERANCE = 1e-3
FLAG_KEYS = ("is_first", "is_last")
PNG_MAGIC = b"\x89PNG"


# ----------------------------------------------------------------------------- problems


class Problems:
    """Collects problems, listing at most ``MAX_PER_KIND`` of each kind and counting all."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.listed: list[dict] = []
        self.counts: collections.Counter = collections.Counter()
        self.severities: collections.Counter = collections.Counter()

    def add(
        self,
        kind: str,
        severity: str,
        message: str,
        *,
        split: str | None = None,
        episode: int | None = None,
        key: str | None = None,
    ) -> None:
        self.counts[kind] += 1
        self.severities[severity] += 1
        if self.counts[kind] <= MAX_PER_KIND:
            self.listed.append(
                {
                    "kind": kind,
                    "severity": severity,
                    "split": split,
                    "episode": None if episode is None else int(episode),
                    "key": key,
                    "message": message,
                }
            )

    @property
    def has_errors(self) -> bool:
        return self.severities[ERROR] > 0


def _where(dataset: str, split: str, episode: int, file_path: str = "") -> str:
    """How a message names one episode, so it can be found again."""
    origin = f", source file {file_path!r}" if file_path else ""
    return f"dataset {dataset!r}, split {split!r}, episode {episode} (tfds split '{split}[{episode}:{episode + 1}]'{origin})"


def _first_line(error: BaseException) -> str:
    """The gist of an exception: its first line, without TensorFlow's op/function decorations."""
    text = (getattr(error, "message", None) or str(error)).strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text.splitlines()[0] if text else "", flags=re.S)
    return text.strip() or type(error).__name__


# ----------------------------------------------------------------------------- locating the builder


def builder_dir(spec: DatasetSpec, data_dir: str | pathlib.Path) -> pathlib.Path:
    """The spec's builder directory under ``data_dir``; a DataError says what is missing."""
    path, problem = locate_builder_dir(spec, data_dir)
    if problem is not None:
        raise DataError(problem[1])
    return path


# ----------------------------------------------------------------------------- reading episodes


def _raw_episodes(builder, split: str) -> tf.data.Dataset:
    """Episodes of ``split`` in canonical order (one file at a time), images left encoded."""
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(interleave_cycle_length=1, shuffle_seed=None, try_autocache=False)
    decoders = {"steps": skip_image_decoding(builder.info.features["steps"])}
    return builder.as_dataset(split=split, decoders=decoders, shuffle_files=False, read_config=read_config)


def _length(steps: dict) -> tf.Tensor:
    return tf.shape(tf.nest.flatten(steps)[0])[0]


def _trajectory(episode: dict, spec: DatasetSpec) -> dict:
    """One episode as a trajectory, like ``trajectory.from_rlds`` but also for 0-step episodes."""
    steps = dict(stack_steps(episode["steps"]))
    length = _length(steps)
    if "episode_metadata" in episode:
        steps["episode_metadata"] = tf.nest.map_structure(
            lambda x: tf.repeat(x[None], length, axis=0), episode["episode_metadata"]
        )
    raw_length = length
    raw = {"_raw_length": raw_length, "_raw_nonfinite": _nonfinite_steps(steps)}
    raw.update({f"_raw_{key}": steps[key] for key in FLAG_KEYS if key in steps})  # flags as recorded
    if spec.standardize_fn is not None:
        steps = dict(spec.standardize_fn(steps))
    steps.update(raw)
    return steps


def _nonfinite_steps(steps: dict) -> dict[str, tf.Tensor]:
    """Each raw float feature under ``action`` and ``observation`` (by path): bool ``[T]``, a NaN/inf at that step.

    Checked before the spec's standardize_fn, which may recompute a key and so hide a broken raw value.
    """
    found = {}

    def visit(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{path}/{key}")
        elif node.dtype.is_floating:
            flat = tf.reshape(node, [tf.shape(node)[0], -1])
            found[path] = tf.reduce_any(~tf.math.is_finite(flat), axis=1)

    for key in ("action", "observation"):
        if key in steps:
            visit(steps[key], key)
    return found


def _decodes(encoded: tf.Tensor, decode) -> tf.Tensor:
    """Bool ``[T]``: whether ``decode`` succeeds on each element, without aborting on failures.

    Failures are dropped by ``ignore_errors`` on an inner dataset of ``(index,
    decoded shape)``; the surviving indices are scattered back into a mask. The
    shape is kept as an output so the decode cannot be optimized away.
    """
    n = tf.shape(encoded, out_type=tf.int64)[0]
    nothing = (tf.zeros([0], tf.int64), tf.zeros([0, 3], tf.int32))
    ok, _ = (
        tf.data.Dataset.from_tensor_slices((tf.range(n), encoded))
        .map(lambda i, b: (i, tf.reshape(tf.shape(decode(b))[:3], [3])))
        .ignore_errors()
        .batch(tf.maximum(n, 1))  # not 2**31 - 1: map+batch fusion would allocate that many rows
        .concatenate(tf.data.Dataset.from_tensors(nothing))
        .take(1)
        .get_single_element()
    )
    return tf.scatter_nd(ok[:, None], tf.ones_like(ok, tf.int32), [n]) > 0


def _decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _decode_depth(encoded: tf.Tensor) -> tf.Tensor:
    is_png = tf.equal(tf.strings.substr(encoded, 0, 4), PNG_MAGIC)
    return tf.cond(
        is_png,
        lambda: tf.cast(tf.io.decode_png(encoded, channels=1, dtype=tf.uint16), tf.float32),
        lambda: tf.reshape(tf.io.parse_tensor(encoded, tf.float32), [-1, 1, 1]),
    )


# ----------------------------------------------------------------------------- stage 1: features vs spec


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the scan reads: only the spec's keys that passed the feature checks."""

    cameras: dict[str, str]  # observation key -> role, encoded images to decode
    depth: dict[str, str]  # observation key -> role, encoded depth to decode
    state_keys: tuple[str, ...]
    action_key: str | None
    language_key: str | None
    flags: tuple[str, ...]
    file_path: bool


def _feature_at(features, path: str):
    """The tfds feature at ``path`` in a FeaturesDict, or None."""
    node = features
    for part in path.split("/"):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return None
    return node


def _is_image_feature(feature) -> bool:
    import tensorflow_datasets as tfds

    return isinstance(feature, tfds.features.Image)


def _is_rlds_steps(feature) -> bool:
    import tensorflow_datasets as tfds

    return isinstance(feature, tfds.features.Dataset) and isinstance(feature.feature, tfds.features.FeaturesDict)


def _is_numeric(spec: tf.TensorSpec) -> bool:
    return spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool


def _find(tree: dict, path: str, spec: DatasetSpec, problems: Problems, *, want_dict: bool = False):
    """The node at ``path`` of the trajectory structure, or None after reporting why not."""
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            found = sorted(node) if isinstance(node, dict) else f"a tensor, not a dict, at {part!r}"
            after = " after the spec's standardize_fn" if spec.standardize_fn else ""
            problems.add(
                "missing_key",
                ERROR,
                f"dataset {spec.name!r}: key {path!r} not found{after} (at {part!r} found {found}); "
                "fix the key in the spec or convert the data with it",
                key=path,
            )
            return None
        node = node[part]
    if isinstance(node, dict) != want_dict:
        problems.add(
            "wrong_type",
            ERROR,
            f"dataset {spec.name!r}: key {path!r} is {'not ' if want_dict else ''}a dict of features"
            f"{'' if want_dict else ', expected one tensor'}",
            key=path,
        )
        return None
    return node


def _check_features(element_spec: dict, features, spec: DatasetSpec, problems: Problems) -> _Plan:
    """Checks the spec's keys against the trajectory structure; returns what can be scanned."""
    name = spec.name
    obs_keys = [*spec.cameras.values(), *spec.depth_cameras.values(), *spec.state_keys]
    obs = _find(element_spec, "observation", spec, problems, want_dict=True) if obs_keys else None
    obs_spec = {"observation": obs or {}}

    def find_obs(key: str):
        return _find(obs_spec, f"observation/{key}", spec, problems) if obs is not None else None

    cameras, depth, state_keys = {}, {}, []
    for role, key in spec.cameras.items():
        found = find_obs(key)
        if found is None:
            continue
        if found.dtype != tf.string:
            problems.add(
                "wrong_type",
                ERROR,
                f"dataset {name!r}: {role} camera key 'observation/{key}' holds {found.dtype.name} arrays, not "
                "encoded images; convert it as a tfds.features.Image",
                key=f"observation/{key}",
            )
            continue
        raw_feature = _feature_at(features, f"observation/{key}") if spec.standardize_fn is None else None
        if raw_feature is not None and not _is_image_feature(raw_feature):
            problems.add(
                "wrong_type",
                WARNING,
                f"dataset {name!r}: {role} camera key 'observation/{key}' is a {type(raw_feature).__name__} "
                "feature, not a tfds.features.Image; its bytes are decoded as images anyway (each frame is "
                "checked below), but converting it as an Image is safer",
                key=f"observation/{key}",
            )
        cameras[key] = role
    for role, key in spec.depth_cameras.items():
        found = find_obs(key)
        if found is not None and found.dtype == tf.string:
            depth[key] = role
    for key in spec.state_keys:
        found = find_obs(key)
        if found is None:
            continue
        if not _is_numeric(found):
            problems.add(
                "wrong_type",
                ERROR,
                f"dataset {name!r}: state key 'observation/{key}' has dtype {found.dtype.name}, expected numbers",
                key=f"observation/{key}",
            )
            continue
        state_keys.append(key)
    action_key = None
    action = _find(element_spec, spec.action_key, spec, problems)
    if action is not None:
        per_step = action.shape[1:]
        if not _is_numeric(action):
            problems.add(
                "wrong_type",
                ERROR,
                f"dataset {name!r}: action key {spec.action_key!r} has dtype {action.dtype.name}, expected numbers",
                key=spec.action_key,
            )
        elif per_step.rank != 1 or (per_step[0] is not None and per_step[0] != spec.action_dim):
            problems.add(
                "wrong_shape",
                ERROR,
                f"dataset {name!r}: action key {spec.action_key!r} has per-step shape {per_step.as_list()}, "
                f"but the spec names {spec.action_dim} action dims ({', '.join(spec.action_dims)}); "
                "fix action_dims in the spec or the converter",
                key=spec.action_key,
            )
        else:
            action_key = spec.action_key
    language_key = None
    if spec.language_key:
        language = _find(element_spec, spec.language_key, spec, problems)
        if language is not None and language.dtype != tf.string:
            problems.add(
                "wrong_type",
                ERROR,
                f"dataset {name!r}: language key {spec.language_key!r} has dtype {language.dtype.name}, expected text",
                key=spec.language_key,
            )
        elif language is not None:
            language_key = spec.language_key
    flags = tuple(k for k in FLAG_KEYS if k in element_spec and element_spec[k].dtype == tf.bool)
    metadata = element_spec.get("episode_metadata")
    file_path = isinstance(metadata, dict) and getattr(metadata.get("file_path"), "dtype", None) == tf.string
    return _Plan(cameras, depth, tuple(state_keys), action_key, language_key, flags, file_path)


def _check_splits(builder, spec: DatasetSpec, problems: Problems) -> None:
    have = sorted(builder.info.splits)
    for field, split in (("train_split", spec.train_split), ("val_split", spec.val_split)):
        if split is not None and split.split("[")[0] not in have:
            problems.add(
                "missing_split",
                ERROR,
                f"dataset {spec.name!r}: the spec's {field} {split!r} is not a split of the dataset (it has {have})",
                split=split,
            )


# ----------------------------------------------------------------------------- stage 2: the scan


def _summarize(traj: dict, plan: _Plan, spec: DatasetSpec) -> dict:
    """The little the scan needs from one trajectory (images reduced to decode flags)."""
    out = {"length": traj["_raw_length"]}
    obs = traj.get("observation", {})
    for key in plan.cameras:
        out[f"image/{key}"] = _decodes(tf.reshape(lookup(obs, key, spec), [-1]), _decode_rgb)
    for key in plan.depth:
        out[f"depth/{key}"] = _decodes(tf.reshape(lookup(obs, key, spec), [-1]), _decode_depth)
    if plan.action_key:
        action = lookup(traj, plan.action_key, spec)
        out["action"] = tf.cast(action, tf.float32)
    for key in plan.state_keys:
        state = tf.cast(lookup(obs, key, spec), tf.float32)
        out[f"state/{key}"] = tf.reshape(state, [tf.shape(state)[0], -1])
    if plan.language_key:
        out["language"] = tf.reshape(lookup(traj, plan.language_key, spec), [-1])
    for key in plan.flags:  # as recorded: a standardize_fn that drops the first or last step keeps them right
        out[f"flag/{key}"] = traj[f"_raw_{key}"]
    out["raw_nonfinite"] = traj["_raw_nonfinite"]
    if plan.file_path:
        out["file_path"] = tf.reshape(traj["episode_metadata"]["file_path"], [-1])[:1]
    return out


@dataclasses.dataclass
class _Ranges:
    """Running min/max of the finite values of each numeric key, per dim, over the whole scan."""

    low: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    high: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    steps: int = 0

    def update(self, key: str, values: np.ndarray) -> None:
        if not len(values):
            return
        finite = np.where(np.isfinite(values), values, np.nan)
        low, high = np.fmin.reduce(finite, axis=0), np.fmax.reduce(finite, axis=0)
        if key in self.low and self.low[key].shape == low.shape:
            low, high = np.fmin(self.low[key], low), np.fmax(self.high[key], high)
        self.low[key], self.high[key] = low, high


def _first_bad_step(bad: np.ndarray) -> tuple[int, int, list[int]]:
    """First bad step, number of bad steps and bad dims of a ``[T, D]`` mask."""
    rows = bad.any(axis=1)
    return int(np.argmax(rows)), int(rows.sum()), [int(d) for d in np.flatnonzero(bad.any(axis=0))]


def _dim_names(key: str, spec: DatasetSpec, dims: list[int]) -> str:
    if key == "action" and all(d < spec.action_dim for d in dims):
        return ", ".join(f"{d} ({spec.action_dims[d]})" for d in dims)
    return ", ".join(map(str, dims))


def _check_numbers(key: str, display: str, values: np.ndarray, where: str, ctx: dict) -> None:
    """NaN/inf in one key of one episode."""
    bad = ~np.isfinite(values)
    if bad.any():
        step, count, dims = _first_bad_step(bad)
        ctx["problems"].add(
            "non_finite",
            ERROR,
            f"{where}: {display} has NaN/inf from step {step} ({count} of {len(values)} steps, dims "
            f"[{_dim_names(key, ctx['spec'], dims)}]); fix the converter or drop the episode",
            split=ctx["split"],
            episode=ctx["episode"],
            key=display,
        )


def _check_action_range(action: np.ndarray, where: str, ctx: dict) -> None:
    spec, problems = ctx["spec"], ctx["problems"]
    huge = np.abs(np.where(np.isfinite(action), action, 0.0)) > MAX_ACTION_MAGNITUDE
    if huge.any():
        step, count, dims = _first_bad_step(huge)
        problems.add(
            "out_of_range",
            ERROR,
            f"{where}: action has |value| > {MAX_ACTION_MAGNITUDE:g} from step {step} ({count} of {len(action)} steps, dims "
            f"[{_dim_names('action', spec, dims)}], e.g. {action[step][huge[step]][0]:g}); "
            "likely a unit or conversion bug",
            split=ctx["split"],
            episode=ctx["episode"],
            key=spec.action_key,
        )
    bounds = GRIPPER_CONVENTIONS[spec.gripper_convention]
    if bounds is None or not spec.gripper_dims:
        return
    low, high = bounds
    grip = action[:, list(spec.gripper_dims)]
    outside = np.isfinite(grip) & ((grip < low - GRIPPER_TOLERANCE) | (grip > high + GRIPPER_TOLERANCE))
    if outside.any():
        step, count, _ = _first_bad_step(outside)
        dims = [spec.gripper_dims[d] for d in np.flatnonzero(outside.any(axis=0))]
        problems.add(
            "out_of_range",
            ERROR,
            f"{where}: gripper dims [{_dim_names('action', spec, dims)}] leave [{low:g}, {high:g}] of "
            f"gripper_convention {spec.gripper_convention!r} from step {step} ({count} of {len(action)} steps, "
            f"e.g. {grip[step][outside[step]][0]:g}); fix the convention in the spec or rescale in standardize_fn",
            split=ctx["split"],
            episode=ctx["episode"],
            key=spec.action_key,
        )


def _check_flags(summary: dict, length: int, where: str, ctx: dict) -> None:
    for key in FLAG_KEYS:
        if f"flag/{key}" not in summary:
            continue
        flags = np.asarray(summary[f"flag/{key}"], bool).reshape(-1)
        expected = np.zeros(length, bool)
        expected[0 if key == "is_first" else -1] = True
        if flags.shape != expected.shape or (flags != expected).any():
            at = [int(i) for i in np.flatnonzero(flags)][:10]
            ctx["problems"].add(
                "bad_flags",
                WARNING,
                f"{where}: {key} is True at steps {at} of {length}, expected only at step "
                f"{0 if key == 'is_first' else length - 1}; episodes may be merged or cut",
                split=ctx["split"],
                episode=ctx["episode"],
                key=key,
            )


def _check_episode(summary: dict, plan: _Plan, ranges: _Ranges, ctx: dict) -> int:
    """Checks one episode's summary; returns its number of steps."""
    spec, problems, split, episode = ctx["spec"], ctx["problems"], ctx["split"], ctx["episode"]
    length = int(summary["length"])
    file_path = summary["file_path"][0].decode("utf-8", "replace") if len(summary.get("file_path", ())) else ""
    where = _where(spec.name, split, episode, file_path)
    if length == 0:
        problems.add(
            "empty_episode",
            ERROR,
            f"{where} has 0 steps; drop it in the converter (the loader skips it, but it is a conversion bug)",
            split=split,
            episode=episode,
        )
        return 0
    for kind, cameras, fix in (("image", plan.cameras, "; re-encode or drop the episode"), ("depth", plan.depth, "")):
        for key, role in cameras.items():
            ok = summary[f"{kind}/{key}"]
            if not ok.all():
                bad = np.flatnonzero(~ok)
                label = "camera" if kind == "image" else "depth"
                problems.add(
                    "bad_image",
                    ERROR,
                    f"{where}: {role} {label} image 'observation/{key}' does not decode at step {int(bad[0])} "
                    f"({len(bad)} of {len(ok)} steps){fix}",
                    split=split,
                    episode=episode,
                    key=f"observation/{key}",
                )
    if plan.action_key:
        action = summary["action"]
        if action.ndim != 2 or action.shape[1] != spec.action_dim:
            problems.add(
                "wrong_shape",
                ERROR,
                f"{where}: action key {spec.action_key!r} has per-step shape {list(action.shape[1:])}, "
                f"expected [{spec.action_dim}] ({', '.join(spec.action_dims)})",
                split=split,
                episode=episode,
                key=spec.action_key,
            )
        else:
            _check_numbers("action", spec.action_key, action, where, ctx)
            _check_action_range(action, where, ctx)
            ranges.update("action", action)
    for key in plan.state_keys:
        state = summary[f"state/{key}"]
        _check_numbers(key, f"observation/{key}", state, where, ctx)
        ranges.update(f"observation/{key}", state)
    if plan.language_key:
        empty = np.array([len(s.strip()) == 0 for s in summary["language"]], bool)
        if empty.any():
            which = "every step" if empty.all() else f"{int(empty.sum())} of {len(empty)} steps"
            problems.add(
                "missing_language",
                WARNING,
                f"{where}: instruction {plan.language_key!r} is empty at {which}; the policy gets no instruction there",
                split=split,
                episode=episode,
                key=plan.language_key,
            )
    _check_flags(summary, length, where, ctx)
    _check_raw_numbers(summary, plan, where, ctx)
    return length


def _check_raw_numbers(summary: dict, plan: _Plan, where: str, ctx: dict) -> None:
    """NaN/inf in a raw float feature that the standardized data does not show (a warning: the recording is broken
    although training is not; where the standardized key has them too, :func:`_check_numbers` already erred)."""
    standardized = {f"observation/{k}": summary[f"state/{k}"] for k in plan.state_keys}
    if plan.action_key:
        standardized[plan.action_key] = summary["action"]
    for path, bad in summary["raw_nonfinite"].items():
        bad = np.asarray(bad, bool)
        if not bad.any():
            continue
        if path in standardized and not np.isfinite(standardized[path]).all():
            continue
        why = (
            "the standardized data does not carry it (the spec's standardize_fn recomputes it or drops those steps)"
            if ctx["spec"].standardize_fn is not None
            else "no model input reads it"
        )
        steps = np.flatnonzero(bad)
        ctx["problems"].add(
            "non_finite_raw",
            WARNING,
            f"{where}: raw feature {path!r} has NaN/inf at step {int(steps[0])} ({len(steps)} of {len(bad)} steps); "
            f"{why}, but the recording is broken",
            split=ctx["split"],
            episode=ctx["episode"],
            key=path,
        )


def _check_constant_dims(ranges: _Ranges, spec: DatasetSpec, total_steps: int, problems: Problems) -> None:
    if total_steps < 2:
        return
    for key, low in ranges.low.items():
        high = ranges.high[key]
        dims = [int(d) for d in np.flatnonzero(low == high)]
        if not dims:
            continue
        names = _dim_names(key, spec, dims)
        values = ", ".join(f"{low[d]:g}" for d in dims[:10])
        display = spec.action_key if key == "action" else key
        problems.add(
            "constant_dim",
            WARNING,
            f"dataset {spec.name!r}: {display} dims [{names}] are constant ({values}) over all {total_steps} "
            "scanned steps; normalization leaves them at 0 (check the converter if they should vary)",
            key=display,
        )


def _summaries(builder, split: str, plan: _Plan, spec: DatasetSpec, max_episodes: int | None):
    """An iterator of per-episode summaries of ``split`` (decoding runs in parallel, order kept)."""
    ds = _raw_episodes(builder, split)
    if max_episodes is not None:
        ds = ds.take(max_episodes)
    ds = ds.map(
        lambda episode: _summarize(_trajectory(episode, spec), plan, spec),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _next_summary(summaries, split: str, episode: int, spec: DatasetSpec, problems: Problems):
    """The next summary; None at the end or, after an ``unreadable`` problem, on a read failure."""
    try:
        return next(summaries)
    except StopIteration:
        return None
    except Exception as e:  # corrupt records, a failing standardize_fn: report, go on with the next split
        problems.add(
            "unreadable",
            ERROR,
            f"{_where(spec.name, split, episode)} cannot be read: {_first_line(e)} "
            "(the scan of this split stopped here)",
            split=split,
            episode=episode,
        )
        return None


def _scan_split(builder, split: str, plan: _Plan, spec: DatasetSpec, ranges, problems, max_episodes) -> dict:
    """Scans one split in order; a read failure ends it with an ``unreadable`` problem."""
    episodes = steps = 0
    try:
        summaries = _summaries(builder, split, plan, spec, max_episodes)
    except Exception as e:
        problems.add(
            "unreadable", ERROR, f"dataset {spec.name!r}: cannot read split {split!r}: {_first_line(e)}", split=split
        )
        return {"episodes": 0, "steps": 0}
    while (summary := _next_summary(summaries, split, episodes, spec, problems)) is not None:
        ctx = {"spec": spec, "problems": problems, "split": split, "episode": episodes}
        steps += _check_episode(summary, plan, ranges, ctx)
        episodes += 1
    return {"episodes": episodes, "steps": steps}


# ----------------------------------------------------------------------------- entry points


def _report(spec: DatasetSpec, path: pathlib.Path, splits: dict, problems: Problems) -> dict:
    return {
        "dataset": spec.name,
        "builder_dir": str(path),
        "usable": not problems.has_errors,
        "episodes": sum(s["episodes"] for s in splits.values()),
        "steps": sum(s["steps"] for s in splits.values()),
        "splits": splits,
        "errors": problems.severities[ERROR],
        "warnings": problems.severities[WARNING],
        "problem_counts": dict(sorted(problems.counts.items())),
        "problems": problems.listed,
    }


def _element_spec(builder, split: str, spec: DatasetSpec, problems: Problems) -> dict | None:
    """The trajectory structure (after standardize_fn); None, with a problem, if it cannot be built."""
    try:
        ds = _raw_episodes(builder, split).map(lambda episode: _trajectory(episode, spec))
    except Exception as e:  # standardize_fn is user code: any failure is a spec/data mismatch
        what = "the spec's standardize_fn fails" if spec.standardize_fn else "the episodes cannot be read"
        problems.add("spec_mismatch", ERROR, f"dataset {spec.name!r}: {what} on this dataset: {_first_line(e)}")
        return None
    return ds.element_spec


def check_dataset(name: str, data_dir: str, *, max_episodes: int | None = None) -> dict:
    """Checks dataset ``name`` under ``data_dir`` against its spec; returns the JSON report.

    Scans all episodes of all splits, or at most ``max_episodes`` per split.
    An unknown dataset name raises DataError; everything about the data itself
    is reported as a problem.
    """
    if max_episodes is not None and max_episodes < 1:
        raise DataError(f"dataset {name!r}: max_episodes must be >= 1, got {max_episodes}")
    spec = get_spec(name)
    problems = Problems(name)
    path, missing = locate_builder_dir(spec, data_dir)
    if missing is not None:
        kind, message = missing
        problems.add(kind, ERROR, message)
        return _report(spec, path, {}, problems)
    try:
        builder = open_builder(path, name)
        features = builder.info.features
        splits = list(builder.info.splits)
    except Exception as e:  # a corrupt dataset_info.json / features.json must not become a traceback
        message = (
            str(e) if isinstance(e, DataError) else f"dataset {name!r}: cannot open the RLDS builder at {path}: {e}"
        )
        problems.add("unreadable", ERROR, message.strip().splitlines()[0])
        return _report(spec, path, {}, problems)
    if "steps" not in features or not _is_rlds_steps(features["steps"]):
        problems.add(
            "spec_mismatch",
            ERROR,
            f"dataset {name!r}: no 'steps' Dataset feature at {path}; this is not an RLDS dataset "
            f"(top-level features {sorted(features.keys())})",
        )
        return _report(spec, path, {}, problems)
    if not splits:
        problems.add("missing_split", ERROR, f"dataset {name!r}: the builder at {path} has no splits")
        return _report(spec, path, {}, problems)
    _check_splits(builder, spec, problems)
    element_spec = _element_spec(builder, splits[0], spec, problems)
    if element_spec is None:
        return _report(spec, path, {}, problems)
    plan = _check_features(element_spec, features["steps"].feature, spec, problems)
    ranges, counts = _Ranges(), {}
    for split in sorted(splits):
        counts[split] = _scan_split(builder, split, plan, spec, ranges, problems, max_episodes)
    _check_constant_dims(ranges, spec, sum(c["steps"] for c in counts.values()), problems)
    train = spec.train_split.split("[")[0]
    if train in counts and counts[train]["episodes"] == 0:
        problems.add("no_episodes", ERROR, f"dataset {name!r}: train split {train!r} has no episodes", split=train)
    return _report(spec, path, counts, problems)


def format_report(report: dict) -> str:
    """A readable text version of a :func:`check_dataset` report: one line per problem, then a summary."""
    lines = [f"dataset {report['dataset']!r} at {report['builder_dir']}"]
    for split, count in report["splits"].items():
        lines.append(f"  split {split}: {count['episodes']} episodes, {count['steps']} steps")
    for problem in report["problems"]:
        place = []
        if problem.get("split") is not None:
            place.append(f"split={problem['split']}")
        if problem.get("episode") is not None:
            place.append(f"episode={problem['episode']}")
        if problem.get("key") is not None:
            place.append(f"key={problem['key']}")
        where = f"{' '.join(place)}: " if place else ""
        lines.append(f"{problem['severity'].upper():7} {problem['kind']:16} {where}{problem['message']}")
    listed = collections.Counter(p["kind"] for p in report["problems"])
    for kind, count in report.get("problem_counts", {}).items():
        if count > listed[kind]:
            lines.append(f"        ... and {count - listed[kind]} more {kind} problems not listed")
    verdict = "USABLE" if report["usable"] else "NOT USABLE"
    lines.append(
        f"{verdict}: {report['episodes']} episodes, {report['steps']} steps scanned; "
        f"{report.get('errors', 0)} errors, {report.get('warnings', 0)} warnings"
    )
    return "\n".join(lines)
