"""Everything a policy is made of, read from a training workdir's checkpoint or from a release directory.

A :class:`PolicyBundle` holds the resolved config, the model's input shapes,
each dataset's statistics (with their normalization mode) and embodiment, the
tokenizer files and the parameters (EMA when the checkpoint has them), placed
on the devices given. Nothing of the training data is read.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from vla_jax import sharding
from vla_jax.data.embodiment import Embodiment
from vla_jax.data.statistics import DatasetStatistics
from vla_jax.errors import CheckpointError
from vla_jax.models.vla import VLA, build_model, dropless
from vla_jax.observation import IOShapes
from vla_jax.training import checkpoint, release_layout, state

RELEASE_FILE = release_layout.RELEASE_FILE
is_release = release_layout.is_release


@dataclasses.dataclass(frozen=True)
class PolicyBundle:
    """A trained policy's parts, with its parameters on ``mesh``."""

    config: ml_collections.ConfigDict
    io: IOShapes
    statistics: dict[str, DatasetStatistics]
    embodiments: dict[str, Embodiment]
    tokenizer_files: dict[str, bytes]
    params: dict
    graphdef: nnx.GraphDef
    mesh: jax.sharding.Mesh
    step: int
    source: str  # where it was read from, for messages
    parameters_from: str  # "ema" or "params"

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))


def inference_mesh(devices=None) -> jax.sharding.Mesh:
    """A mesh over ``devices`` (default: this process's first device) with every device on ``fsdp``."""
    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    return sharding.make_mesh({"fsdp": len(devices)}, devices)


def inference_rules(config: ml_collections.ConfigDict) -> tuple:
    """The run's logical rules, except that the batch is replicated (a request batch is small and uneven)."""
    return tuple((name, None if name == "batch" else axes) for name, axes in (tuple(r) for r in config.sharding.rules))


def abstract_params(config: ml_collections.ConfigDict, io: IOShapes, mesh) -> tuple[nnx.GraphDef, dict]:
    """The model's graph definition (dropless MoE dispatch) and its parameters' abstract values with shardings.

    Large parameters are FSDP-sharded over the mesh's devices as in training;
    the rest are replicated.
    """
    rules = inference_rules(config)

    def model_fn() -> VLA:
        return build_model(dropless(config.model), io, config.seed)

    with sharding.logical_rules(rules):
        graphdef, abstract_state, _ = nnx.split(nnx.eval_shape(model_fn), nnx.Param, ...)
        shardings = state._param_shardings(abstract_state, mesh, rules, config.sharding.fsdp_min_bytes)
    shapes = nnx.to_pure_dict(abstract_state)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return graphdef, abstract


def _statistics(saved: dict) -> dict[str, DatasetStatistics]:
    return {name: DatasetStatistics.from_json(stats) for name, stats in saved.items()}


def assemble(saved: dict, params_loader, mesh, source: str, step: int) -> PolicyBundle:
    """A bundle from the saved JSON parts and ``params_loader(abstract) -> (params, item)``."""
    config = ml_collections.ConfigDict(saved["config"])
    stats = _statistics(saved["dataset_statistics"])
    description = saved.get("policy")
    if description is None:
        raise CheckpointError(
            f"{source} has no 'policy' item (saved by vla_jax before inference existed); train one more step "
            "with this version to save a checkpoint that has it"
        )
    io = IOShapes.from_json(description["io"])
    embodiments = {name: Embodiment.from_json(e) for name, e in description["embodiments"].items()}
    graphdef, abstract = abstract_params(config, io, mesh)
    params, item = params_loader(abstract)
    return PolicyBundle(
        config, io, stats, embodiments, dict(saved.get("tokenizers") or {}), params, graphdef, mesh, step, source, item
    )


def load_checkpoint(workdir: str | pathlib.Path, step: int | None = None, devices=None) -> PolicyBundle:
    """A training workdir's checkpoint: the latest complete one, or ``step``. Never modifies the workdir."""
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{workdir} has no checkpoints/ directory (not a training workdir)")
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=1, save_interval_steps=1, read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {directory}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"no checkpoint of step {step} in {directory}; it has steps {steps}")
        saved = ckpt.saved_json(step, ["config", "dataset_statistics", "tokenizers", "policy"])
        if "tokenizers" not in saved:
            raise CheckpointError(f"checkpoint step {step} in {directory} holds no tokenizer files")
        mesh = inference_mesh(devices)
        return assemble(
            saved, lambda abstract: ckpt.restore_params(step, abstract), mesh, f"{directory}/{step}", int(step)
        )
    finally:
        ckpt.close()


def load(path: str | pathlib.Path, step: int | None = None, devices=None) -> PolicyBundle:
    """A release directory (it has ``release.json``) or a training workdir (it has ``checkpoints/``)."""
    path = pathlib.Path(path)
    if is_release(path):
        if step is not None:
            raise CheckpointError(f"{path} is a release (one step); --step applies to training workdirs only")
        from vla_jax.inference import release

        return release.load_release(path, devices=devices)
    if (path / "checkpoints").is_dir():
        return load_checkpoint(path, step, devices)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    raise CheckpointError(
        f"{path} is neither a release (no {RELEASE_FILE}) nor a training workdir (no checkpoints/); "
        "make a release with `vla-jax export WORKDIR --out DIR`"
    )


def json_text(data) -> str:
    return json.dumps(data, indent=1, sort_keys=True)
