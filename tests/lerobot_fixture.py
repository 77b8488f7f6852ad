"""Write small LeRobot datasets to disk the way the `lerobot` library writes them (v2.1 and v3.0).

Independent of vla_jax: numpy, pyarrow and PyAV only. The layouts follow lerobot's own writers:
v2.1 is `LeRobotDataset.save_episode` of lerobot 0.3.x (one parquet and one mp4 per episode, jsonl metadata);
v3.0 is the writer of lerobot 0.4.x/0.5.x (episodes appended to `file-000` parquet/mp4, parquet metadata).

Videos are encoded like lerobot's `encode_video_frames` (PyAV, `g=2`, `crf=30`, yuv420p, frame i at i/fps).
v3.0 videos are concatenated like `concatenate_video_files` (ffmpeg concat demuxer, stream copy, faststart),
and each episode's `from_timestamp` is the summed duration of the episode videos before it in the file,
so frame i of an episode sits at `from_timestamp + i / fps` in the concatenated file.

`python tests/lerobot_fixture.py` writes both versions with both codecs and decodes every frame back.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200  # lerobot >= 0.4.2 (0.4.0 wrote 500)
ENCODERS = {"h264": "libx264", "av1": "libsvtav1"}
ENCODER_OPTIONS = {"g": "2", "crf": "30"}  # lerobot's defaults for every codec
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # v3.0 stats add q01 q10 q50 q90 q99
TASK_POOL = (
    "pick up the red block",
    "push the green cube to the left",
    "open the top drawer",
    "stack the blue cup on the plate",
    "put the sponge in the sink",
    "close the microwave door",
)
DEFAULT_FEATURES = {  # appended after the user features, in this order
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


# ---------------------------------------------------------------- content


def _frames(length, shape, episode, camera, fps):
    """Smooth RGB gradients that drift over time plus a soft-edged square moving across the image."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None, None] / fps
    phase = 0.7 * episode + 1.9 * camera
    r = 60 + 120 * (x / w) + 20 * np.sin(2 * np.pi * (0.3 * t + phase))
    g = 50 + 110 * (y / h) + 20 * np.cos(2 * np.pi * (0.2 * t + phase))
    b = 90 + 50 * np.sin(np.pi * (x / w + y / h) + phase)
    img = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    side = max(4, min(h, w) // 4)
    steps = np.arange(length)
    cx = (side / 2 + (2 * steps + 5 * episode + 7 * camera) % max(1, w - side)).astype(np.float32)
    cy = np.full(length, h / 2 + (episode % 3 - 1) * h / 6, dtype=np.float32)
    dist = np.maximum(np.abs(x[None] - cx[:, None, None]), np.abs(y[None] - cy[:, None, None]))
    alpha = np.clip(side / 2 + 2 - dist, 0, 4)[..., None] / 4  # 4-pixel ramp at the edge
    color = np.float32(235 if camera % 2 == 0 else 25)  # a luma edge: yuv420p halves chroma resolution
    img = img * (1 - alpha) + color * alpha
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _random_walk(rng, length, dim):
    return np.cumsum(rng.normal(0.0, 0.05, size=(length, dim)), axis=0).astype(np.float32)


def _task_slot(episode):
    """Episode 2 repeats episode 0's task; every other episode gets a new one."""
    return 0 if episode == 2 else (episode if episode < 2 else episode - 1)


# ---------------------------------------------------------------- video


def _encode(path, frames, codec, fps):
    if codec == "av1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise
    with av.open(str(path), "w") as out:
        stream = out.add_stream(ENCODERS[codec], fps, options=dict(ENCODER_OPTIONS))
        stream.pix_fmt = "yuv420p"
        stream.height, stream.width = frames.shape[1:3]
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)  # what PyAV assigns anyway: frame i at i/fps
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _duration(path):
    """lerobot's get_video_duration_in_s: stream duration, else container duration."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration / av.time_base)


def _concat(paths, out_path):
    """Stream-copy concatenation through the ffmpeg concat demuxer, as lerobot's concatenate_video_files."""
    fd, listing = tempfile.mkstemp(suffix=".ffconcat")
    with os.fdopen(fd, "w") as f:
        f.write("ffconcat version 1.0\n" + "".join(f"file '{Path(p).resolve()}'\n" for p in paths))
    fd, tmp_out = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    with (
        av.open(listing, "r", format="concat", options={"safe": "0"}) as src,
        av.open(tmp_out, "w", options={"movflags": "faststart"}) as dst,
    ):
        streams = {}
        for s in src.streams:
            if s.type in ("video", "audio", "subtitle"):
                streams[s.index] = dst.add_stream_from_template(template=s, opaque=True)
                streams[s.index].time_base = s.time_base
        for packet in src.demux():
            if packet.stream.index in streams and packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    shutil.move(tmp_out, out_path)
    os.unlink(listing)


def _video_info(path):
    """The `info` block lerobot 0.3-0.5 stores per video feature (get_video_info)."""
    with av.open(str(path)) as container:
        s = container.streams.video[0]
        info = {
            "video.height": s.height,
            "video.width": s.width,
            "video.codec": s.codec.canonical_name,
            "video.pix_fmt": s.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(s.base_rate),
            "video.channels": 3,
        }
        info["has_audio"] = len(container.streams.audio) > 0
    return info


# ---------------------------------------------------------------- stats


def _sample_images(frames):
    """compute_stats.sample_images: <=100 frames all, else ~n**0.75 evenly spaced; downsample big images."""
    n = len(frames)
    k = n if n < 100 else max(100, min(int(n**0.75), 10_000))
    frames = frames[np.round(np.linspace(0, n - 1, k)).astype(int)]
    h, w = frames.shape[1:3]
    if max(h, w) >= 300:
        step = int(w / 150) if w > h else int(h / 150)
        frames = frames[:, ::step, ::step]
    return frames


def _quantile(col, q):
    """RunningQuantileStats' histogram quantile (5000 bins) for one batch."""
    edges = np.linspace(col.min() - 1e-10, col.max() + 1e-10, 5001)
    cumsum = np.cumsum(np.histogram(col, bins=edges)[0])
    target = q * len(col)
    idx = int(np.searchsorted(cumsum, target))
    if idx == 0:
        return edges[0]
    if idx >= len(cumsum):
        return edges[-1]
    before, inside = cumsum[idx - 1], cumsum[idx] - cumsum[idx - 1]
    if inside == 0:
        return edges[idx]
    return edges[idx] + (target - before) / inside * (edges[idx + 1] - edges[idx])


def _feature_stats(values, is_image, version):
    """compute_episode_stats for one feature: vectors (D,), scalars (1,), images (3, 1, 1) scaled by 1/255."""
    if is_image:
        values = _sample_images(values)
        rows, count = values.reshape(-1, 3), len(values)
    else:
        rows, count = (values.reshape(-1, 1) if values.ndim == 1 else values), len(values)
    wide = rows.astype(np.float64)
    stats = {"min": rows.min(0), "max": rows.max(0), "mean": wide.mean(0), "std": wide.std(0)}
    stats["count"] = np.array([count])
    if version == "v3.0":
        for q in QUANTILES:
            qs = [_quantile(wide[:, j], q) for j in range(wide.shape[1])] if len(rows) >= 2 else stats["mean"]
            stats[f"q{int(q * 100):02d}"] = np.asarray(qs, dtype=np.float64)
    if is_image:
        return {k: v if k == "count" else (v / 255.0).reshape(3, 1, 1) for k, v in stats.items()}
    return stats


def _aggregate(per_episode):
    """compute_stats.aggregate_stats: count-weighted means/quantiles, pooled variance, global min/max."""
    out = {}
    for key in per_episode[0]:
        items = [ep[key] for ep in per_episode]
        counts = np.stack([s["count"] for s in items]).astype(np.float64)
        total = counts.sum(0)
        means = np.stack([s["mean"] for s in items])
        w = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))
        mean = (means * w).sum(0) / total
        var = ((np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
        agg = {"min": np.min([s["min"] for s in items], 0), "max": np.max([s["max"] for s in items], 0)}
        agg.update(mean=mean, std=np.sqrt(var), count=total.astype(np.int64))
        for q in (k for k in items[0] if k[0] == "q"):
            agg[q] = (np.stack([s[q] for s in items]) * w).sum(0) / total
        out[key] = agg
    return out


def _tolist(stats):
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


# ---------------------------------------------------------------- files


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _data_table(features, columns, version):
    """Frame table as HF `datasets` builds it: Sequence(length=D) -> fixed_size_list, `huggingface` metadata."""
    fields, hf = [], {}
    for key, ft in features.items():
        if ft["dtype"] in ("video", "image"):
            continue
        value = {"dtype": ft["dtype"], "_type": "Value"}
        if ft["shape"] == [1]:
            fields.append(pa.field(key, pa.from_numpy_dtype(np.dtype(ft["dtype"]))))
            hf[key] = value
        else:  # datasets 3.x (lerobot 0.3, v2.1) calls it Sequence; datasets 4.x (v3.0) List
            fields.append(pa.field(key, pa.list_(pa.from_numpy_dtype(np.dtype(ft["dtype"])), ft["shape"][0])))
            hf[key] = {"feature": value, "length": ft["shape"][0], "_type": "Sequence" if version == "v2.1" else "List"}
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})
    arrays = []
    for f in fields:
        v = columns[f.name]
        if pa.types.is_fixed_size_list(f.type):
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1), f.type.value_type), v.shape[1]))
        else:
            arrays.append(pa.array(v, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _tasks_table(tasks, index_name):
    """meta/tasks.parquet as `pandas.DataFrame({"task_index": ...}, index=tasks).to_parquet()` writes it."""
    field_name = "__index_level_0__" if index_name is None else index_name
    column = {"name": index_name, "field_name": field_name, "pandas_type": "unicode", "numpy_type": "object"}
    pandas_meta = {
        "index_columns": [field_name],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {**column, "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [("task_index", pa.int64()), (field_name, pa.string())], metadata={"pandas": json.dumps(pandas_meta)}
    )
    return pa.table({"task_index": list(tasks.values()), field_name: list(tasks)}, schema=schema)


def write_lerobot(
    root,
    *,
    version="v2.1",
    episodes=3,
    cameras=("observation.images.top", "observation.images.wrist"),
    codec="h264",
    fps=10,
    image_shape=(48, 64),
    state_dim=6,
    action_dim=6,
    seed=0,
    lengths=None,
    robot_type="so100_follower",
    tasks_index_name=None,
):
    """Write a LeRobot dataset at `root` and return what was written.

    `tasks_index_name` (v3.0): None stores the task strings as the unnamed pandas index (`__index_level_0__`,
    lerobot 0.4.x); "task" names it (lerobot >= 0.5). Returns {"root", "version", "codec", "fps", "cameras",
    "info", "tasks": {task: task_index}, "episodes": [per episode: episode_index, length, task, task_index,
    dataset_from_index, dataset_to_index, timestamp, state, action, frames {camera: uint8 (T, H, W, 3) before
    encoding}, videos {camera: {path, from_timestamp, to_timestamp}}], "files": sorted relative paths}.
    """
    if episodes < 1:
        raise ValueError("at least one episode")
    if version not in ("v2.1", "v3.0"):
        raise ValueError(f"version must be 'v2.1' or 'v3.0', not {version!r}")
    if codec not in ENCODERS:
        raise ValueError(f"codec must be one of {sorted(ENCODERS)}, not {codec!r}")
    h, w = image_shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even image sizes, got {image_shape}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = list(lengths) if lengths is not None else [int(n) for n in rng.integers(7, 14, size=episodes)]
    if len(lengths) != episodes:
        raise ValueError(f"{len(lengths)} lengths for {episodes} episodes")
    cameras = tuple(cameras)

    features = {
        "action": {"dtype": "float32", "shape": [action_dim], "names": [f"motor_{i}.pos" for i in range(action_dim)]},
        "observation.state": {
            "dtype": "float32",
            "shape": [state_dim],
            "names": [f"motor_{i}.pos" for i in range(state_dim)],
        },
    }
    for cam in cameras:
        features[cam] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"]}
    features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})

    tasks, eps, total = {}, [], 0
    for e, n in enumerate(lengths):
        task = TASK_POOL[_task_slot(e) % len(TASK_POOL)]
        tasks.setdefault(task, len(tasks))
        eps.append(
            {
                "episode_index": e,
                "length": n,
                "task": task,
                "task_index": tasks[task],
                "dataset_from_index": total,
                "dataset_to_index": total + n,
                "timestamp": (np.arange(n) / fps).astype(np.float32),
                "state": _random_walk(rng, n, state_dim),
                "action": _random_walk(rng, n, action_dim),
                "frames": {cam: _frames(n, image_shape, e, c, fps) for c, cam in enumerate(cameras)},
                "videos": {},
            }
        )
        total += n

    ep_stats, tables = [], []
    for ep in eps:
        n = ep["length"]
        columns = {
            "action": ep["action"],
            "observation.state": ep["state"],
            "timestamp": ep["timestamp"],
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep["episode_index"], dtype=np.int64),
            "index": np.arange(ep["dataset_from_index"], ep["dataset_to_index"], dtype=np.int64),
            "task_index": np.full(n, ep["task_index"], dtype=np.int64),
        }
        tables.append(_data_table(features, columns, version))
        values = {**columns, **ep["frames"]}
        ep_stats.append({k: _feature_stats(values[k], k in ep["frames"], version) for k in features})

    info = {"codebase_version": version, "robot_type": robot_type, "total_episodes": episodes}
    info.update(total_frames=total, total_tasks=len(tasks))
    if version == "v2.1":
        info.update(total_videos=episodes * len(cameras), total_chunks=(episodes - 1) // CHUNKS_SIZE + 1)
        info.update(chunks_size=CHUNKS_SIZE)
        info.update(fps=fps, splits={"train": f"0:{episodes}"}, data_path=V21_DATA_PATH)
        info.update(video_path=V21_VIDEO_PATH if cameras else None, features=features)
        _write_v21(root, info, eps, tables, ep_stats, tasks, codec, fps)
    else:
        info.update(chunks_size=CHUNKS_SIZE, data_files_size_in_mb=DATA_FILES_SIZE_IN_MB)
        info.update(video_files_size_in_mb=VIDEO_FILES_SIZE_IN_MB, fps=fps, splits={"train": f"0:{episodes}"})
        info.update(data_path=V30_DATA_PATH, video_path=V30_VIDEO_PATH if cameras else None, features=features)
        _write_v30(root, info, eps, tables, ep_stats, tasks, codec, fps, tasks_index_name)
    _write_json(root / "meta/info.json", info)

    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return {
        "root": root,
        "version": version,
        "codec": codec,
        "fps": fps,
        "cameras": cameras,
        "info": info,
        "tasks": tasks,
        "episodes": eps,
        "files": files,
    }


def _write_v21(root, info, eps, tables, ep_stats, tasks, codec, fps):
    for ep, table in zip(eps, tables):
        fmt = {"episode_chunk": ep["episode_index"] // CHUNKS_SIZE, "episode_index": ep["episode_index"]}
        path = root / V21_DATA_PATH.format(**fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for cam, frames in ep["frames"].items():
            rel = V21_VIDEO_PATH.format(video_key=cam, **fmt)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _encode(root / rel, frames, codec, fps)
            ep["videos"][cam] = {"path": rel, "from_timestamp": 0.0, "to_timestamp": _duration(root / rel)}
            if ep["episode_index"] == 0:
                info["features"][cam]["info"] = _video_info(root / rel)
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    _write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in tasks.items()])
    rows = [{"episode_index": ep["episode_index"], "tasks": [ep["task"]], "length": ep["length"]} for ep in eps]
    _write_jsonl(meta / "episodes.jsonl", rows)
    rows = [{"episode_index": ep["episode_index"], "stats": _tolist(s)} for ep, s in zip(eps, ep_stats)]
    _write_jsonl(meta / "episodes_stats.jsonl", rows)


def _write_v30(root, info, eps, tables, ep_stats, tasks, codec, fps, tasks_index_name):
    data_path = root / V30_DATA_PATH.format(chunk_index=0, file_index=0)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(data_path, tables[0].schema, compression="snappy", use_dictionary=True) as writer:
        for table in tables:  # one row group per episode, as the recorder appends them
            writer.write_table(table)

    scratch = Path(tempfile.mkdtemp(dir=root))
    for ep in eps:
        for cam, frames in ep["frames"].items():
            tmp = scratch / f"{cam}_{ep['episode_index']:03d}.mp4"
            _encode(tmp, frames, codec, fps)
            duration = _duration(tmp)
            rel = V30_VIDEO_PATH.format(video_key=cam, chunk_index=0, file_index=0)
            start = 0.0 if ep["episode_index"] == 0 else eps[ep["episode_index"] - 1]["videos"][cam]["to_timestamp"]
            if ep["episode_index"] == 0:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(tmp, root / rel)
                info["features"][cam]["info"] = _video_info(root / rel)
            else:  # lerobot appends each new episode to the camera's current file
                _concat([root / rel, tmp], root / rel)
                tmp.unlink()
            ep["videos"][cam] = {"path": rel, "from_timestamp": start, "to_timestamp": start + duration}
    shutil.rmtree(scratch)

    rows = []
    for ep, stats in zip(eps, ep_stats):
        row = {"episode_index": ep["episode_index"], "tasks": [ep["task"]], "length": ep["length"]}
        row.update({"data/chunk_index": 0, "data/file_index": 0})
        row.update(dataset_from_index=ep["dataset_from_index"], dataset_to_index=ep["dataset_to_index"])
        for cam, v in ep["videos"].items():
            row.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": 0})
            row.update(
                {f"videos/{cam}/from_timestamp": v["from_timestamp"], f"videos/{cam}/to_timestamp": v["to_timestamp"]}
            )
        for key, s in _tolist(stats).items():
            row.update({f"stats/{key}/{name}": value for name, value in s.items()})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        rows.append(row)
    path = root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    batches = [pa.Table.from_pylist(rows[i : i + 10]) for i in range(0, len(rows), 10)]  # metadata_buffer_size=10
    with pq.ParquetWriter(path, batches[0].schema, compression="snappy", use_dictionary=True) as writer:
        for batch in batches:
            writer.write_table(batch)

    pq.write_table(_tasks_table(tasks, tasks_index_name), root / "meta/tasks.parquet")
    _write_json(root / "meta/stats.json", _tolist(_aggregate(ep_stats)))


def corrupt_video(path):
    """Overwrite the middle half of the mp4's `mdat` payload (the whole file if none) with 0xFF bytes.

    The `moov` index stays intact, so `av.open` succeeds and the first frames decode; decoding then raises
    `av.error.InvalidDataError` (an `av.error.FFmpegError` and a `ValueError`) from `avcodec_send_packet()`
    at the first damaged packet (0xFF is an impossible NAL size for h264 and a forbidden OBU header for AV1).
    In a v3.0 file the episodes stored before the damaged bytes still decode. Returns the byte range written.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    start, end = 0, len(data)
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            start, end = pos + header, pos + size
            break
        if size < header:
            break
        pos += size
    a, b = start + (end - start) // 4, start + 3 * (end - start) // 4
    data[a:b] = b"\xff" * (b - a)
    path.write_bytes(bytes(data))
    return a, b


# ---------------------------------------------------------------- self-check


def _decode(path):
    """Every frame of a video as (time in seconds, rgb24 array)."""
    with av.open(str(path)) as container:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def _check(result):
    root, fps, eps, version = result["root"], result["fps"], result["episodes"], result["version"]
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == version and info["total_frames"] == sum(e["length"] for e in eps)
    if version == "v2.1":
        tables = [
            pq.read_table(root / info["data_path"].format(episode_chunk=0, episode_index=e)) for e in range(len(eps))
        ]
        data = pa.concat_tables(tables)
        lines = (root / "meta/episodes.jsonl").read_text().splitlines()
        assert [json.loads(x)["length"] for x in lines] == [e["length"] for e in eps]
        tasks = {
            json.loads(x)["task"]: json.loads(x)["task_index"]
            for x in (root / "meta/tasks.jsonl").read_text().splitlines()
        }
    else:
        data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
        meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
        assert [m["dataset_from_index"] for m in meta] == [e["dataset_from_index"] for e in eps]
        for m, ep in zip(meta, eps):
            for cam, v in ep["videos"].items():
                assert m[f"videos/{cam}/from_timestamp"] == v["from_timestamp"], (m, v)
        t = pq.read_table(root / "meta/tasks.parquet")
        tasks = dict(zip(t.column(t.schema.names[1]).to_pylist(), t.column("task_index").to_pylist()))
    assert tasks == result["tasks"], (tasks, result["tasks"])
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), len(eps[0]["state"][0]))
    assert data.schema.field("timestamp").type == pa.float32() and data.schema.field("index").type == pa.int64()
    state = np.stack(data.column("observation.state").to_pylist())
    assert np.array_equal(state, np.concatenate([e["state"] for e in eps]))
    assert data.column("index").to_pylist() == list(range(data.num_rows))
    assert data.column("task_index").to_pylist() == [e["task_index"] for e in eps for _ in range(e["length"])]

    errors = []
    for cam in result["cameras"]:
        decoded = {}
        for ep in eps:  # v3.0: every episode points to the same concatenated file
            decoded.setdefault(ep["videos"][cam]["path"], _decode(root / ep["videos"][cam]["path"]))
        for path, frames in decoded.items():
            owners = [e for e in eps if e["videos"][cam]["path"] == path]
            assert len(frames) == sum(e["length"] for e in owners), (path, len(frames))
            for ep in owners:
                v = ep["videos"][cam]
                for i, src in enumerate(ep["frames"][cam]):
                    t, rgb = frames[round((v["from_timestamp"] + i / fps) * fps)]
                    assert abs(t - (v["from_timestamp"] + i / fps)) < 1e-4, (t, v, i)
                    errors.append(np.abs(rgb.astype(np.int16) - src.astype(np.int16)))
                assert abs(v["to_timestamp"] - v["from_timestamp"] - ep["length"] / fps) < 1e-6
    err = np.stack(errors) if errors else np.zeros((1, 1))
    return {"max": int(err.max()), "p99": float(np.percentile(err, 99)), "mean": float(err.mean())}


def _corruption_check(video, scratch):
    """Corrupt a copy of `video`; decoding it must raise av.error.InvalidDataError. Returns frames decoded first."""
    copy = Path(scratch) / "corrupt.mp4"
    shutil.copy(video, copy)
    corrupt_video(copy)
    n = 0
    try:
        with av.open(str(copy)) as container:
            for _ in container.decode(video=0):
                n += 1
    except av.error.InvalidDataError:
        return n
    raise AssertionError(f"decoding a corrupted copy of {video} did not fail ({n} frames)")


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for version in ("v2.1", "v3.0"):
            for codec in ("h264", "av1"):
                out = write_lerobot(tmp / f"{version}_{codec}", version=version, codec=codec)
                err = _check(out)
                videos = sorted(p for p in out["root"].rglob("*.mp4"))
                before = [_corruption_check(v, tmp) for v in videos]
                print(f"{version} {codec}: {len(out['files'])} files; decoded - source |error|", end=" ")
                print(f"max {err['max']}, p99 {err['p99']:.0f}, mean {err['mean']:.2f}", end="; ")
                print(f"corrupted copies raise InvalidDataError after {before} frames")
                if codec == "h264":
                    print("\n".join("    " + f for f in out["files"]))
        variants = [
            {"version": "v3.0", "tasks_index_name": "task", "episodes": 5, "fps": 30, "image_shape": (96, 128)},
            {"version": "v3.0", "cameras": (), "episodes": 1},
            {"version": "v2.1", "cameras": ("observation.images.front",), "lengths": [1, 4], "episodes": 2},
        ]
        for i, kw in enumerate(variants):
            err = _check(write_lerobot(tmp / f"variant{i}", **kw))
            print(f"variant {kw}: ok, |error| max {err['max']} mean {err['mean']:.2f}")
    print(f"self-check passed in {time.perf_counter() - start:.1f}s")
