"""Closed-loop success: a freshly trained demo policy, the scripted expert on the same seeds, and the controls.

Trains ``experiments/demo.py`` (``make demo``'s config, overrides accepted) into
a temporary workdir, or takes an existing one (``--workdir``), then runs
``--episodes`` held-out demo episodes four ways through ``vla-jax eval``'s
code: the policy, the policy told another episode's instruction, the policy
with each camera blanked, and the scripted expert. With ``--metaworld-workdir``
a Meta-World policy (``experiments/metaworld_mt10.py``) is evaluated beside its
scripted experts, per task. Prints one JSON object:

  demo.expert, demo.<decoder>/policy, <decoder>/shuffled_instructions, <decoder>/blank_<camera>
                             success rate, 95% interval, failure rates, per-task success, wall seconds
  demo_train_wall_s          training wall time (when trained here)
  metaworld.*                the same for a Meta-World workdir

    python benchmarks/closed_loop.py [--episodes 100] [--workdir DIR] [--metaworld-workdir DIR] [--config.k=v ...]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _figures(summary: dict) -> dict:
    keep = ("success_rate", "success_ci95", "wrong_object_rate", "timeout_rate", "mean_length", "wall_s")
    out = {k: summary[k] for k in keep}
    out["per_task"] = {name: r["success_rate"] for name, r in summary["per_task"].items()}
    return out


def evaluate_all(workdir: pathlib.Path | None, env: str, episodes: int, cameras: tuple[str, ...], **kw) -> dict:
    """The scripted expert, then for each of the policy's decoders: the policy and its controls."""
    from vla_jax.evaluation import closed_loop
    from vla_jax.evaluation.runner import Controls
    from vla_jax.inference.policy import Policy

    results = {"expert": _figures(closed_loop.evaluate(None, env, episodes, expert=True, **kw))}
    if workdir is None:
        return results
    num_envs = min(kw.get("num_envs", 16), episodes)
    policy = Policy.load(workdir, warmup_batch_sizes=(), pad_batch_to=num_envs)
    cases = {"policy": Controls(), "shuffled_instructions": Controls(shuffle_instructions=True)}
    cases.update({f"blank_{name}": Controls(blank_cameras=(name,)) for name in cameras})
    for decoder in policy.decoders:
        policy.decoder = decoder
        policy.warm_up(num_envs, decoder)
        for name, controls in cases.items():
            summary = closed_loop.evaluate(policy, env, episodes, controls=controls, **kw)
            results[f"{decoder}/{name}"] = _figures(summary)
    return results


def main(argv: list[str]) -> dict:
    from vla_jax.cli import _split_overrides
    from vla_jax.config import load_config
    from vla_jax.envs import registry
    from vla_jax.evaluation.closed_loop import TrainingEvaluator
    from vla_jax.training import trainer

    rest, overrides = _split_overrides(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--workdir", default=None, help="a trained demo workdir (default: train one now)")
    parser.add_argument("--metaworld-workdir", default=None, help="a trained Meta-World workdir to evaluate")
    parser.add_argument("--metaworld-episodes", type=int, default=100)
    args = parser.parse_args(rest)
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tmp) / "demo"
        if args.workdir is None:
            config = load_config(str(REPO / "experiments" / "demo.py"), overrides)
            start = time.perf_counter()
            trained = trainer.train(config, workdir, closed_loop=TrainingEvaluator(config.closed_loop))
            result["demo_train_wall_s"] = round(time.perf_counter() - start, 1)
            result["demo_train_steps"] = config.num_steps
            result["demo_val_error_ratio"] = trained.get("val_error_ratio")
        cameras = registry.ENVS["demo"].cameras
        result["demo"] = evaluate_all(workdir, "demo", args.episodes, cameras)
    if args.metaworld_workdir:
        cameras = registry.ENVS["metaworld"].cameras
        mw = pathlib.Path(args.metaworld_workdir)
        result["metaworld"] = evaluate_all(mw, "metaworld", args.metaworld_episodes, cameras, num_envs=8)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
