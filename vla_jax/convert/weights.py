"""What every importer shares: the target model's shapes, the checks, and the weights directory it writes.

The directory is a release (:mod:`vla_jax.training.release_layout`) with step
0 and ``parameters_from`` set to the source kind, plus
``conversion_report.json``. It is written under a temporary name and renamed
when complete, so a failed conversion never leaves a directory that looks
like weights.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from vla_jax.data.config import data_config
from vla_jax.errors import ConvertError
from vla_jax.models.vla import build_model
from vla_jax.observation import IOShapes
from vla_jax.tokenizers.config import tokenizer_config
from vla_jax.training import release_layout
from vla_jax.training.defaults import run_config
from vla_jax.training.optimizer import param_path

REPORT_FILE = "conversion_report.json"


@dataclasses.dataclass
class Mapped:
    """An importer's result: our parameters by path, and what it did with each source tensor."""

    params: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # our path -> value
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # source tensor -> paths it filled
    unused: dict[str, str] = dataclasses.field(default_factory=dict)  # source tensor -> why it is not used
    rules: dict[str, str] = dataclasses.field(default_factory=dict)  # our path -> the rule that initialized it
    zeros: dict[str, str] = dataclasses.field(default_factory=dict)  # our path -> why it starts at zero

    def put(self, path: str, source: str, value: np.ndarray, rule: str = "") -> None:
        self.params[path] = value
        self.sources.setdefault(source, []).append(path)
        if rule:
            self.rules[path] = rule

    def update(self, other: Mapped) -> None:
        self.params.update(other.params)
        for name, paths in other.sources.items():
            self.sources.setdefault(name, []).extend(paths)
        self.unused.update(other.unused)
        self.rules.update(other.rules)
        self.zeros.update(other.zeros)

    def source_report(self, names) -> dict[str, str]:
        """Every source tensor in ``names``: the parameters it filled, or why it is unused."""
        report = {}
        for name in sorted(names):
            paths = self.sources.get(name)
            if paths:
                report[name] = ", ".join(paths) if len(paths) <= 3 else f"{paths[0]} ... {paths[-1]} ({len(paths)})"
            else:
                report[name] = "unused: " + self.unused.get(name, "no parameter of the target model takes it")
        return report


def take(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Source tensor ``name`` as float32; ConvertError naming it when it is missing or has another shape."""
    if name not in tensors:
        raise ConvertError(f"source tensor {name!r} is missing (a truncated or different checkpoint?)")
    value = np.asarray(tensors[name])
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ConvertError(f"source tensor {name!r} has shape {tuple(value.shape)}; expected {tuple(shape)}")
    return value.astype(np.float32)


def target_shapes(model: ml_collections.ConfigDict, io: IOShapes) -> dict[str, tuple[int, ...]]:
    """Every parameter of the model ``model`` / ``io`` builds, by path, with its shape (nothing allocated)."""
    abstract = nnx.eval_shape(lambda: build_model(model, io, 0))
    state = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    return {param_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def assemble(mapped: Mapped, model: ml_collections.ConfigDict, io: IOShapes, seed: int = 0) -> tuple[dict, dict]:
    """The full parameter tree: the mapped values, fresh values for the rest; and the report's parameter part.

    ConvertError when a mapped value has no parameter or another shape than the model's.
    """
    shapes = target_shapes(model, io)
    for path in list(mapped.params) + list(mapped.zeros):
        if path not in shapes:
            raise ConvertError(f"conversion produced {path!r}, which the target model does not have")
    for path, value in mapped.params.items():
        if tuple(value.shape) != shapes[path]:
            raise ConvertError(
                f"parameter {path!r} converts to shape {tuple(value.shape)}; the target model has {shapes[path]}"
            )
    with nnx.use_eager_sharding(False):
        fresh = nnx.to_pure_dict(nnx.state(build_model(model, io, seed), nnx.Param))

    def value(path, x):
        name = param_path(path)
        if name in mapped.zeros:
            return np.zeros(x.shape, np.float32)
        return np.asarray(mapped.params.get(name, x), np.float32)

    params = jax.tree_util.tree_map_with_path(value, fresh)
    status = {}
    for path in shapes:
        if path in mapped.zeros:
            status[path] = "zeros: " + mapped.zeros[path]
        elif path in mapped.params:
            status[path] = mapped.rules.get(path, "converted")
        else:
            status[path] = "new (fresh initialization)"
    return params, status


def converted_config(model: ml_collections.ConfigDict, io: IOShapes) -> ml_collections.ConfigDict:
    """A complete run config around ``model`` whose data and tokenizer shapes are ``io``'s (for config.json)."""
    config = run_config()
    config.model = model
    config.data = data_config(mixture="")
    config.data.cameras = tuple(io.cameras)
    config.data.image_size = io.image_size
    config.data.action_dim = io.action_dim
    config.data.state_dim = io.state_dim
    config.data.action_horizon = io.action_horizon
    config.tokenizer = tokenizer_config()
    config.tokenizer.max_length = io.text_length
    config.tokenizer.vocab_size = io.text_vocab_size
    return config


def write(
    out: str | pathlib.Path,
    *,
    kind: str,
    source: str,
    config: ml_collections.ConfigDict,
    io: IOShapes,
    params: dict,
    report: dict,
    statistics: dict | None = None,
    tokenizers: dict[str, bytes] | None = None,
) -> dict:
    """Writes the weights directory ``out`` (see the module docstring); returns its release.json."""
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    with release_layout.staging(out) as tmp:
        release_layout.write_parts(
            tmp, config=config.to_dict(), statistics=statistics or {},
            policy={"io": io.to_json(), "embodiments": {}}, tokenizers=tokenizers or {}, params=params,
        )  # fmt: skip
        (tmp / REPORT_FILE).write_text(release_layout.json_text(dict(report, num_params=num_params)))
        summary = {
            "format": release_layout.FORMAT,
            "format_version": release_layout.FORMAT_VERSION,
            "step": 0,
            "parameters_from": f"converted:{kind}",
            "source": source,
            "mode": config.model.mode,
            "num_params": num_params,
            "cameras": list(io.cameras),
            "image_size": io.image_size,
            "action_horizon": io.action_horizon,
            "datasets": {},
        }
        release_layout.seal(tmp, summary)
    return summary
