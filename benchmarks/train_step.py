"""Training step efficiency: FLOP/s of the `small` step vs this machine's matmul peak, and host overhead.

Measured in one process:

- ``flops_fraction_of_matmul_peak``: model FLOPs (``summary.forward_flops`` x 3,
  active experts only) per second of the trainer's jitted step on the
  ``small`` preset (synthetic batch, one device), over the FLOP/s of a large
  fp32 matmul measured here (the MFU this machine allows).
- ``host_overhead_fraction``: on the demo config with its real data pipeline
  read as the trainer reads it (global batches prefetched on a thread), the
  time each step spends outside the jitted step (taking the next batch) over
  the whole step, every step waited for. Target < 0.05.
- ``loop_vs_step_ratio``: wall time of the same loop without waiting (as the
  trainer runs it: the next batch is prepared while the step runs) over the
  jitted step's own time on a fixed batch; 1.0 means no overhead shows.

    python benchmarks/train_step.py [--steps 40] [--small-batch 2] [--repeats 3]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

from common import REPO, best_seconds, preset_step_flops_fraction


def host_overhead(steps: int) -> dict:
    import jax

    from vla_jax import sharding
    from vla_jax.config import load_config
    from vla_jax.data import loader
    from vla_jax.training import state, step, trainer

    config = load_config(str(REPO / "experiments" / "demo.py"))
    run = trainer.setup(config)
    with tempfile.TemporaryDirectory() as workdir:
        prompt = trainer.prepare_prompt_tokenizer(config, run.data, pathlib.Path(workdir))
    with jax.set_mesh(run.mesh), sharding.logical_rules(run.rules):
        train_state = state.init_state(run.model_fn, run.optimizer, run.layout)
        train_step = step.make_train_step(
            run.layout, run.optimizer, run.batch_sharding, config.seed, num_datasets=len(run.data.sources)
        )
        batches = loader.prefetch_global_batches(  # as the trainer reads them
            loader.train_batches(run.data, config.data, global_batch_size=config.batch_size, seed=0, prompt=prompt),
            run.batch_sharding,
        )

        def next_batch():
            return next(batches)

        for _ in range(5):  # compile, fill the pipeline
            train_state, metrics = train_step(train_state, next_batch())
        jax.block_until_ready(metrics)
        outside = total = 0.0
        for _ in range(steps):  # synchronous: every step waited for
            start = time.perf_counter()
            batch = next_batch()
            ready = time.perf_counter()
            train_state, metrics = train_step(train_state, batch)
            jax.block_until_ready(metrics)
            outside += ready - start
            total += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):  # as the trainer runs: no waiting
            train_state, metrics = train_step(train_state, next_batch())
        jax.block_until_ready(metrics)
        loop_s = (time.perf_counter() - start) / steps
        fixed = next_batch()
        holder = {"state": train_state}

        def one():
            holder["state"], m = train_step(holder["state"], fixed)
            return m["loss"]

        step_s = best_seconds(one, 10)
        batches.close()
    return {
        "demo_step_s": round(total / steps, 5),
        "demo_outside_step_s": round(outside / steps, 5),
        "host_overhead_fraction": round(outside / total, 4),
        "demo_loop_step_s": round(loop_s, 5),
        "demo_pure_step_s": round(step_s, 5),
        "loop_vs_step_ratio": round(loop_s / step_s, 3),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="demo steps timed for the host overhead")
    parser.add_argument("--small-batch", type=int, default=2, help="examples per `small` step")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import jax

    small = preset_step_flops_fraction("small", args.small_batch, args.repeats)
    results = {"device": jax.devices()[0].device_kind, "small_step": small}
    results["flops_fraction_of_matmul_peak"] = small["flops_fraction_of_matmul_peak"]
    results.update(host_overhead(args.steps))
    results["settings"] = vars(args)
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
