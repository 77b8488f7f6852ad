"""``vla-jax eval``: success rates of a policy acting in an environment, and the same during training.

:func:`evaluate` runs ``episodes`` held-out seeds of an environment of
:mod:`vla_jax.envs.registry` with any policy (a ``Policy``, a
``PolicyClient`` talking to ``vla-jax serve``, or openpi's client) and returns
the summary of :mod:`.report`; with ``out`` it also writes ``results.json``
(the summary, every episode and the settings) and ``episodes.gif``.
``expert=True`` runs the environment's scripted expert through the same loop
instead, the reference a policy is measured against. :class:`TrainingEvaluator`
is the trainer's hook for ``config.closed_loop``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np

from vla_jax.envs import base, registry
from vla_jax.errors import ConfigError
from vla_jax.evaluation import report, video
from vla_jax.evaluation.runner import Controls, episode_starts, run_episodes
from vla_jax.inference import bundle as bundle_lib
from vla_jax.inference.policy import Policy

RESULTS_FILE = "results.json"
VIDEO_FILE = "episodes.gif"


def env_spec(name: str) -> registry.EnvSpec:
    if name not in registry.ENVS:
        raise ConfigError(f"--env {name!r} is not an environment; expected one of {sorted(registry.ENVS)}")
    return registry.ENVS[name]


def check_settings(
    *,
    episodes: int,
    num_envs: int,
    execute_steps: int | None,
    ensemble_decay: float | None,
    horizon: int | None,
    seed: int = 0,
) -> None:
    """ConfigError naming the first setting out of range (before any environment or model is built)."""
    if not 1 <= episodes <= base.MAX_EVAL_EPISODES:
        raise ConfigError(f"--episodes is {episodes}; expected an int in [1, {base.MAX_EVAL_EPISODES}]")
    if not 0 <= seed <= base.MAX_EVAL_SEED:
        raise ConfigError(
            f"--seed is {seed}; expected an int in [0, {base.MAX_EVAL_SEED}] (held-out scenes: never the data's)"
        )
    if not 1 <= num_envs <= registry.MAX_NUM_ENVS:
        raise ConfigError(f"--num-envs is {num_envs}; expected an int in [1, {registry.MAX_NUM_ENVS}]")
    if execute_steps is not None and ensemble_decay is not None:
        raise ConfigError("--execute and --ensemble exclude each other: execute k actions, or ensemble every step")
    if execute_steps is not None and (execute_steps < 1 or (horizon is not None and execute_steps > horizon)):
        raise ConfigError(f"--execute is {execute_steps}; expected an int in [1, the policy's horizon {horizon}]")
    if ensemble_decay is not None and not np.isfinite(ensemble_decay) or (ensemble_decay or 0.0) < 0:
        raise ConfigError(f"--ensemble is {ensemble_decay}; expected a finite decay >= 0 (ACT uses 0.01)")


def envs_to_run(env: str, num_envs: int, episodes: int) -> int:
    """How many environments actually run together: no more than the episodes or than the machine allows."""
    return max(1, min(num_envs, episodes, env_spec(env).max_envs()))


def evaluate(
    policy,
    env: str,
    episodes: int,
    *,
    seed: int = 0,
    num_envs: int = 16,
    execute_steps: int | None = None,
    ensemble_decay: float | None = None,
    controls: Controls | None = None,
    out: str | pathlib.Path | None = None,
    video_episodes: int = 8,
    expert: bool = False,
    progress=None,
) -> dict:
    """Closed-loop episodes of ``policy`` (or of the scripted expert, ``expert=True``) in ``env``; the summary."""
    spec, controls = env_spec(env), controls or Controls()
    horizon = _horizon(policy)
    check_settings(
        episodes=episodes, num_envs=num_envs, execute_steps=execute_steps, ensemble_decay=ensemble_decay,
        horizon=horizon, seed=seed,
    )  # fmt: skip
    started = time.perf_counter()
    envs = spec.make(envs_to_run(env, num_envs, episodes))
    try:
        seeds = [base.eval_seed(seed, i) for i in range(episodes)]
        starts = episode_starts(envs, seeds)
        found, timing = run_episodes(
            None if expert else policy,
            envs,
            seeds,
            starts,
            execute_steps=execute_steps,
            ensemble_decay=ensemble_decay,
            controls=controls,
            control_seed=seed,
            record_episodes=video_episodes if out is not None else 0,
            cameras=spec.cameras,
            progress=progress,
        )
    finally:
        envs.close()
    summary = report.summarize(found)
    summary.update(
        env=env,
        policy="scripted expert" if expert else _describe(policy),
        seed=seed,
        first_env_seed=seeds[0],
        controls=dataclasses.asdict(controls),
        execution=_execution(execute_steps, ensemble_decay, expert),
        num_envs=envs.num_envs,
        wall_s=time.perf_counter() - started,
        policy_s=timing["infer_s"],
        env_s=timing["env_s"],
        env_steps=timing["steps"],
    )
    if out is not None:
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if video_episodes > 0:
            summary["video"] = str(video.write_gif(found[:video_episodes], out / VIDEO_FILE))
        record = dict(summary, episodes_detail=[e.to_json() for e in found])
        (out / RESULTS_FILE).write_text(json.dumps(record, indent=1))
        summary["results"] = str(out / RESULTS_FILE)
    return summary


def _horizon(policy) -> int | None:
    metadata = getattr(policy, "metadata", None)
    if isinstance(metadata, dict):
        return metadata.get("action_horizon")
    return None


def _describe(policy) -> str:
    parts = getattr(policy, "parts", None)
    if parts is not None:
        return f"{parts.source} (step {parts.step}, decoder {policy.decoder})"
    uri = getattr(policy, "uri", None)
    return f"policy server {uri}" if uri else type(policy).__name__


def _execution(execute_steps: int | None, ensemble_decay: float | None, expert: bool) -> str:
    if expert:
        return "one action per step"
    if ensemble_decay is not None:
        return f"query every step, temporal ensembling (decay {ensemble_decay:g})"
    return f"execute {execute_steps} actions per chunk" if execute_steps else "execute whole chunks"


class TrainingEvaluator:
    """The trainer's closed-loop hook (``config.closed_loop``): the live parameters as a ``Policy``, in ``env``.

    Each decoder of the model is evaluated (or only ``closed_loop.decoder``);
    figures go under ``closed_loop/<decoder>/``. The policy is built (and
    compiled) at the first call; later calls swap in the new parameters, so
    each evaluation costs only its episodes.
    """

    def __init__(self, closed_loop_config):
        self.settings = closed_loop_config
        env_spec(closed_loop_config.env)
        self.policy: Policy | None = None

    def __call__(self, saved: dict, params, mesh, step: int) -> tuple[dict, str]:
        """Success figures for the policy of ``saved`` (checkpoint items) and ``params``; lines for the console."""
        c = self.settings
        num_envs = envs_to_run(c.env, c.num_envs, c.episodes)
        if self.policy is None:
            parts = bundle_lib.assemble(saved, lambda abstract: (params, "live"), mesh, "training", step)
            self.policy = Policy(parts, warmup_batch_sizes=(), pad_batch_to=num_envs)
        else:
            self.policy.parts = dataclasses.replace(self.policy.parts, params=params, step=step)
        found, lines = {}, []
        for decoder in (c.decoder,) if c.decoder else self.policy.decoders:
            self.policy.decoder = decoder
            summary = evaluate(
                self.policy, c.env, c.episodes, seed=c.seed, num_envs=c.num_envs, execute_steps=c.execute_steps or None
            )
            keys = ("success_rate", "wrong_object_rate", "timeout_rate", "invalid_action_rate", "mean_length", "wall_s")
            found.update({f"closed_loop/{decoder}/{key}": summary[key] for key in keys})
            text = report.format_summary(summary).replace("\n", "\n    ")
            lines.append(f"closed loop ({c.env}, {c.episodes} held-out episodes, {decoder}): {text}")
        return found, "\n".join(lines)
