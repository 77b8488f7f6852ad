"""What the registry holds and what a dataset's statistics are: the `data list` and `data stats` commands."""

from __future__ import annotations

import numpy as np

from vla_jax.data import loader
from vla_jax.data.config import data_config
from vla_jax.data.specs import all_mixtures, all_specs, get_spec


def listing() -> dict:
    """Registered datasets (with what they hold) and mixtures (with their weights)."""
    datasets = [
        {
            "name": spec.name,
            "action_space": spec.action_space,
            "action_dims": list(spec.action_dims),
            "control_frequency_hz": spec.control_frequency_hz,
            "cameras": dict(spec.cameras),
            "depth_cameras": dict(spec.depth_cameras),
            "has_language": spec.language_key is not None,
            "version": spec.version,
        }
        for spec in all_specs().values()
    ]
    mixtures = [
        {"name": m.name, "datasets": [{"name": n, "weight": w} for n, w in m.weights]} for m in all_mixtures().values()
    ]
    return {"datasets": datasets, "mixtures": mixtures}


def format_listing(listing_: dict) -> str:
    lines = [f"{len(listing_['datasets'])} datasets:"]
    for d in listing_["datasets"]:
        cameras = ",".join(f"{role}" for role in d["cameras"]) or "-"
        lines.append(
            f"  {d['name']:<55} {d['action_space']:<24} {len(d['action_dims']):>2}-D "
            f"{d['control_frequency_hz']:>6g} Hz  cameras {cameras}{'' if d['has_language'] else '  (no language)'}"
        )
    lines.append(f"{len(listing_['mixtures'])} mixtures:")
    for m in listing_["mixtures"]:
        lines.append(f"  {m['name']:<30} {len(m['datasets'])} datasets")
    return "\n".join(lines)


def dataset_statistics(name: str, data_dir: str) -> dict:
    """The dataset's normalization statistics (cached, or computed and cached) as JSON."""
    spec = get_spec(name)
    config = data_config(mixture=name)
    config.data_dir = data_dir
    source = loader.open_source(spec, config)
    return {"builder_dir": str(source.builder_dir), **source.statistics.to_json()}


def format_statistics(stats: dict) -> str:
    lines = [
        f"{stats['dataset']}: {stats['num_trajectories']} trajectories, {stats['num_transitions']} transitions "
        f"(fingerprint {stats['fingerprint']}, {stats['builder_dir']})"
    ]
    for key in ("action", "state"):
        lines.append(f"{key}:")
        values = stats[key]
        lines.append("  " + " ".join(f"{col:>11}" for col in ("dim", "mean", "std", "min", "max", "q01", "q99")))
        for d in range(len(values["mean"])):
            row = [values[col][d] for col in ("mean", "std", "min", "max", "q01", "q99")]
            lines.append("  " + " ".join([f"{d:>11}", *(f"{v:>11.4g}" for v in np.asarray(row))]))
    return "\n".join(lines)
