"""Starting a run from another run's parameters (``config.init``): what a fine-tune starts from.

``init.source`` is a training workdir (its latest checkpoint, or ``init.step``)
or a release directory (``vla-jax export``). Every parameter of the new model
ends in exactly one of these states, listed in ``WORKDIR/init_report.json``
and summarized on the console:

- ``loaded``: its path matches ``init.load``, not ``init.reinit``, and the
  source holds it with the same shape; its values are the source's, bit for bit.
- ``resized``: an AS-MoE router or expert stack the embodiment rule below
  changed (what still fits kept, the rest copied or fresh).
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
source never trained on, ``init.action_space_from`` names a trained one it
starts like. With ``init.action_space_expert="share"`` (the default) the new
space's router rows copy the trained space's, so its samples go to the same
AS expert. With ``"copy"`` each new space gets an AS expert of its own
(``model.expert.moe.as_experts`` = the source's plus one per new space), a
copy of the expert the trained space routes to; the router sends the new space
to the copy with the trained space's weight and keeps every other space off
it (a logit margin of ``SUPPRESS``), so the source's spaces route as before.
Left empty, a new space keeps its fresh (untrained) router row. Only the AS
blocks' routers see the action space; HB routers load as they are.

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
from vla_jax.models import moe
from vla_jax.observation import IOShapes
from vla_jax.tokenizers import build
from vla_jax.training import checkpoint, release_layout
from vla_jax.training.optimizer import param_path

REPORT_FILE = "init_report.json"
ACTION_PROJECTIONS = re.compile(r"^action_expert/(action_in|action_out)/")
AS_BLOCK = "action_expert/decoder/layers/{}/ffn/"
SUPPRESS = 30.0  # router logit margin that keeps a copied AS expert to its own action space (e^-30 of the weight)


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


def as_blocks(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Path prefixes of the action expert's AS-MoE blocks, by the model's plan (their routers see the action space)."""
    plan_ = tuple(model.expert.plan) or moe.default_plan(model.backbone.depth)
    return tuple(AS_BLOCK.format(i) for i, kind in enumerate(plan_) if kind == "as")


def plan(
    init: ml_collections.ConfigDict,
    target: dict[str, tuple[tuple[int, ...], str]],
    source: dict[str, tuple[tuple[int, ...], str]],
    *,
    action_dim_changed: bool,
    as_blocks: tuple[str, ...] = (),
    new_experts: int = 0,
) -> dict[str, dict]:
    """What happens to each target parameter (see the module docstring); raises on an uncovered shape mismatch.

    ``as_blocks``: the AS-MoE blocks' path prefixes (:func:`as_blocks`); ``new_experts``: how many AS experts
    each of them gains (``init.action_space_expert="copy"``).
    """
    load, reinit = re.compile(init.load), re.compile(init.reinit) if init.reinit else None
    as_routers = {block + "router" for block in as_blocks}
    decisions, mismatched = {}, []
    for path, (shape, _) in target.items():
        there = source.get(path)
        as_experts = path.startswith(tuple(block + "experts/" for block in as_blocks))
        if reinit is not None and reinit.search(path):
            status, why = "reinitialized", "init.reinit"
        elif not load.search(path):
            status, why = "not_loaded", "init.load does not match"
        elif there is None:
            status, why = "new", "not in the source"
        elif action_dim_changed and ACTION_PROJECTIONS.search(path):
            status, why = "reinitialized", "the action dim changed"
        elif path in as_routers and (action_dim_changed or new_experts):
            status, why = "resized", "rows of the shared action spaces and dims kept, columns of the kept experts"
        elif as_experts and new_experts and tuple(shape) == (there[0][0] + new_experts, *there[0][1:]):
            status, why = "resized", f"{there[0][0]} experts kept, {new_experts} added (init.action_space_expert)"
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
    """An AS router ``[spaces + dims, experts]``: the old rows and columns that fit, then each new space copying a
    trained one's row."""
    rows = fresh.copy()
    shared = min(fresh.shape[0], old.shape[0])  # every space row (they come first), and the dims both widths have
    rows[:shared, : old.shape[1]] = old[:shared]
    for new, trained in copies.items():
        rows[new] = rows[trained]
    return rows


def _add_space_experts(
    rows: np.ndarray, num_spaces: int, new_spaces: dict[int, tuple[int, int]], first_new: int
) -> dict[int, int]:
    """Gives each new action space an AS expert of its own in ``rows`` (an AS router, changed in place).

    ``new_spaces`` maps a new space's id to ``(trained space id, its action dim)``; its row is already a copy of
    the trained space's (:func:`_router_rows`). Expert ``first_new + k`` takes over, for the k-th new space, the
    role of the expert the trained space routes to (with the new space's action-dim mask): the same logit for
    that space, the same dim rows; the expert it replaces, and the new one for every other space, sit
    ``SUPPRESS`` below, so other spaces route as before. Returns ``{new expert: the expert it copies}``.
    """
    copied = {}
    dims = rows[num_spaces:]
    for k, (space, (trained, action_dim)) in enumerate(sorted(new_spaces.items())):
        column = first_new + k
        logits = rows[trained, :first_new] + dims[:action_dim, :first_new].sum(axis=0)
        original = int(np.argmax(logits))
        rows[num_spaces:, column] = rows[num_spaces:, original]
        rows[:num_spaces, column] = rows[:num_spaces, original] - SUPPRESS
        rows[space, column] = rows[trained, original]
        rows[space, original] = rows[trained, original] - SUPPRESS
        copied[column] = original
    return copied


def _check_expert_count(init, target: dict, there: dict, blocks: tuple[str, ...], new_spaces: list[str]) -> int:
    """How many AS experts each AS block gains; ConfigError when ``model.expert.moe.as_experts`` does not fit."""
    gate = next((block + "experts/gate" for block in blocks if block + "experts/gate" in there), None)
    if gate is None or gate not in target:
        return 0
    have, source = target[gate][0][0], there[gate][0][0]
    if init.action_space_expert == "copy":
        if have != source + len(new_spaces):
            raise ConfigError(
                f"config key 'model.expert.moe.as_experts' is {have}; init.action_space_expert='copy' gives each new "
                f"action space {new_spaces} an expert of its own: set it to {source + len(new_spaces)} (the "
                f"source's {source} plus {len(new_spaces)})"
            )
        return len(new_spaces)
    if have != source:
        raise ConfigError(
            f"config key 'model.expert.moe.as_experts' is {have}; the source has {source} AS experts: use "
            f"{source}, or init.action_space_expert='copy' to add one per new action space"
        )
    return 0


COMPUTATION_FIELDS = (  # model settings that change what the same parameters compute
    ("vit", "attention_bias", False),
    ("expert", "state_token", False),
    ("expert.moe", "activation", "swish"),
)


def _check_same_computation(source: Source, model: ml_collections.ConfigDict | None) -> None:
    """ConfigError when the run would compute something else with the source's parameters (e.g. SwiGLU experts
    on the GeGLU weights an import upcycled), which no shape check can see."""
    if model is None or "model" not in source.config:
        return
    for group, key, default in COMPUTATION_FIELDS:
        theirs, ours = source.config["model"], model
        for part in group.split("."):
            theirs, ours = (theirs or {}).get(part, {}), ours.get(part, {})
        want, have = theirs.get(key, default), ours.get(key, default)
        if want != have:
            raise ConfigError(
                f"config key 'model.{group}.{key}' is {have!r}; init.source {source.path} was trained (or converted) "
                f"with {want!r}, and its parameters compute something else under {have!r}: set it to {want!r}"
            )


def initialize(
    init: ml_collections.ConfigDict,
    source: Source,
    fresh_params: dict,
    io: IOShapes,
    action_spaces: dict[str, int],
    blocks: tuple[str, ...] = (),
    model: ml_collections.ConfigDict | None = None,
) -> tuple[dict, dict]:
    """``fresh_params`` with ``source``'s values put in as ``config.init`` says; and the report.

    ``action_spaces``: the new data's action spaces and the action dim of each; ``blocks``: :func:`as_blocks`.
    """
    _check_same_computation(source, model)
    tree = source_tree(source)
    there = {name: (shape, dtype) for name, shape, dtype in checkpoint.array_leaves(tree)}
    target_flat = _flat(fresh_params)
    target = {p: (tuple(a.shape), str(np.dtype(a.dtype))) for p, a in target_flat.items()}
    old_io = source.io
    action_dim_changed = old_io.action_dim != io.action_dim
    trained_spaces = sorted({e["action_space"] for e in source.policy.get("embodiments", {}).values()})
    untrained = [s for s in sorted(action_spaces) if s not in trained_spaces]
    copies: dict[int, int] = {}
    if init.action_space_from:
        if init.action_space_from not in trained_spaces:
            raise ConfigError(
                f"config key 'init.action_space_from' is {init.action_space_from!r}; the source trained on the "
                f"action spaces {trained_spaces}"
            )
        copies = {ACTION_SPACE_IDS[s]: ACTION_SPACE_IDS[init.action_space_from] for s in untrained}
    new_experts = _check_expert_count(init, target, there, blocks, untrained) if init.action_space_from else 0
    decisions = plan(
        init, target, there, action_dim_changed=action_dim_changed, as_blocks=blocks, new_experts=new_experts
    )
    if copies:  # AS routers of a new action space are rewritten even where they are otherwise loaded as they are
        for path in (block + "router" for block in blocks):
            if decisions.get(path, {}).get("status") == "loaded":
                decisions[path] = dict(decisions[path], status="resized", why="init.action_space_from")
    if new_experts:
        unread = [b + "router" for b in blocks if decisions.get(b + "router", {}).get("status") != "resized"]
        if unread:
            raise ConfigError(
                f"init.action_space_expert='copy' needs the AS routers from the source (it picks the expert to copy "
                f"by them), but {unread[0]} is {decisions[unread[0]]['status']}; let init.load match it and "
                "init.reinit not"
            )
    for path in (b + "router" for b in blocks):
        if path in decisions and path in there and there[path][0][1] > target[path][0][1]:
            raise ConfigError(
                f"{path} routes to {there[path][0][1]} AS experts in the source and {target[path][0][1]} here; "
                f"set config key 'model.expert.moe.as_experts' to at least {there[path][0][1]}"
            )
    # Read what is used, each array straight into the sharding its parameter has in the new run.
    wanted = [p for p, d in decisions.items() if d["status"] in ("loaded", "resized")]
    abstract = _source_abstract(tree, target_flat, wanted)
    values = _flat(ocp.StandardCheckpointer().restore(source.params_dir, abstract)) if wanted else {}
    host = lambda a: np.asarray(jax.device_get(a))  # noqa: E731
    resized: dict[str, np.ndarray] = {}
    expert_copies: dict[str, dict[int, int]] = {}  # AS block -> {new expert: the expert it copies}
    for block in blocks:
        path = block + "router"
        if decisions.get(path, {}).get("status") != "resized":
            continue
        old = host(values[path])
        rows = _router_rows(host(target_flat[path]), old, copies)
        if new_experts:
            spaces = {
                ACTION_SPACE_IDS[s]: (ACTION_SPACE_IDS[init.action_space_from], action_spaces[s]) for s in untrained
            }
            expert_copies[block] = _add_space_experts(rows, io.num_action_spaces, spaces, first_new=old.shape[1])
        resized[path] = rows
    for path, d in decisions.items():
        if d["status"] == "resized" and path not in resized:  # an AS block's experts, grown by copies
            block = path[: path.index("experts/")]
            old = host(values[path])
            resized[path] = np.concatenate([old, old[[expert_copies[block][c] for c in sorted(expert_copies[block])]]])
    merged = {}
    for path, fresh in target_flat.items():
        status = decisions[path]["status"]
        if status == "loaded":
            merged[path] = values[path]
        elif status == "resized":
            merged[path] = jax.device_put(resized[path].astype(fresh.dtype), fresh.sharding)
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
            "new": sorted(action_spaces),
            "routed_like": {s: init.action_space_from for s in untrained} if copies else {},
            "expert": init.action_space_expert if copies else "",
            "expert_copies": {block: {str(c): e for c, e in sorted(m.items())} for block, m in expert_copies.items()},
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
        how = "to a copy of its AS expert" if report["action_spaces"]["expert"] == "copy" else "like"
        line += f"; new action spaces routed {how} " + ", ".join(f"{a} -> {b}" for a, b in routed.items())
    return line + f"; details in {REPORT_FILE}"
