"""Release directories: a self-contained, verified copy of one trained policy (``vla-jax export``).

Layout::

    release.json               format, step, preset, parameter count, cameras, image size, horizon,
                               datasets (action space, dims, control rate), sha256 of every other file
    config.json                the run's resolved config
    dataset_statistics.json    per-dataset statistics with their normalization mode
    policy.json                the model's input shapes and each dataset's embodiment
    tokenizers/                the run's tokenizer files
    params/                    the parameters (EMA when the run kept them), Orbax; LoRA pairs folded in
                               (config.json then has model.lora.rank 0)

The directory is written under a temporary name and renamed when complete, so
a partial export is never taken for a release. Loading checks every listed
file's digest first: a corrupt, partial or foreign directory is one error line.
"""

from __future__ import annotations

import datetime
import json
import pathlib

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import vla_jax
from vla_jax.errors import CheckpointError
from vla_jax.inference import bundle as bundle_lib
from vla_jax.models import lora as lora_lib
from vla_jax.models import presets
from vla_jax.training import release_layout

# The layout and its check live in training.release_layout (a fine-tune reads releases too).
FORMAT, FORMAT_VERSION = release_layout.FORMAT, release_layout.FORMAT_VERSION
PARAMS_DIR, TOKENIZER_DIR = release_layout.PARAMS_DIR, release_layout.TOKENIZER_DIR
verify = release_layout.verify


def matching_preset(model_config) -> str:
    """The preset whose ViT, backbone and expert shapes the model has, or ``"custom"``."""
    keys = ("vit", "backbone", "expert")
    for name in presets.PRESETS:
        preset = presets.model_config(name)
        if all(preset[k].to_dict() == model_config[k].to_dict() for k in keys):
            return name
    return "custom"


def release_summary(parts: bundle_lib.PolicyBundle) -> dict:
    """The descriptive part of ``release.json``."""
    config = parts.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vla_jax_version": vla_jax.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "step": parts.step,
        "parameters_from": parts.parameters_from,
        "preset": matching_preset(config.model),
        "mode": config.model.mode,
        "num_params": parts.num_params,
        "cameras": list(parts.io.cameras),
        "depth_cameras": list(parts.io.depth_cameras),
        "image_size": parts.io.image_size,
        "action_horizon": parts.io.action_horizon,
        "datasets": {
            name: {
                "action_space": e.action_space,
                "action_dims": list(e.action_dims),
                "action_dim": e.action_dim,
                "control_hz": e.control_hz,
                "state_dim": e.state_dim,
                "cameras": list(e.cameras),
            }
            for name, e in parts.embodiments.items()
        },
    }


def export(workdir: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None) -> dict:
    """Writes the release of ``workdir``'s checkpoint (latest, or ``step``) to ``out``; returns its release.json."""
    release_layout.check_out(out)  # before the (slow) load
    parts = bundle_lib.load_checkpoint(workdir, step)
    config, params = parts.config, parts.params
    merged_lora = lora_lib.enabled(config.model.get("lora"))
    if merged_lora:  # fold each LoRA pair into its weight: the release is a plain model
        params = lora_lib.merge(jax.tree.map(np.asarray, jax.device_get(params)), config.model.lora)
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.lora.rank = 0
    with release_layout.staging(out) as tmp:
        host_params = jax.tree.map(np.asarray, jax.device_get(params))
        release_layout.write_parts(
            tmp,
            config=config.to_dict(),
            statistics={name: s.to_json() for name, s in parts.statistics.items()},
            policy={
                "io": parts.io.to_json(),
                "embodiments": {name: e.to_json() for name, e in parts.embodiments.items()},
            },
            tokenizers=parts.tokenizer_files,
            params=host_params,
        )
        summary = dict(release_summary(parts), source=str(parts.source), lora_merged=merged_lora)
        summary["num_params"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(host_params))
        summary = release_layout.seal(tmp, summary)
    return summary


def load_release(path: str | pathlib.Path, devices=None) -> bundle_lib.PolicyBundle:
    """A verified release, its parameters placed on ``devices`` (see :func:`bundle.inference_mesh`)."""
    root = pathlib.Path(path).absolute()
    summary = verify(root)
    saved = {
        "config": json.loads((root / "config.json").read_text()),
        "dataset_statistics": json.loads((root / "dataset_statistics.json").read_text()),
        "policy": json.loads((root / "policy.json").read_text()),
        "tokenizers": {p.name: p.read_bytes() for p in sorted((root / TOKENIZER_DIR).iterdir())},
    }

    def params_loader(abstract):
        checkpointer = ocp.StandardCheckpointer()
        try:
            return checkpointer.restore(root / PARAMS_DIR, abstract), summary["parameters_from"]
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{root}: the parameters do not fit the model of config.json ({error})") from error
        finally:
            checkpointer.close()

    return bundle_lib.assemble(saved, params_loader, bundle_lib.inference_mesh(devices), str(root), summary["step"])
