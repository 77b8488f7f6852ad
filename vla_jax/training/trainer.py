"""The training loop: data, sharded state, jitted steps, validation, checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import signal
import threading
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from vla_jax import config as config_lib
from vla_jax import sharding
from vla_jax.data import loader
from vla_jax.data.statistics import normalize, unnormalize
from vla_jax.errors import CheckpointError, ConfigError
from vla_jax.files import write_atomically
from vla_jax.models.vla import VLA, IOShapes, build_model, uses_fast, uses_flow
from vla_jax.tokenizers import build
from vla_jax.tokenizers.prompt import PromptTokenizer
from vla_jax.training import checkpoint, metrics, optimizer, state, step
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
        text_vocab_size=build.model_vocab_size(config.tokenizer),
        text_length=config.tokenizer.max_length,
        state_dim=mix.state_dim if mix else config.data.state_dim,
        action_dim=mix.action_dim if mix else config.data.action_dim,
        action_horizon=config.data.action_horizon,
    )


# Config fields that fix the shapes of the train state: a checkpoint made with
# other values cannot be resumed.
STATE_DEFINING_KEYS = (
    "model",
    "data.mixture",
    "data.action_dim",
    "data.state_dim",
    "data.history",
    "data.depth_cameras",
    "data.cameras",
    "data.image_size",
    "data.action_horizon",
    "tokenizer.action",
    "tokenizer.action_vocab_size",
    "tokenizer.fast_scale",
    "tokenizer.text_vocab_size",
    "tokenizer.vocab_size",
    "tokenizer.reserved_tail",
    "tokenizer.max_length",
    "tokenizer.state_bins",
)
TOKENIZER_DIR = "tokenizers"


def check_resumable(saved: dict, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Raises CheckpointError naming each state-defining field that differs from the checkpoint's."""
    current = json.loads(config_lib.to_json(config))
    saved = json.loads(json.dumps(saved, default=str))
    differences = []
    for key in STATE_DEFINING_KEYS:
        a, b = saved, current
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        for sub, (old, new) in _flat_diff(key, a, b):
            differences.append(f"{sub} is {old!r} there, {new!r} here")
    if differences:
        raise CheckpointError(
            f"workdir {workdir} holds checkpoints of a different model ({'; '.join(differences)}); "
            "use a new --workdir, or the config it was trained with"
        )


def _flat_diff(prefix: str, old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _flat_diff(f"{prefix}.{key}", old.get(key), new.get(key))
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


def make_eval_steps(config, layout: state.StateLayout, batch_sharding, prompt: PromptTokenizer) -> dict:
    """The validation steps :func:`evaluate` takes, by the prefix of their result keys.

    Flow modes are judged by the action expert's samples (``val_*``); fast
    mode by greedy decoding (``val_*``). In ``fast+flow`` greedy decoding is
    measured too, under ``val_fast_*``.
    """
    decode_tokens = config.tokenizer.decode_tokens or config.tokenizer.max_length
    steps = {}
    if uses_flow(config.model.mode):
        steps["val"] = step.make_sample_step(layout, batch_sharding, config.seed)
    if uses_fast(config.model.mode):
        key = "val_fast" if steps else "val"
        steps[key] = step.make_generate_step(layout, batch_sharding, decode_tokens, prompt.eos)
    return steps


def prepare_prompt_tokenizer(
    config: ml_collections.ConfigDict, mix: loader.DataMixture, workdir: pathlib.Path
) -> PromptTokenizer:
    """The run's prompt tokenizer: from ``workdir/tokenizers`` when resuming, else made and saved there.

    Process 0 fits (or loads) the tokenizers and writes them; the other processes
    read them from the (shared) workdir, so every host uses the same ones
    whatever data shard it reads.
    """
    tok, directory = config.tokenizer, workdir / TOKENIZER_DIR
    shape = {
        "horizon": config.data.action_horizon,
        "action_dim": mix.action_dim,
        "normalization": config.data.normalization,
    }
    if jax.process_index() == 0 and not (directory / build.ACTION_FILE).exists():
        sample = functools.cache(
            lambda: loader.action_chunks(mix, config.data, split="train", max_chunks=tok.fit_chunks, seed=config.seed)
        )
        if tok.action_file:
            actions = build.load_action_file(tok.action_file, **shape)
        else:
            actions = build.fit_action_tokenizer(tok, sample()["actions"], config.data.normalization)
        text = build.text_tokenizer(tok, lambda: sample()["instruction"])
        files = build.files_to_bytes(text, actions)
        for name in (build.TEXT_FILE, build.ACTION_FILE):  # the action file last: it marks the set complete
            write_atomically(directory / name, files[name])
    multihost_utils.sync_global_devices("vla_jax tokenizers written")
    text, actions = build.from_files(directory, **shape)
    return build.prompt_tokenizer(tok, text, actions)


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


def setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
    """Mesh, data mixture, optimizer and the train state's layout for ``config``."""
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    data = loader.open_mixture(config.data)
    tx = optimizer.make_optimizer(config.optimizer, config.num_steps)
    io = io_shapes(config, data)
    model_fn = functools.partial(build_model, config.model, io, config.seed)
    with sharding.logical_rules(rules):
        layout = state.make_layout(model_fn, tx, mesh, rules, config.sharding.fsdp_min_bytes, ema=config.ema_decay > 0)
    check_replicated_fraction(config, mesh, layout.replicated_fraction)
    return Setup(mesh, rules, data, tx, io, model_fn, layout, sharding.batch_sharding(mesh))


def check_replicated_fraction(config: ml_collections.ConfigDict, mesh, fraction: float) -> None:
    """On an FSDP mesh, too much replicated parameter memory is a config error (wrong rules or fsdp_min_bytes)."""
    limit = config.sharding.max_replicated_fraction
    if mesh.shape["fsdp"] > 1 and fraction > limit:
        raise ConfigError(
            f"{fraction:.1%} of parameter bytes are replicated on the mesh {dict(mesh.shape)}, more than "
            f"config key 'sharding.max_replicated_fraction' = {limit:.1%}; check 'sharding.rules' and "
            "'sharding.fsdp_min_bytes' (`vla-jax model summary` shows the fraction)"
        )


def summarize_config(config: ml_collections.ConfigDict, mesh_shape: dict[str, int] | None = None) -> dict:
    """`vla-jax model summary` of ``config`` on its mesh (or ``mesh_shape``), from shapes alone.

    The mesh need not exist here (see :func:`sharding.abstract_mesh`). No
    dataset is read when ``data.action_dim`` and ``data.state_dim`` are set.
    """
    return summary_lib.summarize(
        config.model,
        io_shapes(config),
        sharding.abstract_mesh(mesh_shape or dict(config.mesh)),
        rules=tuple(tuple(r) for r in config.sharding.rules),
        fsdp_min_bytes=config.sharding.fsdp_min_bytes,
        optimizer=optimizer.make_optimizer(config.optimizer, config.num_steps),
    )


def dry_run(config: ml_collections.ConfigDict) -> dict:
    """:func:`summarize_config` plus EMA, gradients and examples per device; checks the replicated fraction."""
    result = summarize_config(config)
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


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, stop_at_step: int | None = None) -> dict:
    """Trains to ``config.num_steps`` (or ``stop_at_step``), resuming from ``workdir``.

    On SIGTERM (preemption) it saves at the current step and returns. Returns
    the last logged training metrics and validation results.
    """
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0

    run = setup(config)
    mesh, rules, data, layout = run.mesh, run.rules, run.data, run.layout
    tx, batch_sharding = run.optimizer, run.batch_sharding
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_steps)

    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        max_to_keep=config.keep_checkpoints,
        save_interval_steps=config.checkpoint_every,
        keep_period=config.keep_period,
    )
    restored = ckpt.restore_latest(
        layout.abstract, check_config=functools.partial(check_resumable, config=config, workdir=workdir)
    )
    if is_main:
        (workdir / "config.json").write_text(config_lib.to_json(config))
    train_state = state.init_state(run.model_fn, tx, layout) if restored is None else restored["state"]
    start_step = int(jax.device_get(train_state["step"]))
    end_step = config.num_steps if stop_at_step is None else min(stop_at_step, config.num_steps)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layout.abstract["params"]))
    if is_main:
        origin = f"resumed from step {start_step}" if restored is not None else "fresh start"
        print(
            f"vla_jax: {jax.process_count()} processes, {jax.device_count()} devices, mesh {dict(mesh.shape)}, "
            f"{num_params:,} params ({layout.replicated_fraction:.1%} of bytes replicated), {origin}, "
            f"training to step {end_step}",
            flush=True,
        )

    prompt = prepare_prompt_tokenizer(config, data, workdir)
    tokenizer_files = {p.name: p.read_bytes() for p in sorted((workdir / TOKENIZER_DIR).iterdir())}
    prompt_actions = uses_fast(config.model.mode)  # flow mode's prompts have no action postfix
    io = run.io
    flops_per_example = 3 * sum(summary_lib.forward_flops(config.model, io).values())
    tokens_per_example = summary_lib.backbone_tokens(config.model, io)
    peak = device_peak_flops(config)
    with sharding.logical_rules(rules), jax.set_mesh(mesh):
        train_step = step.make_train_step(
            layout,
            tx,
            batch_sharding,
            config.seed,
            grad_accum_steps=config.grad_accum_steps,
            ema_decay=config.ema_decay,
            num_datasets=len(data.sources),
        )
        eval_steps = make_eval_steps(config, layout, batch_sharding, prompt)
        loss_step = step.make_loss_step(layout, batch_sharding, config.seed)
        val_local = loader.val_batches(
            data, config.data, global_batch_size=config.batch_size, prompt=prompt, prompt_actions=prompt_actions
        )
        val_global = [loader.to_global_batch(b, batch_sharding) for b in val_local]
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
        writer = metrics.MetricsWriter(
            workdir, tensorboard=config.tensorboard, wandb_project=config.wandb_project, config=config.to_dict()
        )
        progress = metrics.ProgressLine(start_step, config.num_steps)
        preemption = PreemptionFlag(ckpt)

        def save(at_step: int, force: bool) -> bool:
            return ckpt.save(
                train_state,
                step=at_step,
                config=config.to_dict(),
                statistics=data.statistics_json(),
                data_seed=config.seed,
                tokenizers=tokenizer_files,
                frames_consumed=at_step * config.batch_size,
                force=force,
            )

        summary: dict = {"start_step": start_step, "preempted": False}
        current, data_wait = start_step, 0.0
        try:
            while current < end_step:
                waited = time.perf_counter()
                batch = next(batches)
                data_wait += time.perf_counter() - waited
                train_state, step_metrics = train_step(train_state, batch)
                current += 1
                if current % config.log_every == 0 or current == end_step:
                    logged = {k: metrics.to_builtin(v) for k, v in jax.device_get(step_metrics).items()}
                    logged = _named_vectors(logged, data.names)
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
                    writer.write(current, logged)
                    summary.update(logged)
                if current % config.eval_every == 0 or current == end_step:
                    eval_params = train_state.get("ema", train_state["params"])
                    results = {}
                    for prefix, eval_step in eval_steps.items():
                        found = evaluate(
                            eval_step, eval_params, val_global, data, prompt, loss_step if prefix == "val" else None
                        )
                        results.update({prefix + k[len("val") :]: v for k, v in found.items()})
                    results.pop("val_fast_mean_baseline_error", None)  # the same batches: the same baseline
                    writer.write(current, results)
                    summary.update(results)
                    if is_main:
                        print(f"step {current}: {format_validation(results)}", flush=True)
                if preemption.reached(current):
                    save(current, force=True)
                    summary["preempted"] = True
                    if is_main:
                        print(f"vla_jax: preempted (SIGTERM); saved step {current}", flush=True)
                    break
                save(current, force=current == end_step)
        finally:
            batches.close()
            preemption.restore()
            ckpt.wait()
            ckpt.close()
            writer.close()
    summary["step"] = current
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
