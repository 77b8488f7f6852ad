"""Fine-tuning: from the pretrained demo policy vs from scratch, and LoRA vs full, on the second demo robot.

Trains ``experiments/finetune_demo.py`` (the demo task recorded by a robot with
absolute targets and one camera) for the same number of steps three ways:
``scratch`` (no init.source, the demo's from-scratch learning rate),
``full`` (every parameter trained from the source; the new action space shares
the trained space's AS expert), ``copy`` (the same, with the new action space
on a copy of that expert: ``init.action_space_expert="copy"``) and ``lora``
(rank-16 LoRA pairs on the backbone, the rest frozen:
``optimizer.freeze=all_but_lora``).
Validation every ``--eval-every`` steps. Prints one JSON object:

  runs.<name>.val_error_ratio      validation error / mean-action baseline at each evaluation (flow expert)
  runs.<name>.fast_error_ratio     the same for greedy FAST decoding
  runs.<name>.trainable_params, optimizer_bytes, wall_s
  steps_to_scratch_final           per run: the first evaluated step at which it reached scratch's final ratio
                                   (the better of flow and FAST), or null
  full_reaches_scratch_in_half     the acceptance figure of issue 18

    python benchmarks/finetune.py --source WORKDIR [--steps 600] [--eval-every 100] [--only full] [--set RUN:KEY=VALUE]

``--source`` is a trained demo run (``make demo``, or ``vla-jax train --config experiments/demo.py``).
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import sys
import tempfile
import time

from common import REPO

RUNS = {  # settings over experiments/finetune_demo.py
    "scratch": {
        "init.source": "",
        "init.action_space_from": "",
        "optimizer.peak_lr": 2e-3,
        "optimizer.warmup_steps": 50,
    },
    "full": {},
    "copy": {"init.action_space_expert": "copy", "model.expert.moe.as_experts": 4},  # full, with an AS expert copy
    "lora": {"model.lora.rank": 16, "optimizer.freeze": "all_but_lora", "optimizer.peak_lr": 2e-3},
}


def _set(config, key: str, value) -> None:
    *groups, last = key.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[last] = value


def _ratios(workdir: pathlib.Path) -> dict[str, dict[int, float]]:
    found = {"val_error_ratio": {}, "fast_error_ratio": {}}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val_error_ratio" in row:
            found["val_error_ratio"][row["step"]] = row["val_error_ratio"]
            found["fast_error_ratio"][row["step"]] = row.get("val_fast_error_ratio")
    return found


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="a trained demo workdir or its release")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument(
        "--set", action="append", default=[], help="RUN:KEY=VALUE, e.g. full:optimizer.peak_lr=2e-3 (repeatable)"
    )
    args = parser.parse_args(argv)
    changes: dict[str, dict] = {}
    for item in args.set:
        run, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        if run not in RUNS or not key or not value:
            parser.error(f"--set {item!r}: expected RUN:KEY=VALUE with RUN in {list(RUNS)}")
        changes.setdefault(run, {})[key] = ast.literal_eval(value) if value[:1] in "0123456789-.([{'\"" else value

    from vla_jax.config import load_config
    from vla_jax.training import trainer

    results = {}
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config = load_config(str(REPO / "experiments" / "finetune_demo.py"))
            settings = {
                "init.source": str(pathlib.Path(args.source).absolute()),
                "num_steps": args.steps,
                "eval_every": args.eval_every,
                "checkpoint_every": args.steps,
                **RUNS[name],
                **changes.get(name, {}),
            }
            for key, value in settings.items():
                _set(config, key, value)
            dry = trainer.dry_run(config)
            start = time.perf_counter()
            trainer.train(config, pathlib.Path(tmp) / name)
            wall = time.perf_counter() - start
            results[name] = dict(
                _ratios(pathlib.Path(tmp) / name),
                trainable_params=dry["params_trainable"],
                optimizer_bytes=dry["optimizer_bytes_per_device"],
                wall_s=round(wall, 1),
            )
    out = {"source": str(args.source), "steps": args.steps, "eval_every": args.eval_every, "set": args.set}
    out["runs"] = results
    if "scratch" in results:
        best = lambda r, s: min(v for v in (r["val_error_ratio"][s], r["fast_error_ratio"][s]) if v is not None)  # noqa: E731
        final = best(results["scratch"], args.steps)
        out["scratch_final_ratio"] = final
        out["steps_to_scratch_final"] = {
            name: next((s for s in sorted(r["val_error_ratio"]) if best(r, s) <= final), None)
            for name, r in results.items()
        }
        reached = out["steps_to_scratch_final"].get("full")
        out["full_reaches_scratch_in_half"] = reached is not None and reached <= args.steps // 2
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
