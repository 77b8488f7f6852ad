"""PaliGemma: big_vision ``.npz`` and Hugging Face ``safetensors`` checkpoints into our ViT, projection and backbone.

Both layouts are first read into big_vision's names (``img/...``, ``llm/...``,
layers stacked on a leading axis); :func:`map_paligemma` maps those to our
parameter paths, so the two sources give bit-identical parameters. Hugging Face
keeps ``(out, in)`` linear weights, ``(out, in, kh, kw)`` convolutions and flat
``heads * head_dim`` projections; big_vision keeps ``(in, out)``, ``(kh, kw,
in, out)`` and split heads. Both Gemma RMSNorms scale by ``1 + w``, so norms
copy as they are; both rotate halves in RoPE, so queries and keys need no
permutation. Hugging Face ties the output layer to the embedding
(``lm_head.weight`` is listed as unused when present).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np

from vla_jax.convert.weights import Mapped, take
from vla_jax.errors import ConvertError

VIT_BLOCK = "img/Transformer/encoderblock/"
ATTENTION = VIT_BLOCK + "MultiHeadDotProductAttention_0/"


# -- reading ---------------------------------------------------------------------------------------------------------


def read_npz(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A big_vision checkpoint ``.npz`` (keys ``params/img/...``, ``params/llm/...``) by big_vision name."""
    try:
        with np.load(path, allow_pickle=False) as data:
            tensors = {k.removeprefix("params/"): data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise ConvertError(f"{path}: not a readable .npz file ({error})") from None
    if not any(k.startswith("img/") for k in tensors) or not any(k.startswith("llm/") for k in tensors):
        raise ConvertError(f"{path}: no img/ and llm/ tensors: not a big_vision PaliGemma checkpoint")
    return tensors


HF_PREFIXES = (  # transformers' spellings, on disk and in memory, across versions -> one spelling
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("vision_tower.vision_model.", "vision_tower."),
)


SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": None}


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as float32 (bfloat16 included, which NumPy has no type for)."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            data = f.read()
    except (OSError, ValueError) as error:
        raise ConvertError(f"{path}: not a readable safetensors file ({error})") from None
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (start, end) = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets", (0, -1))
        if dtype not in SAFETENSORS_DTYPES or end > len(data):
            raise ConvertError(f"{path}: tensor {name!r} has dtype {dtype!r} or lies past the end of the file")
        raw = np.frombuffer(data[start:end], np.uint16 if dtype == "BF16" else SAFETENSORS_DTYPES[dtype])
        if dtype == "BF16":  # the upper half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        if raw.size != int(np.prod(shape)):
            raise ConvertError(f"{path}: tensor {name!r} holds {raw.size} values for shape {shape}")
        tensors[name] = raw.astype(np.float32).reshape(shape)
    return tensors


def read_hf(directory: str | pathlib.Path) -> tuple[dict[str, np.ndarray], dict]:
    """A Hugging Face PaliGemma directory (``config.json`` + ``*.safetensors``): tensors by normalized name."""
    root = pathlib.Path(directory)
    files = sorted(root.glob("*.safetensors"))
    if not (root / "config.json").is_file() or not files:
        raise ConvertError(f"{root}: no config.json and *.safetensors: not a Hugging Face checkpoint directory")
    hf_config = json.loads((root / "config.json").read_text())
    if hf_config.get("model_type") != "paligemma":
        raise ConvertError(f"{root}: config.json model_type is {hf_config.get('model_type')!r}; expected 'paligemma'")
    text_type = (hf_config.get("text_config") or {}).get("model_type", "gemma")
    if text_type != "gemma":  # PaliGemma 2 (Gemma 2: post-norms, soft-capping) computes something else
        raise ConvertError(f"{root}: config.json text_config.model_type is {text_type!r}; only Gemma (PaliGemma 1)")
    tensors = {}
    for file in files:
        for name, value in read_safetensors(file).items():
            for old, new in HF_PREFIXES:
                if name.startswith(old):
                    name = new + name[len(old) :]
            tensors[name] = value
    return tensors, hf_config


def hf_to_big_vision(tensors: dict[str, np.ndarray], hf_config: dict) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Hugging Face tensors in big_vision's names and layouts; and what became of each source tensor."""
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    vit_heads = vision["num_attention_heads"]
    heads, kv_heads = text["num_attention_heads"], text["num_key_value_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    out, used = {}, {}

    def get(name: str) -> np.ndarray:
        used[name] = ""
        return take(tensors, name)

    def stacked(count: int, fn) -> np.ndarray:
        return np.stack([fn(i) for i in range(count)])

    v = "vision_tower."
    kernel = get(v + "embeddings.patch_embedding.weight")  # (width, 3, p, p)
    out["img/embedding/kernel"] = kernel.transpose(2, 3, 1, 0)
    out["img/embedding/bias"] = get(v + "embeddings.patch_embedding.bias")
    out["img/pos_embedding"] = get(v + "embeddings.position_embedding.weight")[None]
    depth = vision["num_hidden_layers"]
    layer = lambda i, name: get(f"{v}encoder.layers.{i}.{name}")  # noqa: E731
    for ours, theirs in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        out[f"{VIT_BLOCK}{ours}/scale"] = stacked(depth, lambda i, t=theirs: layer(i, f"{t}.weight"))
        out[f"{VIT_BLOCK}{ours}/bias"] = stacked(depth, lambda i, t=theirs: layer(i, f"{t}.bias"))
    width = kernel.shape[0]
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        out[f"{ATTENTION}{ours}/kernel"] = stacked(
            depth, lambda i, t=theirs: layer(i, f"self_attn.{t}.weight").T.reshape(width, vit_heads, -1)
        )
        out[f"{ATTENTION}{ours}/bias"] = stacked(
            depth, lambda i, t=theirs: layer(i, f"self_attn.{t}.bias").reshape(vit_heads, -1)
        )
    out[f"{ATTENTION}out/kernel"] = stacked(
        depth, lambda i: layer(i, "self_attn.out_proj.weight").T.reshape(vit_heads, -1, width)
    )
    out[f"{ATTENTION}out/bias"] = stacked(depth, lambda i: layer(i, "self_attn.out_proj.bias"))
    for ours, theirs in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        out[f"{VIT_BLOCK}MlpBlock_0/{ours}/kernel"] = stacked(depth, lambda i, t=theirs: layer(i, f"mlp.{t}.weight").T)
        out[f"{VIT_BLOCK}MlpBlock_0/{ours}/bias"] = stacked(depth, lambda i, t=theirs: layer(i, f"mlp.{t}.bias"))
    out["img/Transformer/encoder_norm/scale"] = get(v + "post_layernorm.weight")
    out["img/Transformer/encoder_norm/bias"] = get(v + "post_layernorm.bias")
    out["img/head/kernel"] = get("multi_modal_projector.linear.weight").T
    out["img/head/bias"] = get("multi_modal_projector.linear.bias")

    t = "language_model.model."
    embedding = get(t + "embed_tokens.weight")
    # transformers appends <image> (at image_token_index) and padding rows to the vocabulary; big_vision's
    # checkpoints and openpi's end below it
    rows = int(hf_config.get("image_token_index", hf_config.get("image_token_id", embedding.shape[0])))
    out["llm/embedder/input_embedding"] = embedding[: min(rows, embedding.shape[0])]
    model_width = embedding.shape[1]
    depth = text["num_hidden_layers"]
    layer = lambda i, name: get(f"{t}layers.{i}.{name}")  # noqa: E731

    def split_heads(w: np.ndarray, n: int) -> np.ndarray:  # (n * head_dim, D) -> (n, D, head_dim)
        return w.reshape(n, head_dim, model_width).transpose(0, 2, 1)

    out["llm/layers/attn/q_einsum/w"] = stacked(
        depth, lambda i: split_heads(layer(i, "self_attn.q_proj.weight"), heads)
    )
    out["llm/layers/attn/kv_einsum/w"] = stacked(
        depth,
        lambda i: np.stack([split_heads(layer(i, f"self_attn.{p}.weight"), kv_heads) for p in ("k_proj", "v_proj")]),
    )
    out["llm/layers/attn/attn_vec_einsum/w"] = stacked(
        depth, lambda i: layer(i, "self_attn.o_proj.weight").T.reshape(heads, head_dim, model_width)
    )
    out["llm/layers/mlp/gating_einsum"] = stacked(
        depth, lambda i: np.stack([layer(i, "mlp.gate_proj.weight").T, layer(i, "mlp.up_proj.weight").T])
    )
    out["llm/layers/mlp/linear"] = stacked(depth, lambda i: layer(i, "mlp.down_proj.weight").T)
    out["llm/layers/pre_attention_norm/scale"] = stacked(depth, lambda i: layer(i, "input_layernorm.weight"))
    out["llm/layers/pre_ffw_norm/scale"] = stacked(depth, lambda i: layer(i, "post_attention_layernorm.weight"))
    out["llm/final_norm/scale"] = get(t + "norm.weight")
    fate = {name: "read" for name in used}
    for name in tensors:
        if name in used:
            continue
        if name == "lm_head.weight":
            fate[name] = "unused: the output layer is tied to the embedding"
        else:  # a tensor of another architecture (e.g. Gemma 2's extra norms): converting would be silently wrong
            raise ConvertError(f"source tensor {name!r} has no place in PaliGemma's layout (another architecture?)")
    if embedding.shape[0] > out["llm/embedder/input_embedding"].shape[0]:
        fate[t + "embed_tokens.weight"] = f"read: rows from {rows} on (<image> and padding) dropped"
    return out, fate


# -- big_vision names -> ours ----------------------------------------------------------------------------------------


def paligemma_dims(tensors: dict[str, np.ndarray]) -> dict:
    """ViT and backbone sizes read off big_vision-named tensors (what a model config needs)."""
    patch, _, _, vit_width = take(tensors, "img/embedding/kernel").shape
    vit_depth, _, vit_heads, _ = take(tensors, f"{ATTENTION}query/kernel").shape
    tokens = take(tensors, "img/pos_embedding").shape[1]
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ConvertError(f"source tensor 'img/pos_embedding' has {tokens} positions; expected a square grid")
    depth, heads, width, head_dim = take(tensors, "llm/layers/attn/q_einsum/w").shape
    kv_heads = take(tensors, "llm/layers/attn/kv_einsum/w").shape[2]
    return {
        "image_size": side * patch,
        "vocab": take(tensors, "llm/embedder/input_embedding").shape[0],
        "vit": dict(
            patch_size=patch,
            width=vit_width,
            depth=vit_depth,
            num_heads=vit_heads,
            mlp_dim=take(tensors, f"{VIT_BLOCK}MlpBlock_0/Dense_0/kernel").shape[-1],
            attention_bias=True,
        ),
        "backbone": dict(
            width=width,
            depth=depth,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            mlp_dim=take(tensors, "llm/layers/mlp/gating_einsum").shape[-1],
        ),
    }


def map_paligemma(tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict, prefix: str = "") -> Mapped:
    """The ViT, image projection, embedding and backbone from big_vision-named ``tensors`` (under ``prefix``)."""
    vit, bb = model.vit, model.backbone
    mapped = Mapped()

    def get(name: str, shape) -> np.ndarray:
        return take(tensors, prefix + name, shape)

    p, w, n = vit.patch_size, vit.width, vit.num_heads
    hd, layers = w // n, vit.depth
    kernel = get("img/embedding/kernel", (p, p, 3, w)).reshape(-1, w)  # rows in (row, column, channel) order
    mapped.put("vit/patch_embed/kernel", prefix + "img/embedding/kernel", kernel)
    mapped.put("vit/patch_embed/bias", prefix + "img/embedding/bias", get("img/embedding/bias", (w,)))
    positions = take(tensors, prefix + "img/pos_embedding")
    mapped.put("vit/position", prefix + "img/pos_embedding", get("img/pos_embedding", (1, positions.shape[1], w))[0])
    attention = "MultiHeadDotProductAttention_0/"
    blocks = {
        "LayerNorm_0/scale": ("attention_norm/scale", (w,)),
        "LayerNorm_0/bias": ("attention_norm/bias", (w,)),
        "LayerNorm_1/scale": ("mlp_norm/scale", (w,)),
        "LayerNorm_1/bias": ("mlp_norm/bias", (w,)),
        attention + "query/kernel": ("attention/query", (w, n, hd)),
        attention + "query/bias": ("attention/query_bias", (n, hd)),
        attention + "key/kernel": ("attention/key", (w, n, hd)),
        attention + "key/bias": ("attention/key_bias", (n, hd)),
        attention + "value/kernel": ("attention/value", (w, n, hd)),
        attention + "value/bias": ("attention/value_bias", (n, hd)),
        attention + "out/kernel": ("attention/out", (n, hd, w)),
        attention + "out/bias": ("attention/out_bias", (w,)),
        "MlpBlock_0/Dense_0/kernel": ("mlp_in/kernel", (w, vit.mlp_dim)),
        "MlpBlock_0/Dense_0/bias": ("mlp_in/bias", (vit.mlp_dim,)),
        "MlpBlock_0/Dense_1/kernel": ("mlp_out/kernel", (vit.mlp_dim, w)),
        "MlpBlock_0/Dense_1/bias": ("mlp_out/bias", (w,)),
    }
    for theirs, (ours, shape) in blocks.items():
        stack = get(VIT_BLOCK + theirs, (layers, *shape))
        for i in range(layers):
            mapped.put(f"vit/blocks/{i}/{ours}", prefix + VIT_BLOCK + theirs, stack[i])
    for part in ("scale", "bias"):
        name = f"img/Transformer/encoder_norm/{part}"
        mapped.put(f"vit/norm/{part}", prefix + name, get(name, (w,)))
    mapped.put("image_proj/kernel", prefix + "img/head/kernel", get("img/head/kernel", (w, bb.width)))
    mapped.put("image_proj/bias", prefix + "img/head/bias", get("img/head/bias", (bb.width,)))
    embedding = take(tensors, prefix + "llm/embedder/input_embedding")
    if embedding.ndim != 2 or embedding.shape[1] != bb.width:
        raise ConvertError(
            f"source tensor {prefix + 'llm/embedder/input_embedding'!r} has shape {embedding.shape}; "
            f"expected (vocab, {bb.width})"
        )
    mapped.put("embed", prefix + "llm/embedder/input_embedding", embedding)
    mapped.update(
        map_gemma(tensors, bb, ours="backbone", llm=prefix + "llm/", suffix="", width=bb.width, mlp_dim=bb.mlp_dim)
    )
    return mapped


def map_gemma(
    tensors: dict[str, np.ndarray],
    bb: ml_collections.ConfigDict,
    *,
    ours: str,
    llm: str,
    suffix: str,
    width: int,
    mlp_dim: int,
    dense_layers: set[int] | None = None,
) -> Mapped:
    """One Gemma stack of big_vision's ``llm/layers`` (``suffix`` "" for the backbone, "_1" for π0's expert).

    ``ours``: our decoder's path (``backbone`` or ``action_expert/decoder``). Layers in ``dense_layers``
    (default: all) get the MLP as a dense ``ffn/mlp``; the caller maps the others' (:func:`gemma_mlp`).
    """
    depth, heads, kv_heads, hd = bb.depth, bb.num_heads, bb.num_kv_heads, bb.head_dim
    names = gemma_names(llm, suffix)
    q = take(tensors, names["q"], (depth, heads, width, hd))
    kv = take(tensors, names["kv"], (depth, 2, kv_heads, width, hd))
    out = take(tensors, names["out"], (depth, heads, hd, width))
    gating, linear = gemma_mlp(tensors, names, depth, width, mlp_dim)
    norms = {k: take(tensors, names[k], (depth, width)) for k in ("attention_norm", "mlp_norm")}
    mapped = Mapped()
    for i in range(depth):
        base = f"{ours}/layers/{i}/"
        mapped.put(base + "query", names["q"], q[i].transpose(1, 0, 2))
        mapped.put(base + "key", names["kv"], kv[i, 0].transpose(1, 0, 2))
        mapped.put(base + "value", names["kv"], kv[i, 1].transpose(1, 0, 2))
        mapped.put(base + "out", names["out"], out[i])
        for norm in ("attention_norm", "mlp_norm"):
            mapped.put(f"{base}{norm}/scale", names[norm], norms[norm][i])
        if dense_layers is None or i in dense_layers:
            mapped.put(base + "ffn/mlp/gate", names["gating"], gating[i, 0])
            mapped.put(base + "ffn/mlp/up", names["gating"], gating[i, 1])
            mapped.put(base + "ffn/mlp/down", names["linear"], linear[i])
    mapped.put(f"{ours}/norm/scale", names["final_norm"], take(tensors, names["final_norm"], (width,)))
    return mapped


def gemma_names(llm: str, suffix: str) -> dict[str, str]:
    """big_vision's names of one Gemma stack's tensors (π0's expert: the same with ``suffix`` "_1")."""
    layers = llm + "layers/"
    return {
        "q": f"{layers}attn/q_einsum{suffix}/w",
        "kv": f"{layers}attn/kv_einsum{suffix}/w",
        "out": f"{layers}attn/attn_vec_einsum{suffix}/w",
        "gating": f"{layers}mlp{suffix}/gating_einsum",
        "linear": f"{layers}mlp{suffix}/linear",
        "attention_norm": f"{layers}pre_attention_norm{suffix}/scale",
        "mlp_norm": f"{layers}pre_ffw_norm{suffix}/scale",
        "final_norm": f"{llm}final_norm{suffix}/scale",
    }


def gemma_mlp(tensors, names: dict, depth: int, width: int, mlp_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The stack's MLP: ``gating [L, 2, D, F]`` (gate, up) and ``linear [L, F, D]`` (down)."""
    return (
        take(tensors, names["gating"], (depth, 2, width, mlp_dim)),
        take(tensors, names["linear"], (depth, mlp_dim, width)),
    )
