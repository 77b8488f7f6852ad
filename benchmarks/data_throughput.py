"""Data pipeline throughput against the JPEG decode ceiling, and host RAM over a long run.

Writes a multi-dataset RLDS corpus (three layouts, two cameras used), then in
one process measures:

- ``pipeline_fps``: frames/s of the full mixture pipeline (read, standardize,
  normalize, chunk, shuffle, interleave, decode, resize, batch; with
  ``--augment`` also crop + colour augmentation, which the ceiling does not pay);
- ``decode_ceiling_fps``: frames/s of JPEG decode + resize alone of the same
  encoded frames held in memory, with the same thread count: the most the
  pipeline could reach on this machine;
- ``rss_growth``: (peak RSS over ``--rss-batches`` batches after warm-up) /
  (RSS after warm-up) - 1.

    python benchmarks/data_throughput.py [--episodes 120] [--rss-batches 2000] [--batch 32] [--augment]

Prints one JSON object. Target: ``fraction_of_ceiling`` >= 0.7, ``rss_growth`` < 0.1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_HW = (180, 240)  # stored frames (resized to the model's size in the pipeline)
MODEL_IMAGE = 160


def _rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _scene(rng, t: int, length: int):
    """A smooth synthetic camera frame (compresses like a real scene, unlike noise)."""
    import numpy as np

    h, w = IMAGE_HW
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, 3)
    image = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        image[..., c] = np.clip(base[c] + 40 * np.sin(xx / (17 + c) + t / length * 3) + yy / 6, 0, 255)
    cy, cx = int(h * (0.3 + 0.4 * t / length)), int(w * 0.5)
    image[cy - 12 : cy + 12, cx - 12 : cx + 12] = rng.integers(0, 255, 3)
    return image


LAYOUTS = {
    "bench_eef": ("eef_delta", ("x", "y", "z", "rx", "ry", "rz", "gripper"), 10.0, 8),
    "bench_joint": ("joint_position", tuple(f"j{i}" for i in range(7)) + ("gripper",), 15.0, 8),
    "bench_bimanual": ("bimanual_joint_position", tuple(f"a{i}" for i in range(12)) + ("gripper_l", "gripper_r"), 50.0, 14),
}  # fmt: skip


def _write_corpus(root: pathlib.Path, episodes: int) -> None:
    """Writes the corpus (run in a child process so its arrays never count in our RSS)."""
    import numpy as np

    from vla_jax.data.rlds_writer import write_rlds

    rng = np.random.default_rng(0)
    for name, (_, dims, _, state_dim) in LAYOUTS.items():
        eps = []
        for e in range(episodes):
            length = int(rng.integers(30, 60))
            action = rng.normal(size=(length, len(dims))).astype(np.float32)
            for d, n in enumerate(dims):
                if "gripper" in n:
                    action[:, d] = (np.arange(length) > length // 2).astype(np.float32)
            eps.append({"steps": {
                "observation": {
                    "image": np.stack([_scene(rng, t, length) for t in range(length)]),
                    "wrist_image": np.stack([_scene(rng, length - t, length) for t in range(length)]),
                    "state": rng.normal(size=(length, state_dim)).astype(np.float32),
                },
                "action": action,
                "language_instruction": np.array([f"do task {e % 7}"] * length),
            }})  # fmt: skip
        write_rlds(root, name, {"train": eps}, num_shards=8)


def _register_specs() -> list[str]:
    from vla_jax.data import specs

    for name, (space, dims, hz, _) in LAYOUTS.items():
        specs.register(specs.DatasetSpec(
            name=name, action_space=space, action_dims=dims, control_frequency_hz=hz,
            normalize_action=tuple("gripper" not in d for d in dims), cameras={"primary": "image", "wrist": "wrist_image"},
            state_keys=("state",), val_split=None,
        ))  # fmt: skip
    return list(LAYOUTS)


def _config(root: pathlib.Path, names: list[str], augment: bool):
    from vla_jax.data.config import DEFAULT_AUGMENT, data_config

    config = data_config(",".join(f"{n}:1.0" for n in names))
    config.data_dir = str(root)
    config.cameras = ("primary", "wrist")
    config.image_size = MODEL_IMAGE
    config.augment = DEFAULT_AUGMENT if augment else {}
    config.shuffle_buffer_size = 20_000
    config.ram_budget_gb = 2.0
    config.read_threads = 4
    config.transform_threads = os.cpu_count() or 2
    return config


def _ceiling_fps(mix, config, num_frames: int, batch: int) -> float:
    """Decode + resize of the same cameras, from encoded bytes already in memory."""
    import tensorflow as tf

    from vla_jax.data import frame_transforms, trajectory

    frames = []
    for source in mix.sources:
        ds = trajectory.flatten(trajectory.from_rlds(source.builder, source.train_split))
        ds = ds.map(lambda f: (f["observation"]["image"], f["observation"]["wrist_image"]))
        frames += list(ds.take(num_frames // len(mix.sources)).as_numpy_iterator())
    primary = tf.constant([f[0] for f in frames])
    wrist = tf.constant([f[1] for f in frames])
    size, mode = config.image_size, config.resize_mode

    def decode(p, w):
        return frame_transforms.decode_image(p, size, mode), frame_transforms.decode_image(w, size, mode)

    ds = tf.data.Dataset.from_tensor_slices((primary, wrist)).repeat()
    ds = ds.map(decode, num_parallel_calls=config.transform_threads, deterministic=True).batch(batch).prefetch(2)
    it = iter(ds)
    for _ in range(5):
        next(it)
    count, start = 0, time.perf_counter()
    while count < num_frames:
        next(it)
        count += batch
    return count / (time.perf_counter() - start)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=120, help="episodes per dataset")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--measure-batches", type=int, default=150)
    parser.add_argument("--rss-batches", type=int, default=2000)
    parser.add_argument("--warmup-batches", type=int, default=300)
    parser.add_argument("--augment", action="store_true", help="add the default crop + colour augmentation")
    args = parser.parse_args(argv)

    import jax  # noqa: F401  (the loader asks JAX for the process index)

    from vla_jax.data import loader

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        start = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(target=_write_corpus, args=(root, args.episodes))
        writer.start()
        writer.join()
        if writer.exitcode:
            raise SystemExit(f"writing the benchmark corpus failed (exit {writer.exitcode})")
        names = _register_specs()
        corpus_s = time.perf_counter() - start
        config = _config(root, names, args.augment)
        mix = loader.open_mixture(config)

        ceiling = _ceiling_fps(mix, config, args.measure_batches * args.batch, args.batch)

        stream = loader.train_batches(mix, config, global_batch_size=args.batch, seed=0)
        for _ in range(args.warmup_batches):
            next(stream)
        start = time.perf_counter()
        for _ in range(args.measure_batches):
            next(stream)
        pipeline = args.measure_batches * args.batch / (time.perf_counter() - start)

        rss_after_warmup = _rss_bytes()
        peak, timeline = rss_after_warmup, []
        for i in range(args.rss_batches):
            next(stream)
            rss = _rss_bytes()
            peak = max(peak, rss)
            if i % 250 == 249:
                timeline.append(round(rss / 2**20))
        frames_on_disk = sum(s.statistics.num_transitions for s in mix.sources)
        return {
            "pipeline_fps": round(pipeline, 1),
            "decode_ceiling_fps": round(ceiling, 1),
            "fraction_of_ceiling": round(pipeline / ceiling, 3),
            "rss_growth": round(peak / rss_after_warmup - 1.0, 4),
            "rss_after_warmup_mb": round(rss_after_warmup / 2**20, 1),
            "rss_peak_mb": round(peak / 2**20, 1),
            "rss_batches": args.rss_batches,
            "rss_mb_every_250_batches": timeline,
            "batch": args.batch,
            "datasets": len(names),
            "train_frames": frames_on_disk,
            "cameras": list(config.cameras),
            "image": [*IMAGE_HW, "->", MODEL_IMAGE],
            "threads": config.transform_threads,
            "augment": args.augment,
            "corpus_write_s": round(corpus_s, 1),
        }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
