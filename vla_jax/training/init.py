"""Starting a run from another run's parameters (``config.init``): what a fine-tune starts from.

``init.source`` is a training workdir (its latest checkpoint, or ``init.step``)
or a release directory (``vla-jax export``). Every parameter of the new model
ends in exactly one of these states, listed in ``WORKDIR/init_report.json``
and summarized on the console:

- ``loaded``: its path matches ``init.load``, not ``init.reinit``, and the
  source holds it with the same shape; its values are the source's, bit for bit.
- ``resized``: a router the embodiment rule below changed (rows that still fit
  kept, a new action space's rows copied from ``init.action_space_from``).
- ``reinitialized``: ``init.reinit`` matched it, or the embodiment rule did.
- ``not_loaded``: ``init.load`` does not match it (fresh values).
- ``new``: the source has no parameter of that path (a part its model lacked).

A parameter the source holds with another shape is an error naming it, unless
``init.reinit`` covers it. Source parameters the new model lacks are listed as
``unused``. Nothing is dropped without a line in the report.

The embodiment rule. When the action dim differs from the source's, the action
expert's action input and output projections are re-initialized and each
action-space router keeps its rows for the action spaces and the dims both
have (the rest start fresh). When the new data brings an action space the
source never trained on, ``init.action_space_from`` names a trained one whose
router rows it copies, so its samples go to the same AS expert; left empty,
the new space keeps its fresh (untrained) row.

The source's text tokenizer always comes along (token embeddings mean nothing
without it), and its action tokenizer too when it fits the new chunks
(horizon, action dim, normalization); otherwise a new one is fit on the new
data. The source's dataset statistics for datasets not in the new mixture are
kept in the new checkpoints, beside the new ones.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import tempfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vla_jax.data.specs import ACTION_SPACE_IDS
from vla_jax.errors import CheckpointError, ConfigError
from vla_jax.observation import IOShapes
from vla_jax.tokenizers import build
from vla_jax.training import checkpoint, release_layout
from vla_jax.training.optimizer import param_path

REPORT_FILE = "init_report.json"
ACTION_PROJECTIONS = re.compile(r"^action_expert/(action_in|action_out)/")
AS_ROUTER = re.compile(r"^action_expert/.*/router$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A checkpoint or release to start from: where its parameters are and what came with them."""

    path: pathlib.Path
    step: int
    params_dir: pathlib.Path  # an Orbax directory of the parameter tree (StandardCheckpointHandler)
    item: str  # "ema", "params" or the release's parameters_from
    config: dict
    statistics: dict
    policy: dict
    tokenizers: dict[str, bytes]

    @property
    def io(self) -> IOShapes:
        return IOShapes.from_json(self.policy["io"])


def open_source(path: str | pathlib.Path, step: int = 0) -> Source:
    """The source of ``init.source``: a release (verified) or a workdir's checkpoint; CheckpointError otherwise."""
    root = pathlib.Path(path).expanduser().absolute()
    if release_layout.is_release(root):
        if step:
            raise ConfigError(f"config key 'init.step' is {step}; init.source {root} is a release (one step): use 0")
        summary = release_layout.verify(root)
        read = lambda name: json.loads((root / name).read_text())  # noqa: E731
        return Source(
            root, int(summary["step"]), root / release_layout.PARAMS_DIR, summary["parameters_from"], read("config.json"),
            read("dataset_statistics.json"), read("policy.json"),
            {p.name: p.read_bytes() for p in sorted((root / release_layout.TOKENIZER_DIR).iterdir())},
        )  # fmt: skip
    directory = root / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(
            f"init.source {root} is neither a release (no {release_layout.RELEASE_FILE}) nor a training workdir "
            "(no checkpoints/)"
        )
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=1, save_interval_steps=1, read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(f"init.source {root}: no complete checkpoint in {directory}")
        if step and step not in steps:
            raise CheckpointError(f"init.source {root}: no checkpoint of init.step {step}; it has steps {steps}")
        step = step or steps[-1]
        names = ["config", "dataset_statistics", "tokenizers", "policy"]
        saved = ckpt.saved_json(step, names)
        item = "ema" if "ema" in ckpt.item_names(step) else "params"
    finally:
        ckpt.close()
    missing = [name for name in names if name not in saved]
    if missing:
        raise CheckpointError(f"init.source {root} step {step} lacks the items {missing} (saved by an older vla_jax)")
    return Source(
        root, step, directory / str(step) / item, item, saved["config"], saved["dataset_statistics"],
        saved["policy"], saved["tokenizers"],
    )  # fmt: skip


def source_tree(source: Source):
    """The source's parameter tree of Orbax array metadata (shapes and dtypes; nothing is read)."""
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(source.params_dir)
    except Exception as error:  # noqa: BLE001 - any unreadable directory
        raise CheckpointError(
            f"init.source {source.path}: unreadable parameters in {source.params_dir} ({error})"
        ) from None
    return getattr(metadata, "tree", metadata)


def _flat(tree) -> dict[str, object]:
    return {param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def plan(
    init: ml_collections.ConfigDict,
    target: dict[str, tuple[tuple[int, ...], str]],
    source: dict[str, tuple[tuple[int, ...], str]],
    *,
    action_dim_changed: bool,
) -> dict[str, dict]:
    """What happens to each target parameter (see the module docstring); raises on an uncovered shape mismatch."""
    load, reinit = re.compile(init.load), re.compile(init.reinit) if init.reinit else None
    decisions, mismatched = {}, []
    for path, (shape, _) in target.items():
        there = source.get(path)
        if reinit is not None and reinit.search(path):
            status, why = "reinitialized", "init.reinit"
        elif not load.search(path):
            status, why = "not_loaded", "init.load does not match"
        elif there is None:
            status, why = "new", "not in the source"
        elif action_dim_changed and ACTION_PROJECTIONS.search(path):
            status, why = "reinitialized", "the action dim changed"
        elif action_dim_changed and AS_ROUTER.search(path):
            status, why = "resized", "the action dim changed: rows of the shared action spaces and dims kept"
        elif tuple(there[0]) != tuple(shape):
            mismatched.append(f"{path} is {tuple(there[0])} in the source, {tuple(shape)} here")
            continue
        else:
            status, why = "loaded", ""
        decisions[path] = {"status": status, "shape": list(shape), "why": why}
    if mismatched:
        shown = "; ".join(mismatched[:4]) + (f"; and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
        raise ConfigError(
            f"init.source: parameters differ in shape ({shown}); add them to config key 'init.reinit' to start them "
            "fresh, or use a config whose model matches the source's"
        )
    return decisions


def _router_rows(fresh: np.ndarray, old: np.ndarray, copies: dict[int, int]) -> np.ndarray:
    """A router ``[spaces + dims, experts]``: the old rows that fit, then each new space copying a trained one."""
    rows = fresh.copy()
    shared = min(fresh.shape[0], old.shape[0])  # every space row (they come first), and the dims both widths have
    rows[:shared] = old[:shared]
    for new, trained in copies.items():
        rows[new] = rows[trained]
    return rows


def initialize(
    init: ml_collections.ConfigDict, source: Source, fresh_params: dict, io: IOShapes, new_action_spaces: list[str]
) -> tuple[dict, dict]:
    """``fresh_params`` with ``source``'s values put in as ``config.init`` says; and the report."""
    tree = source_tree(source)
    there = {name: (shape, dtype) for name, shape, dtype in checkpoint.array_leaves(tree)}
    target_flat = _flat(fresh_params)
    target = {p: (tuple(a.shape), str(np.dtype(a.dtype))) for p, a in target_flat.items()}
    old_io = source.io
    action_dim_changed = old_io.action_dim != io.action_dim
    decisions = plan(init, target, there, action_dim_changed=action_dim_changed)
    trained_spaces = sorted({e["action_space"] for e in source.policy.get("embodiments", {}).values()})
    copies: dict[int, int] = {}
    if init.action_space_from:
        if init.action_space_from not in trained_spaces:
            raise ConfigError(
                f"config key 'init.action_space_from' is {init.action_space_from!r}; the source trained on the "
                f"action spaces {trained_spaces}"
            )
        copies = {
            ACTION_SPACE_IDS[s]: ACTION_SPACE_IDS[init.action_space_from]
            for s in new_action_spaces
            if s not in trained_spaces
        }
    # Read what is used, each array straight into the sharding its parameter has in the new run.
    wanted = [p for p, d in decisions.items() if d["status"] in ("loaded", "resized")]
    if copies:  # routers of a new action space are rewritten even where they are otherwise loaded as they are
        for path in decisions:
            if AS_ROUTER.search(path) and decisions[path]["status"] == "loaded":
                decisions[path] = dict(decisions[path], status="resized", why="init.action_space_from")
    abstract = _source_abstract(tree, target_flat, wanted)
    values = _flat(ocp.StandardCheckpointer().restore(source.params_dir, abstract)) if wanted else {}
    merged = {}
    for path, fresh in target_flat.items():
        status = decisions[path]["status"]
        if status == "loaded":
            merged[path] = values[path]
        elif status == "resized":
            rows = _router_rows(
                np.asarray(jax.device_get(fresh)), np.asarray(jax.device_get(values[path])), copies
            )  # fmt: skip
            merged[path] = jax.device_put(rows.astype(fresh.dtype), fresh.sharding)
        else:
            merged[path] = fresh
    params = jax.tree_util.tree_map_with_path(lambda path, _: merged[param_path(path)], fresh_params)
    unused = sorted(set(there) - set(target))
    counts = {}
    for d in decisions.values():
        counts[d["status"]] = counts.get(d["status"], 0) + 1
    report = {
        "source": str(source.path),
        "step": source.step,
        "parameters_from": source.item,
        "counts": dict(sorted(counts.items()), unused=len(unused)),
        "action_dim": {"source": old_io.action_dim, "new": io.action_dim},
        "action_spaces": {
            "source": trained_spaces,
            "new": sorted(new_action_spaces),
            "routed_like": {s: init.action_space_from for s in new_action_spaces if s not in trained_spaces}
            if copies
            else {},
        },
        "parameters": decisions,
        "unused": unused,
    }
    return params, report


def _source_abstract(tree, target_flat: dict, wanted: list[str]) -> dict:
    """The source's parameter tree as abstract arrays: wanted ones in their new sharding, the rest replicated."""
    wanted_set = set(wanted)
    any_target = next(iter(target_flat.values()))
    replicated = jax.sharding.NamedSharding(any_target.sharding.mesh, jax.sharding.PartitionSpec())

    def leaf(path, meta):
        name = param_path(path)
        if name in wanted_set and tuple(meta.shape) == tuple(target_flat[name].shape):
            return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=target_flat[name].sharding)
        return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=replicated)

    return jax.tree_util.tree_map_with_path(leaf, tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def tokenizer_files(source: Source, config: ml_collections.ConfigDict, action_dim: int, with_actions: bool) -> dict:
    """The source's tokenizer files the new run starts with: its text model, and its action tokenizer if it fits."""
    files = {}
    if build.TEXT_FILE in source.tokenizers and not config.tokenizer.text_model:
        files[build.TEXT_FILE] = source.tokenizers[build.TEXT_FILE]
    action = source.tokenizers.get(build.ACTION_FILE)
    if with_actions and action is not None and not config.tokenizer.action_file:
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / build.ACTION_FILE
            path.write_bytes(action)
            try:
                build.load_action_file(
                    path, horizon=config.data.action_horizon, action_dim=action_dim,
                    normalization=config.data.normalization,
                )  # fmt: skip
            except (ConfigError, ValueError):
                return files  # made for other chunks: a new one is fit on the new data
        files[build.ACTION_FILE] = action
    return files


def format_report(report: dict) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in report["counts"].items())
    line = f"vla_jax: init from {report['source']} (step {report['step']}, {report['parameters_from']}): {counts}"
    routed = report["action_spaces"]["routed_like"]
    if routed:
        line += "; new action spaces routed like " + ", ".join(f"{a} -> {b}" for a, b in routed.items())
    return line + f"; details in {REPORT_FILE}"
