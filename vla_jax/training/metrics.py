"""Metrics to ``metrics.jsonl`` and a console progress line (process 0 only)."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import jax
import numpy as np


def to_builtin(value):
    """A scalar as a Python number, an array as nested lists."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
    """Appends one JSON object per record to ``workdir/metrics.jsonl``."""

    def __init__(self, workdir: pathlib.Path):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: to_builtin(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


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
