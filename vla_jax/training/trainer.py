"""The training loop: data, sharded state, jitted steps, validation, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from vla_jax import config as config_lib
from vla_jax import sharding, validation
from vla_jax.data import embodiment, loader
from vla_jax.data.specs import ACTION_SPACES
from vla_jax.data.statistics import normalize, unnormalize
from vla_jax.errors import CheckpointError, ConfigError, DataError, VlaJaxError
from vla_jax.files import write_atomically
from vla_jax.models import lora as lora_lib
from vla_jax.models.vla import VLA, build_model, dropless, uses_fast, uses_flow
from vla_jax.observation import IOShapes
from vla_jax.tokenizers import build
from vla_jax.tokenizers.prompt import PromptTokenizer
from vla_jax.tokenizers.text import SentencePieceTokenizer
from vla_jax.training import checkpoint, metrics, optimizer, state, step
from vla_jax.training import init as init_lib
from vla_jax.training import summary as summary_lib


def io_shapes(config: ml_collections.ConfigDict, mix: loader.DataMixture | None = None) -> IOShapes:
    """The model's inputs under ``config``.

    Action and state widths come from the mixture, or from ``data.action_dim``
    and ``data.state_dim`` when no mixture is given and both are set (then no
    dataset needs to be on this machine, as for ``vla-jax model summary``).
    """
    if mix is None and not (config.data.action_dim and config.data.state_dim):
        mix = loader.open_mixture(config.data)
    return IOShapes(
        cameras=tuple(config.data.cameras),
        image_size=config.data.image_size,
        text_vocab_size=build.model_vocab_size(config.tokenizer, with_actions=uses_fast(config.model.mode)),
        text_length=config.tokenizer.max_length,
        state_dim=mix.state_dim if mix else config.data.state_dim,
        action_dim=mix.action_dim if mix else config.data.action_dim,
        action_horizon=config.data.action_horizon,
        depth_cameras=tuple(config.data.depth_cameras),
        goal_images=bool(config.data.goal_relabeling),
        num_action_spaces=len(ACTION_SPACES),
    )


TOKENIZER_DIR = "tokenizers"
FAILED_FILE = "FAILED"

# Closed-loop evaluation at validation time, given by the caller (``vla-jax train`` passes
# ``evaluation.closed_loop.TrainingEvaluator`` for ``config.closed_loop``): (checkpoint items of the policy,
# its parameters, the mesh they live on, step) -> (metrics, lines for the console; indented ones continue the last).
ClosedLoopHook = Callable[[dict, dict, jax.sharding.Mesh, int], tuple[dict, str]]


def check_resumable(
    step: int, ckpt: checkpoint.Checkpointer, *, layout: state.StateLayout, config: ml_collections.ConfigDict
) -> None:
    """Raises CheckpointError when ``step``'s saved arrays cannot be restored into this run's train state.

    What decides is what cannot be restored: the saved shapes and dtypes against
    the ones this config builds. The difference of the two configs is given as the explanation.
    """
    problems = []
    for item, saved in ckpt.saved_arrays(step).items():
        if item in layout.abstract:
            expected = checkpoint.array_leaves(layout.abstract[item])
            compare = _ordered_differences if item == "opt_state" else _named_differences
            problems += compare(item, saved, expected)
    if problems:
        diff = config_diff(ckpt.saved_config(step), config)
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CheckpointError(
            f"checkpoint step {step} in {ckpt.directory} cannot be restored into this config's train state "
            f"({shown}); the configs differ in {diff or 'nothing (the code changed)'}; "
            "use a new --workdir, or the config it was trained with"
        )


def _named_differences(item: str, saved: list, expected: list) -> list[str]:
    """Arrays of a dict tree (params, EMA) that are missing, new or of another shape or dtype, by path."""
    there, here = {name: rest for name, *rest in saved}, {name: rest for name, *rest in expected}
    problems = [f"{item} {name} is there but not here" for name in there if name not in here]
    problems += [f"{item} {name} is new here" for name in here if name not in there]
    for name in there.keys() & here.keys():
        if there[name] != here[name]:
            (a_shape, a_dtype), (b_shape, b_dtype) = there[name], here[name]
            problems.append(f"{item} {name} is {a_shape} {a_dtype} there, {b_shape} {b_dtype} here")
    return sorted(problems)


def _ordered_differences(item: str, saved: list, expected: list) -> list[str]:
    """Optimizer state (optax's containers are saved as dicts of their positions): the arrays' shapes and dtypes."""
    if len(saved) != len(expected):
        return [f"{item} holds {len(saved)} arrays there, {len(expected)} here"]
    there, here = sorted(tuple(rest) for _, *rest in saved), sorted(tuple(rest) for _, *rest in expected)
    for (a_shape, a_dtype), (b_shape, b_dtype) in zip(there, here, strict=True):
        if (a_shape, a_dtype) != (b_shape, b_dtype):
            return [f"{item} has a {a_shape} {a_dtype} array there, {b_shape} {b_dtype} here"]
    return []


def config_diff(saved: dict, config: ml_collections.ConfigDict, limit: int = 8) -> str:
    """``key: old -> new`` for each leaf field that differs between a saved config and ``config``."""
    current = json.loads(config_lib.to_json(config))
    saved = json.loads(json.dumps(saved, default=str))
    differences = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in _flat_diff("", saved, current)]
    return ", ".join(differences[:limit]) + (
        f", and {len(differences) - limit} more" if len(differences) > limit else ""
    )


def _flat_diff(prefix: str, old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _flat_diff(f"{prefix}.{key}" if prefix else key, old.get(key), new.get(key))
    elif old != new:
        yield prefix, (old, new)


def dataset_mean_actions(mix: loader.DataMixture) -> np.ndarray:
    """``[datasets, action_dim]``: each dataset's mean action in normalized units (the baseline predictor)."""
    means = np.zeros((len(mix.sources), mix.action_dim), np.float32)
    for i, source in enumerate(mix.sources):
        stats = source.statistics
        mean = normalize(stats.action.mean, stats.action, stats.normalization, stats.action_mask)
        means[i, : len(mean)] = mean
    return means


def evaluate(
    eval_step, params, val_global: list[dict], mix: loader.DataMixture, prompt: PromptTokenizer, loss_step=None
) -> dict[str, float]:
    """Validation: action error in normalized units (also as a ratio to the mean-action baseline), in
    action units per dataset; loss; decode validity.

    The step's outputs are greedy decodes (fast mode; turned into actions by
    ``prompt``, and a chunk that does not decode cleanly still counts with
    whatever the tokenizer made of it) or the action expert's samples.
    """
    sums = {"abs": 0.0, "sq": 0.0, "count": 0.0, "valid": 0.0, "rows": 0.0, "baseline": 0.0}
    means = dataset_mean_actions(mix)
    units = np.zeros((len(mix.sources), 2))  # per dataset: absolute error sum in action units, count
    losses = []
    decoded = False
    for batch in val_global:
        out = jax.device_get(eval_step(params, batch))
        if "generated" in out:
            decoded = True
            predicted, valid = prompt.extract_actions(out["generated"])
            sums["valid"] += float(valid.sum())
            sums["rows"] += len(valid)
        else:
            predicted = out["predicted"]
        actions, weight = out["actions"], out["weight"]
        diff = (predicted - actions) * weight
        sums["abs"] += float(np.abs(diff).sum())
        sums["sq"] += float(np.square(diff).sum())
        sums["count"] += float(weight.sum())
        sums["baseline"] += float((np.abs(actions - means[out["dataset_index"]][:, None, :]) * weight).sum())
        for i, source in enumerate(mix.sources):
            rows = out["dataset_index"] == i
            if rows.any():
                units[i] += _error_in_action_units(source.statistics, predicted[rows], actions[rows], weight[rows])
        if loss_step is not None:
            losses.append(float(loss_step(params, batch)))
    count = max(sums["count"], 1.0)
    results = {
        "val_action_error": sums["abs"] / count,
        "val_action_mse": sums["sq"] / count,
        "val_mean_baseline_error": sums["baseline"] / count,  # always predicting each dataset's mean action
    }
    results["val_error_ratio"] = results["val_action_error"] / max(results["val_mean_baseline_error"], 1e-12)
    for source, (error, n) in zip(mix.sources, units):
        if n:
            results[f"val_action_error_units/{source.spec.name}"] = float(error / n)
    if losses:
        results["val_loss"] = float(np.mean(losses))
    if decoded:
        results["val_decode_valid_rate"] = sums["valid"] / max(sums["rows"], 1.0)
    return results


def _error_in_action_units(stats, predicted: np.ndarray, actions: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``[absolute error sum, count]`` over one dataset's own action dims, in its action units."""
    dims = len(stats.action.mean)

    def to_units(x):
        return unnormalize(x[..., :dims], stats.action, stats.normalization, stats.action_mask)

    weight = weight[..., :dims]
    return np.array([(np.abs(to_units(predicted) - to_units(actions)) * weight).sum(), weight.sum()])


def format_validation(results: dict) -> str:
    """One console line of validation results."""
    line = (
        f"val_action_error {results['val_action_error']:.4f} (mean-action baseline "
        f"{results['val_mean_baseline_error']:.4f}, ratio {results['val_error_ratio']:.3f})"
    )
    if "val_decode_valid_rate" in results:
        line += f", decode valid {results['val_decode_valid_rate']:.1%}"
    if "val_fast_error_ratio" in results:
        line += (
            f"; FAST greedy: ratio {results['val_fast_error_ratio']:.3f}, "
            f"decode valid {results['val_fast_decode_valid_rate']:.1%}"
        )
    return line


def make_eval_steps(
    config, layout: state.StateLayout, batch_sharding, prompt: PromptTokenizer, eval_graphdef: nnx.GraphDef
) -> dict:
    """The validation steps :func:`evaluate` takes, by the prefix of their result keys.

    Flow modes are judged by the action expert's samples (``val_*``); fast
    mode by greedy decoding (``val_*``). In ``fast+flow`` greedy decoding is
    measured too, under ``val_fast_*``. Predictions run ``eval_graphdef``
    (``Setup.eval_graphdef``: dropless MoE dispatch, as a policy runs), so each
    row's prediction depends on that row alone, whatever the batch and mesh.
    """
    layout = dataclasses.replace(layout, graphdef=eval_graphdef)
    decode_tokens = config.tokenizer.decode_tokens or config.tokenizer.max_length
    steps = {}
    if uses_flow(config.model.mode):
        steps["val"] = step.make_sample_step(layout, batch_sharding, config.seed)
    if uses_fast(config.model.mode):
        key = "val_fast" if steps else "val"
        steps[key] = step.make_generate_step(layout, batch_sharding, decode_tokens, prompt.eos)
    return steps


def prepare_prompt_tokenizer(
    config: ml_collections.ConfigDict,
    mix: loader.DataMixture,
    workdir: pathlib.Path,
    start_files: dict[str, bytes] | None = None,
) -> PromptTokenizer:
    """The run's prompt tokenizer: from ``workdir/tokenizers`` when resuming, else made and saved there.

    ``start_files`` (a fine-tune's source tokenizers, see ``training.init``)
    are written first; what they leave missing is fit.

    Process 0 fits (or loads) the tokenizers and writes them; the other processes
    read them from the (shared) workdir, so every host uses the same ones
    whatever data shard it reads. Flow mode needs no action tokenizer, so none
    is fit. A fresh run checks that prompts fit ``tokenizer.max_length`` on the
    fit data (see :func:`check_prompt_length`).
    """
    tok, directory = config.tokenizer, workdir / TOKENIZER_DIR
    with_actions = uses_fast(config.model.mode)
    shape = {
        "horizon": config.data.action_horizon,
        "action_dim": mix.action_dim,
        "normalization": config.data.normalization,
    }
    last_file = build.ACTION_FILE if with_actions else build.TEXT_FILE  # written last: it marks the set complete
    if jax.process_index() == 0 and not (directory / last_file).exists():
        for name in sorted(start_files or {}, key=lambda name: name == last_file):  # a fine-tune's source's files
            write_atomically(directory / name, start_files[name])
    if jax.process_index() == 0 and not (directory / last_file).exists():
        sample = loader.action_chunks(mix, config.data, split="train", max_chunks=tok.fit_chunks, seed=config.seed)
        actions = None
        if with_actions and tok.action_file:
            actions = build.load_action_file(tok.action_file, **shape)
        elif with_actions:
            actions = build.fit_action_tokenizer(tok, sample["actions"], config.data.normalization)
        if (directory / build.TEXT_FILE).exists():  # the source's text model
            text = SentencePieceTokenizer.from_file(directory / build.TEXT_FILE)
        else:
            text = build.text_tokenizer(tok, lambda: sample["instruction"])
        check_prompt_length(build.prompt_tokenizer(tok, text, actions), sample, mix.state_dim)
        files = build.files_to_bytes(text, actions)
        for name in sorted(files, key=lambda name: name == last_file):
            write_atomically(directory / name, files[name])
    multihost_utils.sync_global_devices("vla_jax tokenizers written")
    text, actions = build.from_files(directory, **shape, with_actions=with_actions)
    return build.prompt_tokenizer(tok, text, actions)


MAX_TRUNCATED_FRACTION = 0.05  # more prompts than this cut by max_length is a config error


def check_prompt_length(prompt: PromptTokenizer, sample: dict, state_dim: int, examples: int = 2000) -> float:
    """The fraction of fit examples whose prompt is longer than ``tokenizer.max_length`` (printed).

    Measured on up to ``examples`` of the tokenizer's fit data, with every state
    dim written (the widest prompt). Above ``MAX_TRUNCATED_FRACTION`` it is a
    ConfigError naming the length that would hold 99% of them.
    """
    count = min(examples, len(sample["instruction"]))
    states = np.zeros((count, state_dim), np.float32)
    actions = sample["actions"][:count] if prompt.actions is not None else None
    prefixes = prompt.prefixes(sample["instruction"][:count], states, np.ones_like(states, bool))
    postfixes = prompt.actions.encode(actions) if actions is not None else [[] for _ in prefixes]
    lengths = np.array(
        [
            len(a) + (len(prompt.postfix(b)) if actions is not None else 0)
            for a, b in zip(prefixes, postfixes, strict=True)
        ]
    )
    fraction = float((lengths > prompt.max_length).mean())
    if fraction > MAX_TRUNCATED_FRACTION:
        raise ConfigError(
            f"config key 'tokenizer.max_length' is {prompt.max_length}; {fraction:.0%} of {count} prompts of the fit "
            f"data are longer (longest {lengths.max()} ids); expected at least {int(np.ceil(np.quantile(lengths, 0.99)))}"
        )
    if jax.process_index() == 0:
        print(
            f"vla_jax: prompts: {fraction:.1%} of {count} fit examples longer than tokenizer.max_length="
            f"{prompt.max_length} (longest {lengths.max()} ids)",
            flush=True,
        )
    return fraction


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a config resolves to before any array is allocated."""

    mesh: jax.sharding.Mesh
    rules: tuple
    data: loader.DataMixture
    optimizer: optax.GradientTransformation
    io: IOShapes
    model_fn: Callable[[], VLA]
    layout: state.StateLayout
    batch_sharding: jax.sharding.NamedSharding
    eval_graphdef: nnx.GraphDef  # the model with dropless MoE dispatch, for predictions (same parameters)


def setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
    """Mesh, data mixture, optimizer and the train state's layout for ``config``."""
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    data = loader.open_mixture(config.data)
    tx = optimizer.make_optimizer(config.optimizer, config.num_steps, lora_lib.frozen_base_pattern(config.model))
    io = io_shapes(config, data)
    model_fn = functools.partial(build_model, config.model, io, config.seed)
    with sharding.logical_rules(rules):
        layout = state.make_layout(model_fn, tx, mesh, rules, config.sharding.fsdp_min_bytes, ema=config.ema_decay > 0)
    optimizer.check_freeze_matches(config.optimizer, layout.abstract["params"])
    check_replicated_fraction(config, mesh, layout.replicated_fraction)
    eval_graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(dropless(config.model), io, config.seed)))
    return Setup(mesh, rules, data, tx, io, model_fn, layout, sharding.batch_sharding(mesh), eval_graphdef)


def check_replicated_fraction(config: ml_collections.ConfigDict, mesh, fraction: float) -> None:
    """On an FSDP mesh, too much replicated parameter memory is a config error (wrong rules or fsdp_min_bytes)."""
    limit = config.sharding.max_replicated_fraction
    if mesh.shape["fsdp"] > 1 and fraction > limit:
        raise ConfigError(
            f"{fraction:.1%} of parameter bytes are replicated on the mesh {dict(mesh.shape)}, more than "
            f"config key 'sharding.max_replicated_fraction' = {limit:.1%}; check 'sharding.rules' and "
            "'sharding.fsdp_min_bytes' (`vla-jax model summary` shows the fraction)"
        )


def summarize_config(
    config: ml_collections.ConfigDict, mesh_shape: dict[str, int] | None = None, io: IOShapes | None = None
) -> dict:
    """`vla-jax model summary` of ``config`` on its mesh (or ``mesh_shape``), from shapes alone.

    The mesh need not exist here (see :func:`sharding.abstract_mesh`). No
    dataset is read when ``data.action_dim`` and ``data.state_dim`` are set,
    nor when ``io`` is given.
    """
    return summary_lib.summarize(
        config.model,
        io or io_shapes(config),
        sharding.abstract_mesh(mesh_shape or dict(config.mesh)),
        rules=tuple(tuple(r) for r in config.sharding.rules),
        fsdp_min_bytes=config.sharding.fsdp_min_bytes,
        optimizer=optimizer.make_optimizer(
            config.optimizer, config.num_steps, lora_lib.frozen_base_pattern(config.model)
        ),
    )


def dry_run(config: ml_collections.ConfigDict) -> dict:
    """:func:`summarize_config` plus EMA, gradients and examples per device; checks the replicated fraction."""
    io = io_shapes(config)  # opens the mixture once for both uses
    result = summarize_config(config, io=io)
    abstract_model = nnx.eval_shape(lambda: build_model(config.model, io, config.seed))
    abstract_params = nnx.to_pure_dict(nnx.state(abstract_model, nnx.Param))
    optimizer.check_freeze_matches(config.optimizer, abstract_params)
    frozen = optimizer.frozen_pattern(config.optimizer, lora_lib.frozen_base_pattern(config.model))
    labels = optimizer.frozen_labels(abstract_params, frozen)
    sizes = jax.tree.map(lambda p: int(np.prod(p.shape)), abstract_params)
    result["params_trainable"] = sum(
        n for n, label in zip(jax.tree.leaves(sizes), jax.tree.leaves(labels)) if label == "trained"
    )
    mesh = sharding.abstract_mesh(dict(config.mesh))
    ema = result["param_bytes_per_device"] if config.ema_decay > 0 else 0
    result["ema_bytes_per_device"] = ema
    # Parameters, optimizer state and EMA live across steps; gradients take one more copy of the params.
    result["state_bytes_per_device"] = result["bytes_per_device"] + ema
    result["peak_bytes_estimate_per_device"] = result["state_bytes_per_device"] + result["param_bytes_per_device"]
    result["examples_per_device"] = config.batch_size / mesh.size / max(config.grad_accum_steps, 1)
    check_replicated_fraction(config, mesh, result["replicated_fraction"])
    return result


def format_dry_run(result: dict) -> str:
    gib = 2**30
    return (
        summary_lib.format_summary(result)
        + f"\ntrainable: {result['params_trainable']:,} of {result['params_total']:,} params "
        f"({result['params_trainable'] / max(result['params_total'], 1):.1%})"
        + f"\nper device: train state {result['state_bytes_per_device'] / gib:.2f} GiB "
        f"(EMA {result['ema_bytes_per_device'] / gib:.2f}), with gradients about "
        f"{result['peak_bytes_estimate_per_device'] / gib:.2f} GiB before activations; "
        f"{result['examples_per_device']:g} examples per device per micro-batch"
    )


# Dense bf16 matmul peak per device, for MFU (vendor figures); matched by substring of device_kind.
PEAK_FLOPS = (
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def device_peak_flops(config: ml_collections.ConfigDict) -> float:
    """The configured peak, else the table's for this device kind; 0 when unknown (then no MFU is logged)."""
    if config.device_peak_flops:
        return float(config.device_peak_flops)
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_FLOPS if name in kind), 0.0)


class PreemptionFlag:
    """Set by SIGTERM (single process) or by JAX's preemption sync point (multi-host, via Orbax)."""

    def __init__(self, ckpt: checkpoint.Checkpointer):
        self.ckpt, self.received = ckpt, False
        self.multi_host = jax.process_count() > 1
        self.previous = None
        if not self.multi_host and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def reached(self, step: int) -> bool:
        if self.multi_host:
            return bool(self.ckpt.manager.reached_preemption(step))
        return self.received

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _named_vectors(logged: dict, names: tuple[str, ...]) -> dict:
    """``loss_by_dataset`` (a vector) becomes ``loss/<dataset>`` entries; NaN (absent) entries are dropped."""
    by_dataset = logged.pop("loss_by_dataset", None)
    if by_dataset is not None:
        for name, value in zip(names, np.atleast_1d(by_dataset)):
            if np.isfinite(value):
                logged[f"loss/{name}"] = float(value)
    return logged


@dataclasses.dataclass
class Run:
    """A started run: what :func:`start` built and :func:`loop` uses. Its resources close with the ExitStack."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    setup: Setup
    ckpt: checkpoint.Checkpointer
    state: dict
    start_step: int
    prompt: PromptTokenizer
    tokenizer_files: dict[str, bytes]
    train_step: Callable
    eval_steps: dict
    loss_step: Callable
    val_global: list
    batches: Iterator
    writer: metrics.MetricsWriter
    preemption: PreemptionFlag
    last_saved: int | None = None
    closed_loop: ClosedLoopHook | None = None
    kept_statistics: dict = dataclasses.field(default_factory=dict)  # a fine-tune's source's, of other datasets


def start(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    resources: contextlib.ExitStack,
    *,
    end_step: int,
    closed_loop: ClosedLoopHook | None = None,
) -> Run:
    """Setup: mesh, data, state (restored or new), tokenizers, jitted steps, data streams, writers.

    Every resource is registered on ``resources`` as soon as it exists, so an
    error at any point releases what was built before it.
    """
    run = setup(config)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        max_to_keep=config.keep_checkpoints,
        save_interval_steps=config.checkpoint_every,
        keep_period=config.keep_period,
    )
    resources.callback(ckpt.close)
    resources.callback(ckpt.wait)  # runs before close: a pending save finishes first
    check = functools.partial(check_resumable, layout=run.layout, config=config)
    restored = ckpt.restore_latest(run.layout.abstract, check_config=check)
    if is_main:
        (workdir / "config.json").write_text(config_lib.to_json(config))
    layout, tx = run.layout, run.optimizer
    start_files, kept_statistics = {}, {}
    if restored is not None:
        train_state = restored["state"]
        new_names = {s.spec.name for s in run.data.sources}
        kept_statistics = {k: v for k, v in restored["dataset_statistics"].items() if k not in new_names}
    else:
        train_state = state.init_state(run.model_fn, tx, layout)
        if config.init.source:
            train_state, start_files, kept_statistics = initialize_from_source(config, run, workdir, train_state)
    start_step = int(jax.device_get(train_state["step"]))
    if is_main:
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layout.abstract["params"]))
        origin = f"resumed from step {start_step}" if restored is not None else "fresh start"
        if restored is None and config.init.source:
            origin = f"fresh start from the parameters of {config.init.source}"
        print(
            f"vla_jax: {jax.process_count()} processes, {jax.device_count()} devices, mesh {dict(run.mesh.shape)}, "
            f"{num_params:,} params ({layout.replicated_fraction:.1%} of bytes replicated), {origin}, "
            f"training to step {end_step}",
            flush=True,
        )
    prompt = prepare_prompt_tokenizer(config, run.data, workdir, start_files)
    tokenizer_files = {p.name: p.read_bytes() for p in sorted((workdir / TOKENIZER_DIR).iterdir())}
    prompt_actions = uses_fast(config.model.mode)  # flow mode's prompts have no action postfix
    data, batch_sharding = run.data, run.batch_sharding
    with sharding.logical_rules(run.rules), jax.set_mesh(run.mesh):
        train_step = step.make_train_step(
            layout,
            tx,
            batch_sharding,
            config.seed,
            grad_accum_steps=config.grad_accum_steps,
            ema_decay=config.ema_decay,
            num_datasets=len(data.sources),
        )
        eval_steps = make_eval_steps(config, layout, batch_sharding, prompt, run.eval_graphdef)
        loss_step = step.make_loss_step(layout, batch_sharding, config.seed)
        val_local = loader.val_batches(
            data, config.data, global_batch_size=config.batch_size, prompt=prompt, prompt_actions=prompt_actions
        )
        val_global = [loader.to_global_batch(b, batch_sharding) for b in val_local]
        if not val_global:  # every validation figure would be 0 / 0: refuse rather than log a silent zero
            names = [source.spec.name for source in data.sources]
            raise DataError(
                f"the validation splits of {names} give no full batch of {config.batch_size} chunks; hold out more "
                "episodes (the spec's val_split / val_fraction) or lower config key 'batch_size'"
            )
    batches = loader.prefetch_global_batches(
        loader.train_batches(
            data,
            config.data,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
            prompt=prompt,
            prompt_actions=prompt_actions,
        ),
        batch_sharding,
    )
    resources.callback(batches.close)
    writer = metrics.MetricsWriter(
        workdir, tensorboard=config.tensorboard, wandb_project=config.wandb_project, config=config.to_dict()
    )
    resources.callback(writer.close)
    preemption = PreemptionFlag(ckpt)
    resources.callback(preemption.restore)
    return Run(
        config, workdir, run, ckpt, train_state, start_step, prompt, tokenizer_files, train_step, eval_steps,
        loss_step, val_global, batches, writer, preemption, last_saved=start_step if restored is not None else None,
        closed_loop=closed_loop, kept_statistics=kept_statistics,
    )  # fmt: skip


def initialize_from_source(
    config: ml_collections.ConfigDict, run: Setup, workdir: pathlib.Path, train_state: dict
) -> tuple[dict, dict[str, bytes], dict]:
    """A fresh train state with ``config.init.source``'s parameters put in (``training.init``).

    Returns the state, the source's tokenizer files the run starts with and the
    source's statistics of datasets not in this mixture (kept in checkpoints).
    The report goes to the console and ``workdir/init_report.json``.
    """
    found = embodiment.embodiments(run.data, config.data)
    by_width = sorted(found.values(), key=lambda e: e.action_dim)  # a space of two datasets: the wider one's dims
    action_spaces = {e.action_space: e.action_dim for e in by_width}
    source = init_lib.open_source(config.init.source, config.init.step)
    blocks = init_lib.as_blocks(config.model) if uses_flow(config.model.mode) else ()
    params, report = init_lib.initialize(
        config.init, source, train_state["params"], run.io, action_spaces, blocks, config.model
    )  # fmt: skip
    start_files = init_lib.tokenizer_files(source, config, run.io.action_dim, uses_fast(config.model.mode))
    report["tokenizers"] = {
        name: "source" if name in start_files else "new" for name in (build.TEXT_FILE, build.ACTION_FILE)
    }
    new_names = {s.spec.name for s in run.data.sources}
    kept = {k: v for k, v in source.statistics.items() if k not in new_names}
    report["statistics"] = {"new": sorted(new_names), "kept_from_source": sorted(kept)}
    train_state = dict(train_state, params=params)
    if "ema" in train_state:
        train_state["ema"] = jax.tree.map(jnp.copy, params)
    if jax.process_index() == 0:
        write_atomically(workdir / init_lib.REPORT_FILE, (json.dumps(report, indent=1) + "\n").encode())
        print(init_lib.format_report(report), flush=True)
    return train_state, start_files, kept


def policy_items(run: Run) -> dict:
    """What a policy is made of besides its parameters, as a checkpoint stores it (``inference.bundle``)."""
    return {
        "config": run.config.to_dict(),
        "dataset_statistics": {**run.kept_statistics, **run.setup.data.statistics_json()},
        "tokenizers": run.tokenizer_files,
        "policy": policy_description(run.config, run.setup),
    }


def policy_description(config: ml_collections.ConfigDict, run: Setup) -> dict:
    """The checkpoint's ``policy`` item: the model's input shapes and each dataset's embodiment (for inference)."""
    found = embodiment.embodiments(run.data, config.data)
    return {"io": run.io.to_json(), "embodiments": {name: e.to_json() for name, e in found.items()}}


class NonFiniteError(VlaJaxError):
    """Training produced a non-finite loss, gradient or update."""


def _save(run: Run, at_step: int, force: bool) -> None:
    items = policy_items(run)
    saved = run.ckpt.save(
        run.state,
        step=at_step,
        config=items["config"],
        statistics=items["dataset_statistics"],
        data_seed=run.config.seed,
        tokenizers=items["tokenizers"],
        policy=items["policy"],
        frames_consumed=at_step * run.config.batch_size,
        force=force,
    )
    if saved:
        run.last_saved = at_step


def _check_finite(run: Run, current: int, step_metrics: dict, skipped: int) -> int:
    """Stops the run at a non-finite step (the step did not update the state), or logs a skip.

    Returns the number of skipped steps so far.
    """
    finite = bool(jax.device_get(step_metrics["finite"]))
    if finite:
        return skipped
    values = {k: metrics.to_builtin(v) for k, v in jax.device_get(step_metrics).items() if k in NONFINITE_TERMS}
    bad = [k for k, v in values.items() if not np.all(np.isfinite(v))]
    terms = ", ".join(f"{k} {values[k]}" for k in bad)
    last = f"step {run.last_saved}" if run.last_saved is not None else "none"
    allowed = run.config.max_nonfinite_skips
    if skipped < allowed:
        if jax.process_index() == 0:
            print(
                f"vla_jax: WARNING: step {current} skipped: non-finite {terms} (skip {skipped + 1} of {allowed} "
                "allowed by max_nonfinite_skips); parameters unchanged",
                flush=True,
            )
        return skipped + 1
    raise NonFiniteError(
        f"training stopped at step {current}: non-finite {terms}; the parameters of that step were not kept and "
        f"no checkpoint of them was written; the last good checkpoint is {last}"
        + (f" ({skipped} earlier non-finite steps were skipped)" if skipped else "")
    )


# Step metrics named in the error line when a step is not finite.
NONFINITE_TERMS = ("loss", "token_ce", "flow_mse", "moe_aux_loss", "grad_norm", "update_norm")


def loop(run: Run, end_step: int) -> dict:
    """Steps from ``run.start_step`` to ``end_step``: logging, validation, checkpoints, preemption.

    Each step's finiteness flag is read once the next step is dispatched (so
    the host never waits for the step it just started), and always before
    anything is logged or saved. A non-finite step has not changed the state.
    """
    config, data = run.config, run.setup.data
    is_main = jax.process_index() == 0
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_steps)
    io = run.setup.io
    flops_per_example = 3 * sum(summary_lib.forward_flops(config.model, io).values())
    tokens_per_example = summary_lib.backbone_tokens(config.model, io)
    peak = device_peak_flops(config)
    progress = metrics.ProgressLine(run.start_step, config.num_steps)
    summary: dict = {"start_step": run.start_step, "preempted": False}
    current, data_wait, skipped = run.start_step, 0.0, 0
    unchecked = None  # (step, metrics) of the previous step, checked once the next one is dispatched
    with sharding.logical_rules(run.setup.rules), jax.set_mesh(run.setup.mesh):
        while current < end_step:
            waited = time.perf_counter()
            batch = next(run.batches)
            data_wait += time.perf_counter() - waited
            run.state, step_metrics = run.train_step(run.state, batch)
            current += 1
            if unchecked is not None:  # reading the previous step's flag does not wait for this one
                skipped = _check_finite(run, *unchecked, skipped)
            unchecked = (current, step_metrics)
            preempted = run.preemption.reached(current)
            saving = current % config.checkpoint_every == 0 or current == end_step or preempted
            if saving or current % config.log_every == 0 or current % config.eval_every == 0:
                skipped, unchecked = _check_finite(run, *unchecked, skipped), None  # never log or save unchecked
            if current % config.log_every == 0 or current == end_step:
                logged = {k: metrics.to_builtin(v) for k, v in jax.device_get(step_metrics).items()}
                logged = _named_vectors(logged, data.names)
                logged.pop("finite")
                logged["nonfinite_skipped"] = skipped
                logged["learning_rate"] = float(schedule(current - 1))  # the rate this step used
                steps_per_s = progress.update(current, {"loss": logged["loss"]})
                examples_per_s = steps_per_s * config.batch_size
                logged.update(
                    steps_per_s=steps_per_s,
                    examples_per_s=examples_per_s,
                    tokens_per_s=examples_per_s * tokens_per_example,
                    data_wait_fraction=min(data_wait * steps_per_s / config.log_every, 1.0),
                )
                if peak:
                    logged["mfu"] = examples_per_s * flops_per_example / (peak * jax.device_count())
                data_wait = 0.0
                run.writer.write(current, logged)
                summary.update(logged)
            if current % config.eval_every == 0 or current == end_step:
                results = validate(run)
                lines = [f"step {current}: {format_validation(results)}"]
                if run.closed_loop is not None and not preempted:  # a preempted run saves first
                    params = run.state.get("ema", run.state["params"])
                    try:
                        with jax.set_mesh(None):  # the policy builds its model and places its calls itself
                            found, line = run.closed_loop(policy_items(run), params, run.setup.mesh, current)
                    except VlaJaxError as error:  # a simulator that fails does not end the training run
                        found, line = {}, f"WARNING: closed-loop evaluation failed, training goes on: {error}"
                    results.update(found)
                    lines += [text if text.startswith(" ") else f"step {current}: {text}" for text in line.splitlines()]
                run.writer.write(current, results)
                summary.update(results)
                if is_main:
                    print("\n".join(lines), flush=True)
            if preempted:
                _save(run, current, force=True)
                summary["preempted"] = True
                if is_main:
                    print(f"vla_jax: preempted (SIGTERM); saved step {current}", flush=True)
                break
            _save(run, current, force=current == end_step)
    summary["step"] = current
    return summary


def validate(run: Run) -> dict:
    """Every validation step of the run on its validation batches (EMA parameters when kept)."""
    eval_params = run.state.get("ema", run.state["params"])
    results = {}
    with sharding.logical_rules(run.setup.rules), jax.set_mesh(run.setup.mesh):
        for prefix, eval_step in run.eval_steps.items():
            loss_step = run.loss_step if prefix == "val" else None
            found = evaluate(eval_step, eval_params, run.val_global, run.setup.data, run.prompt, loss_step)
            results.update({prefix + k[len("val") :]: v for k, v in found.items()})
    results.pop("val_fast_mean_baseline_error", None)  # the same batches: the same baseline
    return results


def _begin(workdir: pathlib.Path) -> None:
    """A workdir marked FAILED by an earlier run starts over cleanly: the mark is reported and removed."""
    marker = workdir / FAILED_FILE
    if jax.process_index() == 0 and marker.exists():
        reason = marker.read_text().strip()
        print(f"vla_jax: {workdir} was marked failed ({reason}); starting again", flush=True)
        marker.unlink()


def _mark_failed(workdir: pathlib.Path, error: BaseException) -> None:
    """Writes ``workdir/FAILED`` with the error line, so nobody takes the workdir for a good run."""
    if jax.process_index() != 0 or not workdir.is_dir():
        return
    line = str(error) if isinstance(error, VlaJaxError) else f"{type(error).__name__}: {error}"
    write_atomically(workdir / FAILED_FILE, (line.splitlines() or [type(error).__name__])[0].encode() + b"\n")


def write_initial_checkpoint(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
    """A step-0 checkpoint of freshly initialized parameters, with tokenizers, statistics and the policy item.

    For trying a serving stack (or measuring latency) before anything is trained.
    """
    workdir = pathlib.Path(workdir).absolute()
    with contextlib.ExitStack() as resources:
        run = start(config, workdir, resources, end_step=0)
        _save(run, 0, force=True)


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    stop_at_step: int | None = None,
    validate_first: bool = True,
    closed_loop: ClosedLoopHook | None = None,
) -> dict:
    """Trains to ``config.num_steps`` (or ``stop_at_step``), resuming from ``workdir``.

    The config is validated before anything is created (``validate_first``;
    tests turn it off to reach the runtime guards). Setup, loop and teardown:
    every resource is released on every exit path, and a run that fails marks
    its workdir ``FAILED`` with the error line. On SIGTERM (preemption) it saves
    at the current step and returns. ``closed_loop`` runs at every validation
    (see ``ClosedLoopHook``). Returns the last logged training metrics and
    validation results.
    """
    workdir = pathlib.Path(workdir).absolute()
    if validate_first:
        for warning in validation.validate_config(config, device_count=jax.device_count()):
            print(f"vla-jax: warning: {warning}", file=sys.stderr, flush=True)
    end_step = config.num_steps if stop_at_step is None else min(stop_at_step, config.num_steps)
    if workdir.is_dir():
        _begin(workdir)
    try:
        with contextlib.ExitStack() as resources:
            run = start(config, workdir, resources, end_step=end_step, closed_loop=closed_loop)
            summary = loop(run, end_step)
    except (Exception, KeyboardInterrupt) as error:
        _mark_failed(workdir, error)
        raise
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
