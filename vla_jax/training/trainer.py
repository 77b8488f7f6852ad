"""The training loop: data, sharded state, jitted steps, validation, checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from vla_jax import config as config_lib
from vla_jax import sharding
from vla_jax.data import loader
from vla_jax.data.statistics import normalize
from vla_jax.errors import CheckpointError, ConfigError
from vla_jax.files import write_atomically
from vla_jax.models.vla import VLA, IOShapes, build_model, uses_fast, uses_flow
from vla_jax.tokenizers import build
from vla_jax.tokenizers.prompt import PromptTokenizer
from vla_jax.training import checkpoint, metrics, optimizer, state, step


def io_shapes(config: ml_collections.ConfigDict, mix: loader.DataMixture | None = None) -> IOShapes:
    """The model's inputs under ``config``.

    Action and state widths come from the mixture, or from ``data.action_dim``
    and ``data.state_dim`` when no mixture is given and both are set (then no
    dataset needs to be on this machine, as for ``vla-jax model summary``).
    """
    if mix is None:
        if config.data.action_dim and config.data.state_dim:
            mix = _Widths(config.data.action_dim, config.data.state_dim)
        else:
            mix = loader.open_mixture(config.data)
    return IOShapes(
        cameras=tuple(config.data.cameras),
        image_size=config.data.image_size,
        text_vocab_size=build.model_vocab_size(config.tokenizer),
        text_length=config.tokenizer.max_length,
        state_dim=mix.state_dim,
        action_dim=mix.action_dim,
        action_horizon=config.data.action_horizon,
    )


@dataclasses.dataclass(frozen=True)
class _Widths:
    action_dim: int
    state_dim: int


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


def mean_action_baseline(val: list[dict], mix: loader.DataMixture) -> float:
    """Mean absolute error of always predicting each dataset's mean action (normalized units)."""
    means = np.zeros((len(mix.sources), mix.action_dim), np.float32)
    for i, source in enumerate(mix.sources):
        stats = source.statistics
        mean = normalize(stats.action.mean, stats.action, stats.normalization, stats.action_mask)
        means[i, : len(mean)] = mean
    abs_sum = count = 0.0
    for batch in val:
        weight = batch["action_mask"][:, :, None] & batch["action_dim_mask"][:, None, :]
        predicted = means[batch["dataset_index"]][:, None, :]
        abs_sum += float((np.abs(batch["actions"] - predicted) * weight).sum())
        count += float(weight.sum())
    return abs_sum / max(count, 1.0)


def evaluate(eval_step, params, val_global: list[dict], prompt: PromptTokenizer | None = None) -> dict[str, float]:
    """Action error (normalized units) on the validation batches.

    With ``prompt`` (fast mode) the step's outputs are greedy decodes, turned
    into actions here; else they are error sums of the action expert's samples.

    A chunk that does not decode cleanly still counts, with whatever the
    tokenizer made of it (zeros where values are missing).
    """
    totals = {"abs_sum": 0.0, "sq_sum": 0.0, "count": 0.0, "valid": 0.0, "rows": 0.0}
    for batch in val_global:
        out = jax.device_get(eval_step(params, batch))
        if prompt is not None:
            predicted, valid = prompt.extract_actions(out.pop("generated"))
            diff = (predicted - out.pop("actions")) * out["weight"]
            out.update(abs_sum=np.abs(diff).sum(), sq_sum=np.square(diff).sum(), valid=valid.sum(), rows=len(valid))
            out["count"] = out.pop("weight").sum()
        totals = {k: totals[k] + float(out.get(k, 0.0)) for k in totals}
    count = max(totals["count"], 1.0)
    results = {"val_action_error": totals["abs_sum"] / count, "val_action_mse": totals["sq_sum"] / count}
    if prompt is not None:
        results["val_decode_valid_rate"] = totals["valid"] / max(totals["rows"], 1.0)
    return results


def make_eval_step(config, layout: state.StateLayout, batch_sharding, prompt: PromptTokenizer):
    """The validation step :func:`evaluate` takes: greedy ids in fast mode, else error sums of expert samples."""
    if uses_flow(config.model.mode):
        return step.make_eval_step(layout, batch_sharding, config.seed)
    decode_tokens = config.tokenizer.decode_tokens or config.tokenizer.max_length
    return step.make_generate_step(layout, batch_sharding, decode_tokens, prompt.eos)


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
    model_fn: Callable[[], VLA]
    layout: state.StateLayout
    batch_sharding: jax.sharding.NamedSharding


def setup(config: ml_collections.ConfigDict, devices=None) -> Setup:
    """Mesh, data mixture, optimizer and the train state's layout for ``config``."""
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    rules = tuple(tuple(r) for r in config.sharding.rules)
    data = loader.open_mixture(config.data)
    tx = optimizer.make_optimizer(config.optimizer, config.num_steps)
    model_fn = functools.partial(build_model, config.model, io_shapes(config, data), config.seed)
    with sharding.logical_rules(rules):
        layout = state.make_layout(model_fn, tx, mesh, rules, config.sharding.fsdp_min_bytes)
    check_replicated_fraction(config, mesh, layout.replicated_fraction)
    return Setup(mesh, rules, data, tx, model_fn, layout, sharding.batch_sharding(mesh))


def check_replicated_fraction(config: ml_collections.ConfigDict, mesh, fraction: float) -> None:
    """On an FSDP mesh, too much replicated parameter memory is a config error (wrong rules or fsdp_min_bytes)."""
    limit = config.sharding.max_replicated_fraction
    if mesh.shape["fsdp"] > 1 and fraction > limit:
        raise ConfigError(
            f"{fraction:.1%} of parameter bytes are replicated on the mesh {dict(mesh.shape)}, more than "
            f"config key 'sharding.max_replicated_fraction' = {limit:.1%}; check 'sharding.rules' and "
            "'sharding.fsdp_min_bytes' (`vla-jax model summary` shows the fraction)"
        )


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, stop_at_step: int | None = None) -> dict:
    """Trains to ``config.num_steps`` (or ``stop_at_step``), resuming from ``workdir``.

    Returns the last logged training metrics and validation results.
    """
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0

    run = setup(config)
    mesh, rules, data, layout = run.mesh, run.rules, run.data, run.layout
    tx, batch_sharding = run.optimizer, run.batch_sharding
    schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_steps)

    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints", max_to_keep=config.keep_checkpoints, save_interval_steps=config.checkpoint_every
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
            f"vla_jax: {jax.device_count()} devices, mesh {dict(mesh.shape)}, {num_params:,} params "
            f"({layout.replicated_fraction:.1%} of bytes replicated), {origin}, training to step {end_step}",
            flush=True,
        )

    prompt = prepare_prompt_tokenizer(config, data, workdir)
    prompt_actions = uses_fast(config.model.mode)  # flow mode's prompts have no action postfix
    with sharding.logical_rules(rules), jax.set_mesh(mesh):
        train_step = step.make_train_step(layout, tx, batch_sharding, config.seed)
        eval_step = make_eval_step(config, layout, batch_sharding, prompt)
        val_local = loader.val_batches(
            data, config.data, global_batch_size=config.batch_size, prompt=prompt, prompt_actions=prompt_actions
        )
        val_global = [loader.to_global_batch(b, batch_sharding) for b in val_local]
        baseline = mean_action_baseline(val_local, data)
        batches = loader.train_batches(
            data,
            config.data,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
            prompt=prompt,
            prompt_actions=prompt_actions,
        )
        writer = metrics.MetricsWriter(workdir)
        progress = metrics.ProgressLine(start_step, config.num_steps)
        save = functools.partial(
            ckpt.save,
            config=config.to_dict(),
            statistics=data.statistics_json(),
            data_seed=config.seed,
        )
        summary: dict = {"start_step": start_step}
        current = start_step
        while current < end_step:
            batch = loader.to_global_batch(next(batches), batch_sharding)
            train_state, step_metrics = train_step(train_state, batch)
            current += 1
            if current % config.log_every == 0 or current == end_step:
                logged = {k: metrics.to_builtin(v) for k, v in jax.device_get(step_metrics).items()}
                logged["learning_rate"] = float(schedule(current - 1))  # the rate this step used
                logged["steps_per_s"] = progress.update(current, {"loss": logged["loss"]})
                writer.write(current, logged)
                summary.update(logged)
            if current % config.eval_every == 0 or current == end_step:
                results = evaluate(
                    eval_step, train_state["params"], val_global, None if uses_flow(config.model.mode) else prompt
                )
                results["val_mean_baseline_error"] = baseline
                results["val_error_ratio"] = results["val_action_error"] / max(baseline, 1e-12)
                writer.write(current, results)
                summary.update(results)
                if is_main:
                    validity = results.get("val_decode_valid_rate")
                    print(
                        f"step {current}: val_action_error {results['val_action_error']:.4f} "
                        f"(mean-action baseline {baseline:.4f}, ratio {results['val_error_ratio']:.3f})"
                        + ("" if validity is None else f", decode valid {validity:.1%}"),
                        flush=True,
                    )
            save(train_state, step=current, force=current == end_step)
        ckpt.wait()
        ckpt.close()
    summary["step"] = current
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
