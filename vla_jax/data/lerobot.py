"""LeRobot datasets into RLDS: ``vla-jax data convert lerobot SRC --out DATA_DIR [--name NAME]``.

A LeRobot dataset (format v2.1 or v3.0) is ``meta/info.json`` (fps, features,
path templates), per-episode metadata (``meta/episodes.jsonl`` in v2.1, the
``meta/episodes/`` parquet files in v3.0), tasks, parquet frames (one file per
episode in v2.1; several episodes per file in v3.0, found by the episode's
``dataset_from_index``/``dataset_to_index``) and one mp4 per camera (per
episode in v2.1; several episodes per file in v3.0, found by
``from_timestamp``), in whatever codec (AV1 included), decoded with PyAV.

It becomes an RLDS builder directory ``DATA_DIR/NAME/1.0.0`` (one ``train``
split, as LeRobot has) whose step keys follow LeRobot's feature names:
``observation.images.top`` -> ``observation/images.top`` (JPEG),
``observation.state`` -> ``observation/state``, ``action`` -> ``action``, the
episode's task -> ``language_instruction``, plus ``is_first``/``is_last``/
``is_terminal`` and ``timestamp``; and a spec file ``DATA_DIR/NAME_spec.py``
with what the source says filled in (fps, dims and their names, cameras) and
what it cannot say marked ``CONFIRM`` (action space, gripper convention,
normalization mask, camera roles). Point ``$VLA_JAX_SPECS`` at it, confirm,
then ``vla-jax data check`` / ``data show`` / train.

Episodes are decoded one at a time into ``DATA_DIR/.NAME.staging/`` (numbers
and JPEG bytes, each file written atomically), so memory stays bounded and an
interrupted conversion resumes where it stopped; the RLDS files are then
written from the staged episodes and the staging directory removed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Sequence

import numpy as np

from vla_jax.errors import DataError

VERSIONS = ("v2.1", "v3.0")
SKIPPED = ("timestamp", "frame_index", "episode_index", "index", "task_index")  # bookkeeping columns
JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class Episode:
    """Where one episode lives in the source."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_file: pathlib.Path
    rows: tuple[int, int] | None  # global frame index range [from, to) inside a multi-episode file (v3.0)
    videos: dict[str, tuple[pathlib.Path, float]]  # camera key -> (mp4, start time in seconds)


@dataclasses.dataclass(frozen=True)
class Source:
    root: pathlib.Path
    version: str
    fps: float
    robot_type: str
    features: dict
    episodes: tuple[Episode, ...]

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(k for k, f in self.features.items() if f.get("dtype") in ("video", "image"))

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(
            k
            for k, f in self.features.items()
            if f.get("dtype") not in ("video", "image", "string") and k not in SKIPPED
        )


def _fail(path: pathlib.Path, message: str) -> DataError:
    return DataError(f"LeRobot dataset: {path}: {message}")


def _json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _fail(path, "missing (is this a LeRobot dataset directory?)") from None
    except ValueError as error:
        raise _fail(path, f"not valid JSON ({error})") from None


def _field(data: dict, key: str, path: pathlib.Path, kind=None):
    if key not in data:
        raise _fail(path, f"has no field {key!r}")
    value = data[key]
    if kind is not None and not isinstance(value, kind):
        raise _fail(path, f"field {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _parquet(path: pathlib.Path, columns: Sequence[str] | None = None):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise _fail(path, "missing (a parquet file the metadata names)")
    try:
        table = pq.read_table(path, columns=list(columns) if columns else None)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file or column
        raise _fail(path, f"unreadable parquet ({str(error).splitlines()[0]})") from None
    return table


def open_source(root: str | pathlib.Path) -> Source:
    """Reads a LeRobot dataset's metadata (nothing heavy); DataError naming the file and field on a bad one."""
    root = pathlib.Path(root).absolute()
    info_path = root / "meta" / "info.json"
    info = _json(info_path)
    version = _field(info, "codebase_version", info_path, str)
    if version not in VERSIONS:
        raise _fail(info_path, f"codebase_version {version!r}; this converter reads {VERSIONS}")
    fps = float(_field(info, "fps", info_path, (int, float)))
    features = _field(info, "features", info_path, dict)
    for key in ("action",):
        if key not in features:
            raise _fail(info_path, f"features has no {key!r}")
    data_template = _field(info, "data_path", info_path, str)
    video_template = info.get("video_path") or ""
    cameras = [k for k, f in features.items() if f.get("dtype") == "video"]
    if cameras and not video_template:
        raise _fail(info_path, "has video features but no field 'video_path'")
    chunks_size = int(info.get("chunks_size", 1000))
    if version == "v2.1":
        episodes = _episodes_v21(root, data_template, video_template, cameras, chunks_size)
    else:
        episodes = _episodes_v30(root, data_template, video_template, cameras)
    if not episodes:
        raise _fail(root / "meta", "lists no episodes")
    return Source(root, version, fps, str(info.get("robot_type") or ""), features, tuple(episodes))


def _episodes_v21(root, data_template: str, video_template: str, cameras, chunks_size: int) -> list[Episode]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise _fail(path, "missing (v2.1 lists its episodes there)")
    episodes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise _fail(path, f"line {number} is not valid JSON") from None
        where = pathlib.Path(f"{path}:{number}")
        index = int(_field(row, "episode_index", where))
        length = int(_field(row, "length", where))
        tasks = tuple(str(t) for t in (row.get("tasks") or ()))
        chunk = index // chunks_size
        names = dict(episode_chunk=chunk, episode_index=index)
        data_file = root / data_template.format(**names)
        videos = {key: (root / video_template.format(video_key=key, **names), 0.0) for key in cameras}
        episodes.append(Episode(index, length, tasks, data_file, None, videos))
    return episodes


def _episodes_v30(root, data_template: str, video_template: str, cameras) -> list[Episode]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise _fail(root / "meta" / "episodes", "has no chunk-*/file-*.parquet (v3.0 lists its episodes there)")
    tasks_path = root / "meta" / "tasks.parquet"
    episodes = []
    for file in files:
        table = _parquet(file).to_pylist()
        for row in table:
            where = pathlib.Path(f"{file} (episode row {row.get('episode_index')})")
            index = int(_field(row, "episode_index", where))
            chunk, number = int(_field(row, "data/chunk_index", where)), int(_field(row, "data/file_index", where))
            data_file = root / data_template.format(chunk_index=chunk, file_index=number)
            rows = (int(_field(row, "dataset_from_index", where)), int(_field(row, "dataset_to_index", where)))
            videos = {}
            for key in cameras:
                v_chunk = int(_field(row, f"videos/{key}/chunk_index", where))
                v_file = int(_field(row, f"videos/{key}/file_index", where))
                start = float(_field(row, f"videos/{key}/from_timestamp", where))
                path = root / video_template.format(video_key=key, chunk_index=v_chunk, file_index=v_file)
                videos[key] = (path, start)
            tasks = tuple(str(t) for t in (row.get("tasks") or ()))
            episodes.append(Episode(index, int(_field(row, "length", where)), tasks, data_file, rows, videos))
    if not tasks_path.is_file() and any(not e.tasks for e in episodes):
        raise _fail(tasks_path, "missing, and the episodes name no tasks")
    return sorted(episodes, key=lambda e: e.index)


# -- one episode --------------------------------------------------------------------------------------------------


def decode_video(path: pathlib.Path, start: float, count: int, fps: float) -> np.ndarray:
    """``count`` frames ``uint8 [count, H, W, 3]`` of ``path`` from time ``start`` (seconds) on, one per ``1/fps``."""
    import av

    if not path.is_file():
        raise _fail(path, "missing (a video file the metadata names)")
    frames = []
    tolerance = 0.5 / fps
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if start > 0:
                container.seek(int(max(start - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                time_s = float(frame.pts * stream.time_base) if frame.pts is not None else None
                if time_s is None or time_s < start - tolerance:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == count:
                    break
    except av.error.FFmpegError as error:
        raise _fail(path, f"does not decode ({error}); re-encode or drop the episode") from None
    if len(frames) != count:
        raise _fail(path, f"has {len(frames)} frames from {start:.3f} s on; the episode needs {count}")
    return np.stack(frames)


def _jpeg(frames: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        out.append(buffer.getvalue())
    return out


def _column(table, key: str, length: int, file: pathlib.Path) -> np.ndarray:
    if key not in table.column_names:
        raise _fail(file, f"has no column {key!r} (a feature of meta/info.json)")
    values = table.column(key).to_pylist()
    array = np.asarray(values, np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if len(array) != length:
        raise _fail(file, f"column {key!r} has {len(array)} rows for an episode of {length}")
    return array


def read_episode(source: Source, episode: Episode, task_names: dict[int, str]) -> dict:
    """One episode as RLDS step arrays (images JPEG-encoded), checked against its metadata."""
    import pyarrow.compute as pc

    table = _parquet(episode.data_file)
    if episode.rows is not None:
        if "index" not in table.column_names:
            raise _fail(episode.data_file, "has no column 'index' to find the episode's rows by")
        lo, hi = episode.rows
        index = table.column("index")
        table = table.filter(pc.and_(pc.greater_equal(index, lo), pc.less(index, hi)))
    length = table.num_rows
    if length != episode.length:
        raise _fail(
            episode.data_file, f"holds {length} frames of episode {episode.index}; its metadata says {episode.length}"
        )
    observation, steps = {}, {}
    for key in source.numeric:
        values = _column(table, key, length, episode.data_file)
        if key.startswith("observation."):
            observation[key.removeprefix("observation.")] = values
        else:
            steps[key] = values
    images, image_shapes = {}, {}
    for key in source.cameras:
        if source.features[key]["dtype"] == "video":
            path, start = episode.videos[key]
            frames = decode_video(path, start, length, source.fps)
        else:  # an image feature: PNG/JPEG bytes in the parquet ({"bytes": ..., "path": ...})
            frames = np.stack([_decode_image(cell, episode.data_file, key) for cell in table.column(key).to_pylist()])
        images[key.removeprefix("observation.")] = _jpeg(frames)
        image_shapes[key.removeprefix("observation.")] = frames.shape[1:]
    task = _task(table, episode, task_names)
    return {
        "observation": observation,
        "images": images,
        "image_shapes": image_shapes,
        "action": steps.pop("action"),
        "extra": steps,
        "task": task,
        "timestamp": _column(table, "timestamp", length, episode.data_file)[:, 0]
        if "timestamp" in table.column_names
        else np.arange(length, dtype=np.float32) / source.fps,
    }


def _decode_image(cell, file: pathlib.Path, key: str) -> np.ndarray:
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise _fail(file, f"column {key!r} holds an image without bytes")
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as error:  # noqa: BLE001 - PIL raises several types
        raise _fail(file, f"column {key!r} holds an image that does not decode ({error})") from None


def _task(table, episode: Episode, task_names: dict[int, str]) -> str:
    if "task_index" in table.column_names and task_names:
        indices = set(table.column("task_index").to_pylist())
        if len(indices) == 1:
            (index,) = indices
            if index in task_names:
                return task_names[index]
    return episode.tasks[0] if episode.tasks else ""


def task_names(source: Source) -> dict[int, str]:
    """Task index -> instruction (``meta/tasks.jsonl`` in v2.1, ``meta/tasks.parquet`` in v3.0)."""
    if source.version == "v2.1":
        path = source.root / "meta" / "tasks.jsonl"
        if not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {int(r["task_index"]): str(r["task"]) for r in rows}
    path = source.root / "meta" / "tasks.parquet"
    if not path.is_file():
        return {}
    table = _parquet(path)
    columns = table.column_names
    if "task_index" not in columns:
        raise _fail(path, "has no column 'task_index'")
    # lerobot writes a pandas frame indexed by the task text: the index is a column of its own in the file
    text = [c for c in columns if c != "task_index" and str(table.schema.field(c).type) in ("string", "large_string")]
    if not text:
        raise _fail(path, "has no column of task texts")
    name = "task" if "task" in text else text[0]
    pairs = zip(table.column("task_index").to_pylist(), table.column(name).to_pylist(), strict=True)
    return {int(i): str(t) for i, t in pairs}


# -- staging and writing ------------------------------------------------------------------------------------------


def _stage(path: pathlib.Path, episode: dict) -> None:
    """One decoded episode as an ``.npz`` (JPEG bytes as one blob per camera plus offsets), written atomically."""
    arrays = {"action": episode["action"], "timestamp": episode["timestamp"], "task": np.array(episode["task"])}
    for key, value in episode["observation"].items():
        arrays[f"observation/{key}"] = value
    for key, value in episode["extra"].items():
        arrays[f"extra/{key}"] = value
    for key, jpegs in episode["images"].items():
        arrays[f"image/{key}"] = np.frombuffer(b"".join(jpegs), np.uint8)
        arrays[f"image_offsets/{key}"] = np.cumsum([0, *map(len, jpegs)])
        arrays[f"image_shape/{key}"] = np.asarray(episode["image_shapes"][key])
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _staged_steps(path: pathlib.Path) -> tuple[dict, dict[str, tuple]]:
    """A staged episode as ``write_rlds`` steps (images as JPEG bytes), and the image shapes."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    length = len(arrays["action"])
    observation, shapes, steps = {}, {}, {}
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind == "observation":
            observation[name] = value
        elif kind == "extra":
            steps[name] = value[:, 0] if value.shape[1:] == (1,) else value
        elif kind == "image":
            blob, offsets = value.tobytes(), arrays[f"image_offsets/{name}"]
            observation[name] = [blob[offsets[i] : offsets[i + 1]] for i in range(length)]
            shapes[f"observation/{name}"] = tuple(int(s) for s in arrays[f"image_shape/{name}"])
    steps.update(
        observation=observation,
        action=arrays["action"],
        timestamp=arrays["timestamp"].astype(np.float32),
        language_instruction=np.full(length, str(arrays["task"])),
        is_first=np.arange(length) == 0,
        is_last=np.arange(length) == length - 1,
        is_terminal=np.arange(length) == length - 1,
    )
    return steps, shapes


class _StagedEpisodes(Sequence):
    """The staged episodes as a lazy sequence: each is read from disk only when the RLDS writer asks for it."""

    def __init__(self, files: list[pathlib.Path], source: str):
        self.files, self.source = files, source

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        steps, _ = _staged_steps(self.files[i])
        return {"steps": steps, "episode_metadata": {"file_path": f"{self.source}#episode={self.files[i].stem}"}}


def _name(root: pathlib.Path) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", root.name.lower()).strip("_")
    return name if name and name[0].isalpha() else f"lerobot_{name}"


def convert(
    src: str | pathlib.Path, out: str | pathlib.Path, *, name: str = "", log: Callable[[str], None] = lambda _: None
) -> dict:
    """Converts the LeRobot dataset ``src`` into ``out/NAME/1.0.0`` and ``out/NAME_spec.py``; returns a summary."""
    from vla_jax.data.rlds_writer import write_rlds

    start = time.perf_counter()
    source = open_source(src)
    name = name or _name(source.root)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise DataError(f"--name {name!r}: expected lowercase letters, digits and underscores (a tfds builder name)")
    out = pathlib.Path(out).absolute()
    builder_dir = out / name / "1.0.0"
    if builder_dir.exists():
        raise DataError(f"{builder_dir} already exists; remove it or give another --name")
    staging = out / f".{name}.staging"
    staging.mkdir(parents=True, exist_ok=True)
    tasks = task_names(source)
    files, resumed = [], 0
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for number, episode in enumerate(source.episodes):
        path = staging / f"episode_{episode.index:06d}.npz"
        if path.is_file():
            resumed += 1
        else:
            _stage(path, read_episode(source, episode, tasks))
            log(f"episode {number + 1}/{len(source.episodes)} ({episode.length} frames)")
        files.append(path)
        with np.load(path) as data:
            for key in ("action", *(k for k in data.files if k.startswith("observation/"))):
                low, high = data[key].min(axis=0), data[key].max(axis=0)
                if key in ranges:
                    low, high = np.minimum(low, ranges[key][0]), np.maximum(high, ranges[key][1])
                ranges[key] = (low, high)
    _, shapes = _staged_steps(files[0])
    write_rlds(
        out, name, {"train": _StagedEpisodes(files, str(source.root))}, image_shapes=shapes,
        description=f"Converted by vla-jax from the LeRobot {source.version} dataset {source.root}",
    )  # fmt: skip
    spec_file = out / f"{name}_spec.py"
    if spec_file.exists():  # confirmed by hand, maybe: keep it, write the new guess beside it
        spec_file = out / f"{name}_spec.generated.py"
    spec_file.write_text(spec_text(source, name, ranges))
    shutil.rmtree(staging)
    return {
        "name": name,
        "builder_dir": str(builder_dir),
        "spec_file": str(spec_file),
        "version": source.version,
        "episodes": len(files),
        "steps": int(sum(e.length for e in source.episodes)),
        "resumed_episodes": resumed,
        "cameras": list(source.cameras),
        "wall_s": round(time.perf_counter() - start, 1),
    }


# -- the generated spec -------------------------------------------------------------------------------------------

ROLE_HINTS = (("wrist", "wrist"), ("hand", "wrist"), ("gripper", "wrist"))


def _dim_names(feature: dict, width: int, prefix: str) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # {"motors": [...]} and the like
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{prefix}{i}" for i in range(width)]


def _roles(cameras: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Camera key (in the observation) per role, guessed from the names; and the cameras left without a role."""
    roles, left = {}, []
    for key in cameras:
        short = key.removeprefix("observation.")
        role = next((r for hint, r in ROLE_HINTS if hint in short.lower()), None)
        if role is None or role in roles:
            role = next((r for r in ("primary", "secondary") if r not in roles), None)
        if role is None:
            left.append(short)
        else:
            roles[role] = short
    return roles, left


def spec_text(source: Source, name: str, ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """A DatasetSpec file for the converted dataset: inferred fields filled in, guesses marked CONFIRM."""
    action_width = len(ranges["action"][0])
    dims = _dim_names(source.features["action"], action_width, "a")
    low, high = ranges["action"]
    lines_notes = []
    dims = [d.replace("Gripper", "gripper").replace("GRIPPER", "gripper") for d in dims]  # the spec looks for it
    grippers = [i for i, d in enumerate(dims) if "gripper" in d]
    convention = "none"
    for i in grippers:
        if low[i] >= 0 and high[i] <= 1:
            convention = "open=1,closed=0"
        elif low[i] >= -1 and high[i] <= 1:
            convention = "open=1,closed=-1"
        else:  # recorded in some other unit: not a gripper dim for the pipeline until rescaled
            lines_notes.append(f"{dims[i]!r} spans [{low[i]:g}, {high[i]:g}]: rescale it to a gripper convention")
            dims[i] = dims[i].lower().replace("gripper", "grip")
    normalize = [("gripper" not in d) for d in dims]
    roles, left = _roles(source.cameras)
    if left:
        lines_notes.append(f"cameras without a role (not used): {left}")
    state_keys = [k.removeprefix("observation.") for k in source.numeric if k.startswith("observation.")]
    joints = any("joint" in d.lower() or "motor" in d.lower() for d in dims) or bool(source.robot_type)
    space = "joint_position" if joints else "eef_delta"
    notes = "; ".join([f"converted from LeRobot {source.version} ({source.root})", *lines_notes])
    val_fraction = round(max(0.05, min(0.5, 1.5 / len(source.episodes))), 3)
    return f'''"""Dataset spec of {name!r}, written by `vla-jax data convert lerobot` from {source.root}.

Put this file on $VLA_JAX_SPECS (e.g. `export VLA_JAX_SPECS={name}_spec.py`). The fields marked CONFIRM
are guesses from names and recorded ranges: check each against the robot before training on the data.
"""

from vla_jax.data.specs import DatasetSpec, register

register(
    DatasetSpec(
        name={name!r},
        action_space={space!r},  # CONFIRM: one of vla_jax.data.specs.ACTION_SPACES (robot_type {source.robot_type!r})
        action_dims={tuple(dims)!r},  # CONFIRM the meaning of each (from meta/info.json)
        normalize_action={tuple(normalize)!r},  # CONFIRM: False for gripper dims
        control_frequency_hz={source.fps!r},  # LeRobot's fps
        gripper_convention={convention!r},  # CONFIRM (recorded action range per dim: {[(round(float(a), 3), round(float(b), 3)) for a, b in zip(low, high)]})
        cameras={roles!r},  # CONFIRM the roles
        state_keys={tuple(state_keys)!r},
        state_encoding={"joint" if joints and state_keys else ("other" if state_keys else "none")!r},  # CONFIRM
        language_key="language_instruction",
        val_split=None,  # LeRobot has one split: the last val_fraction of the episodes is held out
        val_fraction={val_fraction!r},  # about 5% (at least one episode of {len(source.episodes)})
        notes={notes!r},
    )
)
'''
