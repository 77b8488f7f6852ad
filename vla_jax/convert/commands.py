"""``vla-jax convert KIND SRC --out DIR``: one released checkpoint into a weights directory."""

from __future__ import annotations

import pathlib

import numpy as np

from vla_jax.convert import openpi, paligemma, weights
from vla_jax.errors import ConvertError
from vla_jax.models import presets
from vla_jax.observation import IOShapes
from vla_jax.tokenizers import build
from vla_jax.tokenizers.text import SentencePieceTokenizer
from vla_jax.training import release_layout

PI0_FAST_RESERVED = 128  # openpi's FAST tokenizer skips the vocabulary's last 128 ids (PaliGemma's <seg> tokens)

KINDS = {
    "paligemma_npz": "big_vision PaliGemma .npz (SigLIP + Gemma, stacked layers)",
    "paligemma_hf": "Hugging Face PaliGemma directory (config.json + safetensors)",
    "openpi": "openpi π0 or π0-FAST checkpoint directory (Orbax params/ and assets/)",
}
DEFAULT_PRESET = {"paligemma_npz": "paligemma_himoe", "paligemma_hf": "paligemma_himoe", "openpi": "pi0"}


def convert(
    kind: str, src: str | pathlib.Path, out: str | pathlib.Path, *, preset: str = "", horizon: int = 0,
    tokenizer: str | pathlib.Path = "",
) -> dict:  # fmt: skip
    """Converts ``src`` (of ``kind``) into the weights directory ``out``; returns its release.json.

    ``preset``: the model the weights go into (default: ``paligemma_himoe`` for PaliGemma, ``pi0`` for openpi),
    its ViT, backbone (and for π0 the expert's width) set from the source. ``horizon``: the action chunk length
    (π0's parameters do not fix it; default the preset's). ``tokenizer``: the source's sentencepiece model
    (PaliGemma's ``tokenizer.model``), stored as the weights' text model; its ids must fit the embedding.
    """
    if kind not in KINDS:
        raise ConvertError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    preset = preset or DEFAULT_PRESET[kind]
    if preset not in presets.PRESETS:
        raise ConvertError(f"unknown preset {preset!r}; expected one of {presets.PRESETS}")
    release_layout.check_out(out)  # before the (slow) read
    if tokenizer and not pathlib.Path(tokenizer).is_file():
        raise ConvertError(f"--tokenizer {tokenizer} does not exist")
    src = pathlib.Path(src)
    if not src.exists():
        raise ConvertError(f"{src} does not exist")
    statistics, source_fate = {}, {}
    if kind == "openpi":
        tensors, norm_stats = openpi.read(src)
        statistics = openpi.statistics(norm_stats)
        dims = openpi.pi0_dims(tensors)
    else:
        if kind == "paligemma_npz":
            tensors = paligemma.read_npz(src)
        else:
            hf_tensors, hf_config = paligemma.read_hf(src)
            tensors, source_fate = paligemma.hf_to_big_vision(hf_tensors, hf_config)
        dims = paligemma.paligemma_dims(tensors)
    model = presets.model_config(preset)
    model.vit.update(dims["vit"])
    model.backbone.update(dims["backbone"])
    base = presets.default_io(preset)
    action_dim, state_dim = base.action_dim, base.state_dim
    if "expert" in dims:  # π0: the expert, its state token and the action dims are the source's
        model.mode = "flow"
        model.expert.update(dims["expert"], state_token=True)
        if set(model.expert.plan) == {"dense"}:  # π0's own expert, at the source's depth
            model.expert.plan = ("dense",) * model.backbone.depth
        else:
            _himoe_for_upcycling(model)
        action_dim, state_dim = dims["action_dim"], dims["state_dim"]
    elif kind == "openpi":
        model.mode = "fast"  # π0-FAST: PaliGemma alone
    io = IOShapes(
        base.cameras, dims["image_size"], dims["vocab"], base.text_length, state_dim, action_dim,
        horizon or base.action_horizon,
    )  # fmt: skip
    mapped = openpi.map_pi0(tensors, model) if kind == "openpi" else paligemma.map_paligemma(tensors, model)
    stray = [n for n in tensors if n not in mapped.sources and ("/img/" in f"/{n}" or "/llm/" in f"/{n}")]
    if stray:  # e.g. PaliGemma 2's extra norms: the rest would convert into a model that computes something else
        raise ConvertError(f"source tensor {stray[0]!r} has no place in the target model (another architecture?)")
    params, status = weights.assemble(mapped, model, io)
    config = weights.converted_config(model, io)
    if kind == "openpi":  # π0-FAST's action ids: down from below 128 reserved ids at the vocabulary's tail
        config.tokenizer.update(reserved_tail=PI0_FAST_RESERVED, action_id_order="down", action_vocab_size=2048)
    text_files = {build.TEXT_FILE: _text_model(tokenizer, dims["vocab"])} if tokenizer else {}
    if text_files:
        config.tokenizer.text_model = ""  # the weights carry it (tokenizers/text.model), as a run's checkpoint does
    source_params = sum(int(np.prod(t.shape)) for name, t in tensors.items() if name in mapped.sources)
    counts: dict[str, int] = {}
    for text in status.values():
        key = text.split(":")[0].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    report = {
        "kind": kind,
        "source": str(src.absolute()),
        "preset": preset,
        "source_tensors": {**source_fate, **mapped.source_report(tensors)},
        "parameters": status,
        "counts": counts,
        "source_num_params": source_params,
        "source_num_params_unused": sum(int(np.prod(t.shape)) for n, t in tensors.items() if n not in mapped.sources),
        "statistics": sorted(statistics),
        "normalization": "quantile, clipped to [-1, 1] (openpi's does not clip)" if statistics else "",
    }
    return weights.write(
        out, kind=kind, source=str(src.absolute()), config=config, io=io, params=params, report=report,
        statistics=statistics, tokenizers=text_files,
    )  # fmt: skip


def _text_model(path: str | pathlib.Path, vocab: int) -> bytes:
    """The sentencepiece model file at ``path``, checked to fit an embedding of ``vocab`` rows."""
    try:
        text = SentencePieceTokenizer.from_file(path)
    except ValueError as error:
        raise ConvertError(f"--tokenizer: {error}") from None
    if text.vocab_size > vocab:
        raise ConvertError(f"--tokenizer {path} has {text.vocab_size} ids; the source's embedding has {vocab} rows")
    return text.model_proto


def _himoe_for_upcycling(model) -> None:
    """A HiMoE expert whose AS / HB layers can be upcycled exactly from π0's MLP (``convert.openpi``)."""
    cfg = model.expert.moe
    hidden = model.expert.mlp_dim
    cfg.activation = "gelu"
    cfg.hb_dispatch = "ragged"  # every token starts on experts 0..k-1: a capacity would drop most of them
    cfg.as_mlp_dim = hidden
    if hidden % cfg.hb_top_k:
        raise ConvertError(
            f"config key 'model.expert.moe.hb_top_k' is {cfg.hb_top_k}; π0's MLP of {hidden} must split into top-k "
            "slices"
        )
    cfg.hb_mlp_dim = hidden // cfg.hb_top_k
