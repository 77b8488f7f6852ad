"""Tiny random Hugging Face PaliGemma checkpoints, their reference logits, and the same weights as a big_vision ``.npz``.

Test helper for the PaliGemma weight importer (no ``test_`` functions here). Needs ``torch`` (CPU) and
``transformers`` 5.x; checked with torch 2.13.0+cpu, transformers 5.25.0, safetensors 0.8.0. Only
``reference_logits`` and ``save_random_paligemma`` import torch/transformers.

How transformers 5.x PaliGemma is fed (``PaliGemmaModel.forward`` / ``PaliGemmaForConditionalGeneration.forward``):

* ``input_ids`` hold ``N_IMG`` copies of ``config.image_token_id`` first, then BOS + text. The image placeholder
  embeddings are replaced (``masked_scatter``) by the projected SigLIP features, in order.
* Text embeddings are ``embed_tokens(ids) * sqrt(hidden)`` (``GemmaTextScaledWordEmbedding``; the scale is applied
  in the embedding layer). Image features are inserted UNSCALED: ``get_image_features`` is just
  ``multi_modal_projector(vision_tower(pixels).last_hidden_state)`` -- no ``/ sqrt(hidden)`` any more (transformers
  4.x divided image features by sqrt(hidden) and multiplied the whole sequence by sqrt(hidden) inside Gemma; the net
  effect is identical). This matches big_vision: ``zimg`` goes into the LLM as is, only text is ``* sqrt(width)``.
* ``position_ids`` default to ``arange(L) + 1`` ("Paligemma positions are 1-indexed"); big_vision/openpi use
  ``arange(L)`` (``cumsum(input_mask) - 1``), so ``reference_logits`` passes them explicitly from 0.
* ``pixel_values`` are NCHW float32 in [-1, 1] (SiglipImageProcessor: x / 255, mean 0.5, std 0.5; big_vision's
  ``value_range(-1, 1)`` is the same map). big_vision's ViT takes NHWC.
* lm_head is tied to ``embed_tokens`` (``tie_word_embeddings=True``); no final logit soft-capping in Gemma 1.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

IMAGE_SIZE = 28
PATCH = 14
N_IMG = (IMAGE_SIZE // PATCH) ** 2  # 4 image tokens
VOCAB = 300
IMAGE_TOKEN_ID = 299  # inside the vocab, so transformers does not remap it to PAD
BOS_ID = 2
PAD_ID = 0


def tiny_config():
    """Tiny PaliGemma (SigLIP + Gemma 1) config; heads * head_dim (64) != hidden (48) on purpose."""
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
    )
    text = GemmaConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=96,
        num_hidden_layers=2,
        vocab_size=VOCAB,
        hidden_activation="gelu_pytorch_tanh",
        hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=1,
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        projection_dim=48,
        hidden_size=48,
        vocab_size=VOCAB,
        image_token_index=IMAGE_TOKEN_ID,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=1,
        dtype="float32",
    )
    config._attn_implementation = "eager"
    return config


# On-disk names. transformers 5.x keeps PaliGemmaForConditionalGeneration in memory as
#   model.vision_tower.{embeddings,encoder,post_layernorm}..., model.multi_modal_projector.linear.*,
#   model.language_model.{embed_tokens,layers.N,norm}..., lm_head.weight (tied to embed_tokens)
# but save_pretrained reverses its "llava" conversion mapping and WRITES (checked with 5.25.0):
#   vision_tower.embeddings.{patch_embedding.weight (W,3,p,p), patch_embedding.bias, position_embedding.weight (N,W)}
#   vision_tower.encoder.layers.N.{layer_norm1,layer_norm2}.{weight,bias}
#   vision_tower.encoder.layers.N.self_attn.{q_proj,k_proj,v_proj,out_proj}.{weight (out,in),bias}
#   vision_tower.encoder.layers.N.mlp.{fc1,fc2}.{weight,bias}
#   vision_tower.post_layernorm.{weight,bias}
#   multi_modal_projector.linear.{weight (D,W), bias}
#   language_model.model.embed_tokens.weight (V,D)
#   language_model.model.layers.N.{input_layernorm,post_attention_layernorm}.weight
#   language_model.model.layers.N.self_attn.{q_proj (H*hd,D), k_proj (K*hd,D), v_proj (K*hd,D), o_proj (D,H*hd)}.weight
#   language_model.model.layers.N.mlp.{gate_proj (F,D), up_proj (F,D), down_proj (D,F)}.weight
#   language_model.model.norm.weight
# and no lm_head (tied). Note: "vision_tower." WITHOUT "vision_model." -- the SigLIP prefix change is not undone on
# save. Hub checkpoints written by transformers 4.x (e.g. google/paligemma-3b-pt-224) use
# "vision_tower.vision_model.<same>" instead (and may carry "language_model.lm_head.weight"); 5.x loads both.
# save_random_paligemma(layout="hub") writes that legacy spelling so an importer can be tested on both.
_VISION_PREFIXES = ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.")
_LLM_PREFIXES = ("language_model.model.", "model.language_model.")
_PROJ_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")


def save_random_paligemma(out_dir, seed: int = 0, *, layout: str = "transformers") -> pathlib.Path:
    """Build ``PaliGemmaForConditionalGeneration(tiny_config())``, give EVERY parameter random values, save it.

    All weights and biases ~ N(0, 0.1); LayerNorm scales ~ 1 + N(0, 0.1); Gemma RMSNorm weights (applied as
    ``1 + w``) ~ N(0, 0.1). ``layout="transformers"`` keeps what save_pretrained writes; ``layout="hub"`` renames
    ``vision_tower.`` to ``vision_tower.vision_model.`` in the safetensors file (transformers 4.x / Hub spelling).
    """
    import torch
    from safetensors.numpy import load_file, save_file
    from transformers import PaliGemmaForConditionalGeneration

    if layout not in ("transformers", "hub"):
        raise ValueError(f"unknown layout {layout!r}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(tiny_config()).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.1
            is_layer_norm = "vision_tower" in name and ("layer_norm" in name or "layernorm" in name)
            if is_layer_norm and name.endswith(".weight"):
                noise = noise + 1.0
            p.copy_(noise)
    model.save_pretrained(out, safe_serialization=True)
    if layout == "hub":
        for f in sorted(out.glob("*.safetensors")):
            tensors = load_file(str(f))
            renamed = {
                ("vision_tower.vision_model." + k[len("vision_tower.") :] if k.startswith("vision_tower.") else k): v
                for k, v in tensors.items()
            }
            save_file(renamed, str(f), metadata={"format": "pt"})
    return out


def reference_logits(
    model_dir,
    pixel_values: np.ndarray,
    input_ids: np.ndarray,
    token_type_ids: np.ndarray,
    attention_mask: np.ndarray,
) -> np.ndarray:
    """float32 logits ``[B, N_IMG + T, vocab]`` (ALL positions: image tokens first) from the saved HF model.

    ``pixel_values``: float32 ``[B, 3, H, W]`` in [-1, 1]. ``input_ids`` / ``token_type_ids`` / ``attention_mask``:
    ``[B, T]`` for the TEXT part only (BOS + text); this function prepends ``N_IMG`` image placeholder ids
    (``IMAGE_TOKEN_ID``) with token_type 0 and attention 1. Text logits are ``out[:, N_IMG:]``.

    Positions are passed explicitly: ``position_ids = max(cumsum(mask) - 1, 0)`` over the full sequence, i.e.
    ``0 .. N_IMG + T - 1`` without padding (HF would otherwise start at 1). RoPE is relative, so a constant shift of
    all positions only changes logits by float noise (~1e-6 here): a position-offset bug can hide behind it.

    Prefix-LM mask (transformers 5.x, ``PaliGemmaModel.forward``): if ``token_type_ids`` is given (first pass), it
    calls ``create_causal_mask(..., block_sequence_ids=where(token_type_ids == 0, 0, -1))``. The mask is
    ``(causal(q >= kv) OR (group[q] == group[kv] AND group[q] >= 0)) AND attention_mask[kv]``: all type-0 tokens
    (image + prompt prefix) see each other bidirectionally, type-1 (suffix) tokens are causal and see the whole
    prefix. Equal to big_vision's ``make_attn_mask(input_mask, mask_ar=token_type_ids)`` for a prefix-then-suffix
    layout, except that HF masks padding only as keys (padded query rows still get values: ignore their logits).
    Without ``token_type_ids`` the text model is plain causal (PaliGemmaConfig sets
    ``text_config.use_bidirectional_attention=True``, which only flips ``GemmaAttention.is_causal``; the eager path
    uses the mask above and ignores that flag).
    """
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    pixel_values = np.asarray(pixel_values, np.float32)
    input_ids = np.asarray(input_ids, np.int64)
    b, t = input_ids.shape
    if pixel_values.shape[:2] != (b, 3):
        raise ValueError(f"pixel_values must be [B, 3, H, W], got {pixel_values.shape}")
    full_ids = np.concatenate([np.full((b, N_IMG), IMAGE_TOKEN_ID, np.int64), input_ids], axis=1)
    full_tt = np.concatenate([np.zeros((b, N_IMG), np.int64), np.asarray(token_type_ids, np.int64)], axis=1)
    full_mask = np.concatenate([np.ones((b, N_IMG), np.int64), np.asarray(attention_mask, np.int64)], axis=1)
    positions = np.maximum(np.cumsum(full_mask, axis=1) - 1, 0)

    model = PaliGemmaForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(full_ids),
            pixel_values=torch.from_numpy(pixel_values),
            attention_mask=torch.from_numpy(full_mask),
            token_type_ids=torch.from_numpy(full_tt),
            position_ids=torch.from_numpy(positions),
            use_cache=False,
        )
    logits = out.logits.float().numpy()
    assert logits.shape == (b, N_IMG + t, model.config.text_config.vocab_size), logits.shape
    return logits


def state_dict_from_dir(model_dir) -> dict[str, np.ndarray]:
    """The tensors exactly as stored in ``model_dir/*.safetensors`` (names as on disk; see the comment above)."""
    from safetensors.numpy import load_file

    files = sorted(pathlib.Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors in {model_dir}")
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _canonical(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map either on-disk spelling to ``vit.<...>``, ``proj.<...>``, ``llm.<...>`` (internal to this file)."""
    out = {}
    for k, v in sd.items():
        for group, prefixes in (("vit.", _VISION_PREFIXES), ("proj.", _PROJ_PREFIXES), ("llm.", _LLM_PREFIXES)):
            hit = next((p for p in prefixes if k.startswith(p)), None)
            if hit is not None:
                out[group + k[len(hit) :]] = v
                break
        else:
            if k not in ("lm_head.weight", "language_model.lm_head.weight"):
                raise KeyError(f"unexpected tensor {k}")
            out["lm_head"] = v
    return out


def write_big_vision_npz(model_dir, out_path) -> pathlib.Path:
    """Write the checkpoint in big_vision's PaliGemma ``.npz`` layout (as the released ``pt_224.npz``), float32.

    Keys (``np.savez``, flat, joined by "/"; L = layers, stacked on axis 0 as nn.scan does):
      params/img/embedding/kernel (p,p,3,W) = conv.weight.transpose(2,3,1,0); params/img/embedding/bias (W,)
      params/img/pos_embedding (1,N,W)
      params/img/Transformer/encoderblock/LayerNorm_{0,1}/{scale,bias} (L,W)      (layer_norm1 / layer_norm2)
      .../MultiHeadDotProductAttention_0/{query,key,value}/kernel (L,W,h,hd)      = proj.weight.T.reshape(W,h,hd)
      .../MultiHeadDotProductAttention_0/{query,key,value}/bias (L,h,hd)
      .../MultiHeadDotProductAttention_0/out/kernel (L,h,hd,W)                    = out_proj.weight.T.reshape(h,hd,W)
      .../MultiHeadDotProductAttention_0/out/bias (L,W)
      .../MlpBlock_0/Dense_0/{kernel (L,W,M), bias (L,M)}, .../Dense_1/{kernel (L,M,W), bias (L,W)}
      params/img/Transformer/encoder_norm/{scale,bias} (W,)                       (post_layernorm)
      params/img/head/{kernel (W,D), bias (D,)}                                   (multi_modal_projector.linear)
      params/llm/embedder/input_embedding (V,D)
      params/llm/layers/attn/q_einsum/w (L,H,D,hd)          = q_proj.weight.reshape(H,hd,D).transpose(0,2,1)
      params/llm/layers/attn/kv_einsum/w (L,2,K,D,hd)       = [k_proj, v_proj] likewise
        (when K == H big_vision uses params/llm/layers/attn/qkv_einsum/w (L,3,H,D,hd) instead)
      params/llm/layers/attn/attn_vec_einsum/w (L,H,hd,D)   = o_proj.weight.T.reshape(H,hd,D)
      params/llm/layers/mlp/gating_einsum (L,2,D,F)         = [gate_proj.weight.T, up_proj.weight.T]
      params/llm/layers/mlp/linear (L,F,D)                  = down_proj.weight.T
      params/llm/layers/pre_attention_norm/scale (L,D)      = input_layernorm.weight (both apply 1 + scale)
      params/llm/layers/pre_ffw_norm/scale (L,D)            = post_attention_layernorm.weight
      params/llm/final_norm/scale (D,)                      = norm.weight
    Both Gemma RoPE implementations rotate the two halves of hd (no q/k permutation needed).
    Cross-checked against big_vision (models/vit.py, models/ppp/gemma.py, models/proj/paligemma/{paligemma,
    gemma_bv}.py) and transformers' convert_paligemma_weights_to_hf.py (whose o_proj reshape relies on H*hd == D).
    """
    model_dir = pathlib.Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    vc, tc = cfg["vision_config"], cfg["text_config"]
    vw, vh = vc["hidden_size"], vc["num_attention_heads"]
    vhd = vw // vh
    d, h, k = tc["hidden_size"], tc["num_attention_heads"], tc["num_key_value_heads"]
    hd = tc.get("head_dim") or d // h
    lv, lt = vc["num_hidden_layers"], tc["num_hidden_layers"]

    sd = {n: np.asarray(v, np.float32) for n, v in _canonical(state_dict_from_dir(model_dir)).items()}
    emb = sd["llm.embed_tokens.weight"]
    if "lm_head" in sd and not np.array_equal(sd["lm_head"], emb):
        raise ValueError("lm_head differs from embed_tokens; big_vision decodes with the tied input_embedding")

    def vstack(fmt, fn):
        return np.stack([fn(sd["vit.encoder.layers." + fmt.format(i)]) for i in range(lv)])

    def tstack(fmt, fn):
        return np.stack([fn(sd["llm.layers." + fmt.format(i)]) for i in range(lt)])

    ident = np.asarray
    blk = "img/Transformer/encoderblock/"
    mha = blk + "MultiHeadDotProductAttention_0/"
    p = {
        "img/embedding/kernel": sd["vit.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
        "img/embedding/bias": sd["vit.embeddings.patch_embedding.bias"],
        "img/pos_embedding": sd["vit.embeddings.position_embedding.weight"][None],
        blk + "LayerNorm_0/scale": vstack("{}.layer_norm1.weight", ident),
        blk + "LayerNorm_0/bias": vstack("{}.layer_norm1.bias", ident),
        blk + "LayerNorm_1/scale": vstack("{}.layer_norm2.weight", ident),
        blk + "LayerNorm_1/bias": vstack("{}.layer_norm2.bias", ident),
        mha + "out/kernel": vstack("{}.self_attn.out_proj.weight", lambda w: w.T.reshape(vh, vhd, vw)),
        mha + "out/bias": vstack("{}.self_attn.out_proj.bias", ident),
        blk + "MlpBlock_0/Dense_0/kernel": vstack("{}.mlp.fc1.weight", lambda w: w.T),
        blk + "MlpBlock_0/Dense_0/bias": vstack("{}.mlp.fc1.bias", ident),
        blk + "MlpBlock_0/Dense_1/kernel": vstack("{}.mlp.fc2.weight", lambda w: w.T),
        blk + "MlpBlock_0/Dense_1/bias": vstack("{}.mlp.fc2.bias", ident),
        "img/Transformer/encoder_norm/scale": sd["vit.post_layernorm.weight"],
        "img/Transformer/encoder_norm/bias": sd["vit.post_layernorm.bias"],
        "img/head/kernel": sd["proj.linear.weight"].T,
        "img/head/bias": sd["proj.linear.bias"],
        # big_vision's vocabulary ends below transformers' <image> token (and its padding rows)
        "llm/embedder/input_embedding": emb[: cfg.get("image_token_index", cfg.get("image_token_id", len(emb)))],
        "llm/layers/attn/attn_vec_einsum/w": tstack("{}.self_attn.o_proj.weight", lambda w: w.T.reshape(h, hd, d)),
        "llm/layers/mlp/linear": tstack("{}.mlp.down_proj.weight", lambda w: w.T),
        "llm/layers/pre_attention_norm/scale": tstack("{}.input_layernorm.weight", ident),
        "llm/layers/pre_ffw_norm/scale": tstack("{}.post_attention_layernorm.weight", ident),
        "llm/final_norm/scale": sd["llm.norm.weight"],
    }
    for bv, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        p[mha + bv + "/kernel"] = vstack("{}.self_attn." + hf + ".weight", lambda w: w.T.reshape(vw, vh, vhd))
        p[mha + bv + "/bias"] = vstack("{}.self_attn." + hf + ".bias", lambda b: b.reshape(vh, vhd))

    def heads(w, n):  # HF (n*hd, D) -> big_vision (n, D, hd)
        return w.reshape(n, hd, d).transpose(0, 2, 1)

    q = tstack("{}.self_attn.q_proj.weight", lambda w: heads(w, h))
    kk = tstack("{}.self_attn.k_proj.weight", lambda w: heads(w, k))
    vv = tstack("{}.self_attn.v_proj.weight", lambda w: heads(w, k))
    if k == h:
        p["llm/layers/attn/qkv_einsum/w"] = np.stack([q, kk, vv], axis=1)
    else:
        p["llm/layers/attn/q_einsum/w"] = q
        p["llm/layers/attn/kv_einsum/w"] = np.stack([kk, vv], axis=1)
    gate = tstack("{}.mlp.gate_proj.weight", lambda w: w.T)
    up = tstack("{}.mlp.up_proj.weight", lambda w: w.T)
    p["llm/layers/mlp/gating_einsum"] = np.stack([gate, up], axis=1)

    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(f, **{"params/" + n: np.ascontiguousarray(v, np.float32) for n, v in sorted(p.items())})
    return out_path
