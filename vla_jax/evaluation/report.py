"""What closed-loop episodes add up to: success rate with its 95% interval, failure kinds, per-task rates."""

from __future__ import annotations

import math
from collections.abc import Sequence

from vla_jax.evaluation.runner import Episode


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (95% by default); (0, 1) for no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _rates(episodes: Sequence[Episode]) -> dict:
    n = len(episodes)
    successes = sum(e.success for e in episodes)
    low, high = wilson_interval(successes, n)
    return {
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "success_ci95": [low, high],
        "wrong_object_rate": sum(e.wrong_object for e in episodes) / n if n else 0.0,
    }


def summarize(episodes: Sequence[Episode]) -> dict:
    """Overall and per-task / per-instruction rates, failure kinds and episode lengths."""
    n = len(episodes)
    summary = _rates(episodes)
    lengths = [e.length for e in episodes]
    success_lengths = [e.length for e in episodes if e.success]
    summary.update(
        invalid_action_rate=sum(e.invalid_action for e in episodes) / n if n else 0.0,
        timeout_rate=sum(not (e.success or e.wrong_object or e.invalid_action) for e in episodes) / n if n else 0.0,
        mean_length=sum(lengths) / n if n else 0.0,
        mean_success_length=sum(success_lengths) / len(success_lengths) if success_lengths else None,
        mean_queries=sum(e.queries for e in episodes) / n if n else 0.0,
    )
    for key, field in (("per_task", "task"), ("per_instruction", "instruction")):
        groups: dict[str, list[Episode]] = {}
        for episode in episodes:
            groups.setdefault(getattr(episode, field), []).append(episode)
        summary[key] = {name: _rates(group) for name, group in sorted(groups.items())}
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the console: the headline first."""
    low, high = summary["success_ci95"]
    lines = [
        f"success {summary['success_rate']:.1%} ({summary['successes']}/{summary['episodes']}, "
        f"95% CI {low:.1%}-{high:.1%}); wrong object {summary['wrong_object_rate']:.1%}, "
        f"timeout {summary['timeout_rate']:.1%}, undecodable chunk {summary['invalid_action_rate']:.1%}; "
        f"mean length {summary['mean_length']:.1f} steps"
    ]
    per_task = ", ".join(
        f"{name} {r['success_rate']:.0%} of {r['episodes']}" for name, r in summary["per_task"].items()
    )
    if per_task:
        lines.append(f"per task: {per_task}")
    return "\n".join(lines)
