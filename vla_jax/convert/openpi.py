"""openpi π0 and π0-FAST parameter checkpoints (Orbax) into our model, with their norm stats.

An openpi checkpoint directory holds ``params/`` (an Orbax PyTree whose
``params`` item is ``PaliGemma/{img,llm}`` plus, for π0, the action expert's
projections at the top level) and ``assets/<id>/norm_stats.json``. π0-FAST is
the plain PaliGemma tree. π0's action expert is a second set of Gemma layers
inside ``PaliGemma/llm/layers`` with the suffix ``_1`` (``q_einsum_1``,
``mlp_1``, ``final_norm_1``...), attending jointly with the backbone: in our
model the action expert's decoder, whose layer ``i`` attends to the keys and
values of backbone layer ``i``. Top-level tensors map as:
``state_proj -> action_expert/state_in`` (π0's state token, first in the
suffix), ``action_in_proj -> action_in``, ``action_time_mlp_in -> time_mix``,
``action_time_mlp_out -> time_out``, ``action_out_proj -> action_out``.

Into a HiMoE expert (a target whose plan has ``as`` / ``hb`` layers), each
such layer is upcycled from π0's dense GeGLU MLP of that layer so that the
imported model computes what π0 computes, as long as no token is dropped
(dense or ragged dispatch):

- AS: every expert a copy of the MLP with its down projection times the
  number of experts; the router starts at zero, so every action space picks
  expert 0 with weight ``1/E``.
- HB: the MLP's hidden units cut into ``F / hb_mlp_dim`` slices (which must
  equal ``hb_top_k``); expert ``j`` is slice ``j mod slices`` with its down
  projection times ``hb_top_k``; the router starts at zero, so every token
  picks experts ``0..k-1`` (the slices, weight ``1/k`` each); the shared
  expert's down projection starts at zero.

The experts' activation is set to GeGLU (``model.expert.moe.activation =
"gelu"``), π0's. The routers learn to spread tokens from there.

Norm stats become our dataset statistics, one entry per asset id, used with
``quantile`` normalization (``min``/``max`` are set to ``q01``/``q99``, which
openpi does not store). openpi's quantile normalization does not clip values
outside ``[q01, q99]``; ours clips them to [-1, 1].
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np

from vla_jax.convert.paligemma import gemma_mlp, gemma_names, map_gemma, map_paligemma, paligemma_dims
from vla_jax.convert.weights import Mapped, take
from vla_jax.errors import ConvertError
from vla_jax.models import moe

PREFIX = "PaliGemma/"
TOP_LEVEL = {  # openpi -> our path (each a Dense with kernel and bias)
    "state_proj": "action_expert/state_in",
    "action_in_proj": "action_expert/action_in",
    "action_time_mlp_in": "action_expert/time_mix",
    "action_time_mlp_out": "action_expert/time_out",
    "action_out_proj": "action_expert/action_out",
}


def read(path: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """An openpi checkpoint dir (``params/`` and ``assets/``) or its ``params`` dir: tensors by path, norm stats."""
    import orbax.checkpoint as ocp

    root = pathlib.Path(path).absolute()
    params_dir = root / "params" if (root / "params").is_dir() else root
    if not (params_dir / "_METADATA").is_file() and not (params_dir / "_CHECKPOINT_METADATA").is_file():
        raise ConvertError(f"{root}: no Orbax params/ directory: not an openpi checkpoint")
    try:
        restored = ocp.PyTreeCheckpointer().restore(params_dir)
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint
        raise ConvertError(f"{params_dir}: unreadable Orbax checkpoint ({error})") from None
    tree = restored.get("params", restored) if isinstance(restored, dict) else restored
    tensors = {}

    def flatten(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(value, f"{prefix}{key}/")
        else:
            tensors[prefix.removesuffix("/").removesuffix("/value")] = np.asarray(node)

    flatten(tree, "")
    if not any(name.startswith(PREFIX) for name in tensors):
        raise ConvertError(f"{params_dir}: no {PREFIX} tensors: not an openpi π0 / π0-FAST checkpoint")
    if "time_mlp_in/kernel" in tensors:
        raise ConvertError(f"{params_dir}: source tensor 'time_mlp_in/kernel' is π0.5's; only π0 and π0-FAST convert")
    stats = {}
    assets = (params_dir.parent if params_dir != root else root) / "assets"
    for file in sorted(assets.glob("*/norm_stats.json")) if assets.is_dir() else []:
        stats[file.parent.name] = json.loads(file.read_text())
    return tensors, stats


def is_pi0(tensors: dict) -> bool:
    """π0 (an action expert) rather than π0-FAST (PaliGemma alone)."""
    return "action_in_proj/kernel" in tensors


def pi0_dims(tensors: dict[str, np.ndarray]) -> dict:
    """The sizes a model config needs: PaliGemma's, and π0's action expert and action dim."""
    dims = paligemma_dims({k.removeprefix(PREFIX): v for k, v in tensors.items() if k.startswith(PREFIX)})
    if is_pi0(tensors):
        names = gemma_names(PREFIX + "llm/", "_1")
        _, _, width, _ = take(tensors, names["q"]).shape
        dims["expert"] = dict(width=width, mlp_dim=take(tensors, names["gating"]).shape[-1])
        dims["action_dim"] = take(tensors, "action_in_proj/kernel").shape[0]
        dims["state_dim"] = take(tensors, "state_proj/kernel").shape[0]
    return dims


def map_pi0(tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict) -> Mapped:
    """Every parameter of ``model`` from an openpi tree (the expert upcycled where the plan has MoE layers)."""
    mapped = map_paligemma(tensors, model, prefix=PREFIX)
    if not is_pi0(tensors):
        return mapped
    bb, expert = model.backbone, model.expert
    plan = tuple(expert.plan) or moe.default_plan(bb.depth)
    dense = {i for i, kind in enumerate(plan) if kind == "dense"}
    common = dict(llm=PREFIX + "llm/", suffix="_1", width=expert.width, mlp_dim=expert.mlp_dim)
    mapped.update(map_gemma(tensors, bb, ours="action_expert/decoder", dense_layers=dense, **common))
    names = gemma_names(PREFIX + "llm/", "_1")
    gating, linear = gemma_mlp(tensors, names, bb.depth, expert.width, expert.mlp_dim)
    for i, kind in enumerate(plan):
        if kind != "dense":
            _upcycle(mapped, kind, i, gating[i], linear[i], expert, names)
    for theirs, ours in TOP_LEVEL.items():
        for part in ("kernel", "bias"):
            mapped.put(f"{ours}/{part}", f"{theirs}/{part}", take(tensors, f"{theirs}/{part}"))
    return mapped


def _upcycle(mapped: Mapped, kind: str, layer: int, gating, linear, expert, names: dict) -> None:
    """One AS or HB layer of our expert from π0's dense MLP of that layer (see the module docstring)."""
    cfg = expert.moe
    base = f"action_expert/decoder/layers/{layer}/ffn/"
    gate, up, down = gating[0], gating[1], linear
    width, hidden = gate.shape
    if kind == "as":
        if cfg.as_mlp_dim != hidden:
            raise ConvertError(f"config key 'model.expert.moe.as_mlp_dim' is {cfg.as_mlp_dim}; π0's MLP has {hidden}")
        n = cfg.as_experts
        rule = f"upcycled: {n} copies of π0's MLP, down x {n}"
        mapped.put(base + "experts/gate", names["gating"], np.stack([gate] * n), rule)
        mapped.put(base + "experts/up", names["gating"], np.stack([up] * n), rule)
        mapped.put(base + "experts/down", names["linear"], np.stack([down * n] * n), rule)
        mapped.zeros[base + "router"] = "every action space starts on expert 0, weight 1/E"
        return
    slices, k = hidden // cfg.hb_mlp_dim, cfg.hb_top_k
    if hidden % cfg.hb_mlp_dim or slices != k:
        raise ConvertError(
            f"config key 'model.expert.moe.hb_mlp_dim' is {cfg.hb_mlp_dim} with hb_top_k {k}; upcycling π0's MLP of "
            f"{hidden} needs hb_mlp_dim * hb_top_k = {hidden}"
        )
    part = lambda w, j, axis: np.take(w, range(j * cfg.hb_mlp_dim, (j + 1) * cfg.hb_mlp_dim), axis=axis)  # noqa: E731
    rule = f"upcycled: expert j is slice j mod {slices} of π0's MLP, down x {k}"
    order = [j % slices for j in range(cfg.hb_experts)]
    mapped.put(base + "experts/gate", names["gating"], np.stack([part(gate, j, 1) for j in order]), rule)
    mapped.put(base + "experts/up", names["gating"], np.stack([part(up, j, 1) for j in order]), rule)
    mapped.put(base + "experts/down", names["linear"], np.stack([part(down, j, 0) * k for j in order]), rule)
    mapped.zeros[base + "router"] = "every token starts on experts 0..k-1, weight 1/k"
    if cfg.hb_shared_mlp_dim:
        mapped.zeros[base + "shared/down"] = "the shared expert starts silent"


def statistics(norm_stats: dict[str, dict]) -> dict[str, dict]:
    """openpi norm stats as our dataset statistics JSON (``DatasetStatistics.to_json``), one per asset id."""
    out = {}
    for asset, data in norm_stats.items():
        stats = data.get("norm_stats", data)
        entry = {"dataset": asset, "fingerprint": f"openpi:{asset}", "num_transitions": 0, "num_trajectories": 0}
        for ours, theirs in (("state", "state"), ("action", "actions")):
            if theirs not in stats:
                raise ConvertError(f"norm stats of asset {asset!r} have no {theirs!r} entry")
            missing = [k for k in ("mean", "std", "q01", "q99") if stats[theirs].get(k) is None]
            if missing:
                raise ConvertError(
                    f"norm stats of asset {asset!r}: {theirs!r} has no {missing} (quantile mode needs them)"
                )
            s = {k: np.asarray(stats[theirs][k], np.float32).tolist() for k in ("mean", "std", "q01", "q99")}
            entry[ours] = dict(s, min=s["q01"], max=s["q99"])
        entry["action_mask"] = [True] * len(entry["action"]["mean"])
        entry["normalization"] = "quantile"
        out[asset] = entry
    return out
