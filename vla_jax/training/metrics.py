"""Metrics to ``metrics.jsonl`` and a console progress line (process 0 only)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import jax
import numpy as np

from vla_jax.errors import ConfigError


def to_builtin(value):
    """A scalar as a Python number, an array as nested lists."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
    """Appends one JSON object per record to ``workdir/metrics.jsonl``; optionally TensorBoard and wandb.

    TensorBoard event files go to ``workdir/tensorboard`` (vectors as one
    scalar per entry); wandb needs ``wandb_project`` and the ``wandb``
    package. Only process 0 writes.
    """

    def __init__(self, workdir: pathlib.Path, *, tensorboard: bool = False, wandb_project: str = "", config=None):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tensorboard = self.wandb = None
        if not self.enabled:
            return
        if tensorboard:
            import tensorflow as tf

            self.tensorboard = tf.summary.create_file_writer(str(pathlib.Path(workdir) / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    f"config key 'wandb_project' is {wandb_project!r} but wandb is not installed (pip install wandb)"
                ) from None
            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(workdir), resume="allow")

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: to_builtin(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = dict(_scalars(metrics))
        if self.tensorboard is not None:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            # tf.summary.write with the "scalars" plugin tag: what tf.summary.scalar writes, without
            # needing the tensorboard package installed.
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
            )
            with self.tensorboard.as_default(step=int(step)):
                for name, value in scalars.items():
                    tf.summary.write(name, tf.constant(value, tf.float32), metadata=metadata.SerializeToString())
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=int(step))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _scalars(metrics: dict):
    """``(name, float)`` pairs; a vector ``v`` of name ``n`` gives ``n/0``, ``n/1``, ..."""
    for name, value in metrics.items():
        value = np.asarray(value, np.float64)
        if value.ndim == 0:
            yield name, float(value)
        else:
            for i, item in enumerate(value.reshape(-1)):
                yield f"{name}/{i}", float(item)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressLine:
    """``step 120/600 | loss 0.0312 | 4.1 steps/s | ETA 1m57s`` on stdout."""

    def __init__(self, start_step: int, num_steps: int):
        self.enabled = jax.process_index() == 0
        self.num_steps = num_steps
        self.last_step, self.last_time = start_step, time.perf_counter()
        self.steps_per_s = float("nan")

    def update(self, step: int, metrics: dict) -> float:
        """Prints the line; returns steps/s since the previous call."""
        now = time.perf_counter()
        if step > self.last_step:
            self.steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        if self.enabled:
            parts = [f"step {step}/{self.num_steps}"]
            parts += [f"{k} {float(v):.4g}" for k, v in metrics.items()]
            eta = (self.num_steps - step) / self.steps_per_s if self.steps_per_s > 0 else float("nan")
            parts += [f"{self.steps_per_s:.2f} steps/s", f"ETA {format_duration(eta)}"]
            print(" | ".join(parts), file=sys.stdout, flush=True)
        return self.steps_per_s
