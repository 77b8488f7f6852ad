"""Independent NumPy (float32) reference of openpi's π0 flow-velocity forward pass.

Used by the openpi-importer parity test: random parameters are generated under openpi's exact parameter paths
(``openpi_params``), fed through our converter into our JAX model, and the resulting flow velocity is compared with
``pi0_velocity`` below.

This file re-implements, in plain NumPy, the behaviour of (Physical-Intelligence/openpi, ``src/openpi/models/``):

* ``model.py``   -- ``Observation.from_dict`` (uint8 image -> [-1, 1] float32).
* ``siglip.py``  -- ``_Module`` (ViT, ``pool_type="none"``, learned ``pos_embedding``, scanned ``Encoder`` of
  ``Encoder1DBlock``s, ``encoder_norm``, then the ``head`` Dense into the LLM width), ``MlpBlock``.
* ``gemma.py``   -- ``Embedder.encode``, ``RMSNorm`` (non-adaptive branch), ``Attention`` (joint attention over
  several "experts" with per-expert weights, name suffix ``_1`` for the second expert via ``_name``),
  ``FeedForward``, ``Block``, ``Module.__call__`` (final norms), ``_apply_rope``.
* ``pi0.py``     -- ``make_attn_mask``, ``posemb_sincos``, ``Pi0.embed_prefix``, ``Pi0.embed_suffix`` (π0, not
  π0.5) and the forward pass of ``Pi0.compute_loss`` up to ``v_t = action_out_proj(suffix_out[:, -horizon:])``.

Pure NumPy, everything float32; no jax/flax/torch. Not a test module by itself.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# gemma.py: Attention uses this constant (from DeepMind's gemma/modules.py) instead of finfo.min.
_BIG_NEG = np.float32(-2.3819763e38)


@dataclasses.dataclass(frozen=True)
class Pi0Dims:
    """Tiny π0 sizes. The action expert shares depth / heads / kv heads / head_dim with the backbone (openpi asserts
    this in gemma.Attention and gemma.Module.setup)."""

    image_size: int = 28
    patch: int = 14
    vit_width: int = 32
    vit_depth: int = 2
    vit_heads: int = 2
    vit_mlp: int = 64
    llm_width: int = 48
    llm_depth: int = 2
    llm_heads: int = 4
    llm_kv_heads: int = 1
    head_dim: int = 16  # llm_heads * head_dim = 64 != llm_width on purpose.
    llm_mlp: int = 96
    vocab: int = 300  # openpi hard-codes PALIGEMMA_VOCAB_SIZE = 257_152; tiny here.
    expert_width: int = 40
    expert_mlp: int = 80
    action_dim: int = 6
    horizon: int = 5
    state_dim: int = 6  # openpi pads state to action_dim: state_proj is Linear(action_dim, expert_width).

    def __post_init__(self):
        if self.state_dim != self.action_dim:
            raise ValueError("openpi π0 pads the state to action_dim; state_dim must equal action_dim")
        if self.image_size % self.patch:
            raise ValueError("image_size must be a multiple of patch")
        if self.vit_width % self.vit_heads:
            raise ValueError("vit_width must be divisible by vit_heads")
        if self.llm_heads % self.llm_kv_heads:
            raise ValueError("llm_heads must be divisible by llm_kv_heads")
        if self.expert_width % 2:
            raise ValueError("posemb_sincos needs an even expert_width")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def vit_head_dim(self) -> int:
        # flax MultiHeadDotProductAttention: qkv_features defaults to the input width, split over num_heads.
        return self.vit_width // self.vit_heads


# ----------------------------------------------------------------------------------------------------------------------
# Parameters (openpi checkpoint layout: ``params`` tree flattened with "/", no trailing "value")
# ----------------------------------------------------------------------------------------------------------------------


def openpi_param_shapes(dims: Pi0Dims) -> dict[str, tuple[int, ...]]:
    """Every parameter path of an openpi π0 (non-LoRA, non-π0.5) ``params`` tree with its shape."""
    d = dims
    p, w, nv, hv, hdv, mv = d.patch, d.vit_width, d.vit_depth, d.vit_heads, d.vit_head_dim, d.vit_mlp
    L, H, K, hd = d.llm_depth, d.llm_heads, d.llm_kv_heads, d.head_dim
    img = "PaliGemma/img"
    blk = f"{img}/Transformer/encoderblock"
    mha = f"{blk}/MultiHeadDotProductAttention_0"
    shapes: dict[str, tuple[int, ...]] = {
        # siglip._Module: nn.Conv named "embedding" (HWIO kernel), learned posemb "pos_embedding".
        f"{img}/embedding/kernel": (p, p, 3, w),
        f"{img}/embedding/bias": (w,),
        f"{img}/pos_embedding": (1, d.num_patches, w),
        # siglip.Encoder with scan=True: one "encoderblock" whose params carry a leading depth axis.
        f"{blk}/LayerNorm_0/scale": (nv, w),
        f"{blk}/LayerNorm_0/bias": (nv, w),
        f"{mha}/query/kernel": (nv, w, hv, hdv),
        f"{mha}/query/bias": (nv, hv, hdv),
        f"{mha}/key/kernel": (nv, w, hv, hdv),
        f"{mha}/key/bias": (nv, hv, hdv),
        f"{mha}/value/kernel": (nv, w, hv, hdv),
        f"{mha}/value/bias": (nv, hv, hdv),
        f"{mha}/out/kernel": (nv, hv, hdv, w),
        f"{mha}/out/bias": (nv, w),
        f"{blk}/LayerNorm_1/scale": (nv, w),
        f"{blk}/LayerNorm_1/bias": (nv, w),
        f"{blk}/MlpBlock_0/Dense_0/kernel": (nv, w, mv),
        f"{blk}/MlpBlock_0/Dense_0/bias": (nv, mv),
        f"{blk}/MlpBlock_0/Dense_1/kernel": (nv, mv, w),
        f"{blk}/MlpBlock_0/Dense_1/bias": (nv, w),
        f"{img}/Transformer/encoder_norm/scale": (w,),
        f"{img}/Transformer/encoder_norm/bias": (w,),
        # siglip._Module: Dense "head" (num_classes = PaliGemma width) applied to every patch token.
        f"{img}/head/kernel": (w, d.llm_width),
        f"{img}/head/bias": (d.llm_width,),
        # gemma.Embedder (first expert only).
        "PaliGemma/llm/embedder/input_embedding": (d.vocab, d.llm_width),
    }
    # gemma.Module: nn.scan over Block named "layers" -> leading depth axis. Expert i>0 gets suffix "_i" (gemma._name).
    # num_kv_heads != num_heads -> q_einsum + kv_einsum (an MHA config would instead have qkv_einsum (L,3,H,D,hd)).
    for sfx, width, mlp in (("", d.llm_width, d.llm_mlp), ("_1", d.expert_width, d.expert_mlp)):
        lay = "PaliGemma/llm/layers"
        shapes[f"{lay}/attn/q_einsum{sfx}/w"] = (L, H, width, hd)
        shapes[f"{lay}/attn/kv_einsum{sfx}/w"] = (L, 2, K, width, hd)
        shapes[f"{lay}/attn/attn_vec_einsum{sfx}/w"] = (L, H, hd, width)
        shapes[f"{lay}/mlp{sfx}/gating_einsum"] = (L, 2, width, mlp)
        shapes[f"{lay}/mlp{sfx}/linear"] = (L, mlp, width)
        shapes[f"{lay}/pre_attention_norm{sfx}/scale"] = (L, width)
        shapes[f"{lay}/pre_ffw_norm{sfx}/scale"] = (L, width)
        shapes[f"PaliGemma/llm/final_norm{sfx}/scale"] = (width,)
    # pi0.Pi0.__init__ (π0 branch): nnx.Linear layers at the top level of the params tree.
    e, a = d.expert_width, d.action_dim
    for name, (fan_in, fan_out) in {
        "state_proj": (a, e),
        "action_in_proj": (a, e),
        "action_time_mlp_in": (2 * e, e),
        "action_time_mlp_out": (e, e),
        "action_out_proj": (e, a),
    }.items():
        shapes[f"{name}/kernel"] = (fan_in, fan_out)
        shapes[f"{name}/bias"] = (fan_out,)
    return shapes


def _fan_in(path: str, shape: tuple[int, ...]) -> int:
    """Contracted input size of a weight, used only to pick a sensible random scale."""
    if path.endswith("/embedding/kernel"):  # conv (p, p, 3, w)
        return shape[0] * shape[1] * shape[2]
    if path.endswith("/out/kernel") or "attn_vec_einsum" in path:  # (..., heads, hd, width)
        return shape[-3] * shape[-2]
    return shape[-2]


def openpi_params(dims: Pi0Dims, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 parameters keyed by openpi's exact "/"-joined parameter paths.

    Weights ~ N(0, s) with s = clip(0.5 / sqrt(fan_in), 0.02, 0.2); biases ~ N(0, 0.05); LayerNorm scales ~ 1 + N(0,
    0.1); Gemma RMSNorm scales (used as ``1 + scale``) ~ N(0, 0.2); embeddings ~ N(0, 0.1). Activations stay O(1).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for path, shape in openpi_param_shapes(dims).items():
        if path.endswith("/bias"):
            std, mean = 0.05, 0.0
        elif path.endswith("/scale") and "/img/" in path:  # flax LayerNorm: x_hat * scale + bias
            std, mean = 0.1, 1.0
        elif path.endswith("/scale"):  # gemma RMSNorm: x_hat * (1 + scale)
            std, mean = 0.2, 0.0
        elif path.endswith("pos_embedding") or path.endswith("input_embedding"):
            std, mean = 0.1, 0.0
        else:
            std, mean = float(np.clip(0.5 / math.sqrt(_fan_in(path, shape)), 0.02, 0.2)), 0.0
        out[path] = (mean + std * rng.standard_normal(shape)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Small float32 building blocks
# ----------------------------------------------------------------------------------------------------------------------


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _dense(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """flax nn.Dense / nnx.Linear: x @ kernel + bias (kernel is (in, out))."""
    y = np.matmul(x, kernel)
    return y if bias is None else y + bias


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """flax nn.gelu == jax.nn.gelu with approximate=True (the default) -- the tanh approximation."""
    c = np.float32(math.sqrt(2.0 / math.pi))
    return _f32(0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x**3))))


def _swish(x: np.ndarray) -> np.ndarray:
    """nnx.swish == silu: x * sigmoid(x)."""
    return _f32(x / (1.0 + np.exp(-x)))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return _f32(e / np.sum(e, axis=axis, keepdims=True))


def _layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """flax nn.LayerNorm (epsilon=1e-6, with scale and bias). flax computes var as E[x^2]-E[x]^2 ("fast variance");
    the two-pass form below agrees to float32 rounding."""
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean(np.square(x - mean), axis=-1, keepdims=True)
    return _f32((x - mean) / np.sqrt(var + np.float32(eps)) * scale + bias)


def _rms_norm(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """gemma.py RMSNorm, non-adaptive branch (π0): x * 1/sqrt(mean(x^2) + 1e-6) * (1 + scale)."""
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    return _f32(x * (1.0 / np.sqrt(var + np.float32(1e-6))) * (1.0 + scale))


# ----------------------------------------------------------------------------------------------------------------------
# SigLIP ViT (siglip.py)
# ----------------------------------------------------------------------------------------------------------------------


def _vit_mha(params: dict, i: int, x: np.ndarray) -> np.ndarray:
    """flax nn.MultiHeadDotProductAttention (self-attention, no mask): DenseGeneral q/k/v with biases, q scaled by
    head_dim**-0.5, softmax, DenseGeneral "out" over (heads, head_dim) with bias."""
    pre = "PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0"
    q = np.einsum("bsd,dnh->bsnh", x, params[f"{pre}/query/kernel"][i]) + params[f"{pre}/query/bias"][i]
    k = np.einsum("bsd,dnh->bsnh", x, params[f"{pre}/key/kernel"][i]) + params[f"{pre}/key/bias"][i]
    v = np.einsum("bsd,dnh->bsnh", x, params[f"{pre}/value/kernel"][i]) + params[f"{pre}/value/bias"][i]
    q = q * np.float32(q.shape[-1] ** -0.5)
    probs = _softmax(np.einsum("bqnh,bknh->bnqk", q, k), axis=-1)
    enc = np.einsum("bnqk,bknh->bqnh", probs, v)
    return _f32(np.einsum("bqnh,nhd->bqd", enc, params[f"{pre}/out/kernel"][i]) + params[f"{pre}/out/bias"][i])


def siglip_image_tokens(params: dict, dims: Pi0Dims, image: np.ndarray) -> np.ndarray:
    """siglip._Module(num_classes=llm_width, pool_type="none", posemb="learn", scan=True) on one camera.

    image: float32 [B, H, W, 3] in [-1, 1]  ->  tokens float32 [B, num_patches, llm_width] (row-major patch order).
    """
    img = "PaliGemma/img"
    blk = f"{img}/Transformer/encoderblock"
    b, hh, ww, c = image.shape
    p = dims.patch
    gh, gw = hh // p, ww // p
    # nn.Conv(width, (p, p), strides=(p, p), padding="VALID", name="embedding"): a patch matmul with the HWIO kernel.
    patches = image.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
    kernel = params[f"{img}/embedding/kernel"].reshape(p * p * c, dims.vit_width)
    x = _dense(_f32(patches), kernel, params[f"{img}/embedding/bias"])
    x = x + params[f"{img}/pos_embedding"]  # (1, N, width), added before the encoder; no class token.
    # siglip.Encoder -> Encoder1DBlock (pre-LN): x += MHA(LN0(x)); x += MLP(LN1(x)).
    for i in range(dims.vit_depth):
        y = _layer_norm(x, params[f"{blk}/LayerNorm_0/scale"][i], params[f"{blk}/LayerNorm_0/bias"][i])
        x = x + _vit_mha(params, i, y)
        y = _layer_norm(x, params[f"{blk}/LayerNorm_1/scale"][i], params[f"{blk}/LayerNorm_1/bias"][i])
        # siglip.MlpBlock: Dense_0 -> gelu (tanh approx) -> Dense_1.
        y = _dense(y, params[f"{blk}/MlpBlock_0/Dense_0/kernel"][i], params[f"{blk}/MlpBlock_0/Dense_0/bias"][i])
        y = _dense(
            _gelu_tanh(y), params[f"{blk}/MlpBlock_0/Dense_1/kernel"][i], params[f"{blk}/MlpBlock_0/Dense_1/bias"][i]
        )
        x = x + y
    x = _layer_norm(x, params[f"{img}/Transformer/encoder_norm/scale"], params[f"{img}/Transformer/encoder_norm/bias"])
    # pool_type="none": no pooling; the "head" Dense projects every token into the PaliGemma width.
    return _f32(_dense(x, params[f"{img}/head/kernel"], params[f"{img}/head/bias"]))


# ----------------------------------------------------------------------------------------------------------------------
# pi0.py helpers
# ----------------------------------------------------------------------------------------------------------------------


def make_attn_mask(input_mask: np.ndarray, mask_ar: np.ndarray) -> np.ndarray:
    """pi0.make_attn_mask: query t may attend key s iff cumsum(ar)[s] <= cumsum(ar)[t] and both are valid.
    Returns bool [B, T(query), S(key)]."""
    mask_ar = np.broadcast_to(mask_ar, input_mask.shape)
    cs = np.cumsum(mask_ar.astype(np.int32), axis=1)
    attn = cs[:, None, :] <= cs[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return attn & valid


def posemb_sincos(pos: np.ndarray, dim: int, min_period: float, max_period: float) -> np.ndarray:
    """pi0.posemb_sincos: [sin(2π pos / period), cos(2π pos / period)], period geometric over linspace(0, 1, dim/2)."""
    fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float32)
    period = _f32(min_period * (max_period / min_period) ** fraction)
    arg = _f32(pos)[:, None] * _f32(1.0 / period * 2 * np.pi)[None, :]
    return _f32(np.concatenate([np.sin(arg), np.cos(arg)], axis=-1))


def embed_prefix(
    params: dict,
    dims: Pi0Dims,
    images: np.ndarray,
    image_masks: np.ndarray,
    tokens: np.ndarray,
    token_mask: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pi0.embed_prefix: per camera (in order) its SigLIP tokens (unscaled), then the text embeddings scaled by
    sqrt(llm_width) (gemma.Embedder.encode). All prefix ar flags False (bidirectional)."""
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0 * 2.0 - 1.0  # model.Observation.from_dict
    images = _f32(images)
    b, n_cams = images.shape[:2]
    embs, masks = [], []
    for cam in range(n_cams):
        tok = siglip_image_tokens(params, dims, images[:, cam])
        embs.append(tok)
        # A masked camera is still encoded; its tokens are only excluded from attention (and from positions).
        masks.append(np.repeat(np.asarray(image_masks[:, cam], dtype=bool)[:, None], tok.shape[1], axis=1))
    table = params["PaliGemma/llm/embedder/input_embedding"]
    text = table[np.asarray(tokens)] * np.float32(math.sqrt(dims.llm_width))
    embs.append(_f32(text))
    masks.append(np.asarray(token_mask, dtype=bool))
    x = np.concatenate(embs, axis=1)
    input_mask = np.concatenate(masks, axis=1)
    ar_mask = np.zeros((x.shape[1],), dtype=bool)
    assert x.shape[0] == b
    return x, input_mask, ar_mask


def embed_suffix(
    params: dict, dims: Pi0Dims, state: np.ndarray, noisy_actions: np.ndarray, time: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pi0.embed_suffix (π0 branch, pi05=False): [state_proj(state)] + action_time_mlp_out(swish(action_time_mlp_in(
    concat[action_in_proj(x_t), posemb_sincos(t)]))). No embedding scale on these tokens. ar = [T, T, F, ..., F]."""
    b = state.shape[0]
    state_tok = _dense(_f32(state), params["state_proj/kernel"], params["state_proj/bias"])[:, None, :]
    act = _dense(_f32(noisy_actions), params["action_in_proj/kernel"], params["action_in_proj/bias"])
    temb = posemb_sincos(_f32(time), dims.expert_width, min_period=4e-3, max_period=4.0)
    temb = np.broadcast_to(temb[:, None, :], (b, dims.horizon, dims.expert_width))
    h = np.concatenate([act, temb], axis=-1)  # order: action features first, then time features
    h = _swish(_dense(h, params["action_time_mlp_in/kernel"], params["action_time_mlp_in/bias"]))
    h = _dense(h, params["action_time_mlp_out/kernel"], params["action_time_mlp_out/bias"])
    x = _f32(np.concatenate([state_tok, h], axis=1))
    input_mask = np.ones(x.shape[:2], dtype=bool)
    ar_mask = np.array([True, True] + [False] * (dims.horizon - 1), dtype=bool)
    return x, input_mask, ar_mask


# ----------------------------------------------------------------------------------------------------------------------
# Two-expert Gemma (gemma.py)
# ----------------------------------------------------------------------------------------------------------------------


def _apply_rope(x: np.ndarray, positions: np.ndarray, max_wavelength: float = 10_000.0) -> np.ndarray:
    """gemma._apply_rope on x [B, T, N, hd]: split-halves rotation (first half / second half, NOT interleaved);
    frequency i uses timescale max_wavelength ** (2i / hd)."""
    hd = x.shape[-1]
    freq_exponents = (2.0 / hd) * np.arange(hd // 2, dtype=np.float32)
    timescale = _f32(max_wavelength**freq_exponents)
    radians = _f32(positions)[..., None] / timescale[None, None, :]  # [B, T, hd/2]
    radians = radians[..., None, :]  # [B, T, 1, hd/2]
    sin, cos = np.sin(radians), np.cos(radians)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return _f32(np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1))


def _expert_weights(params: dict, sfx: str, layer: int) -> dict[str, np.ndarray]:
    lay = "PaliGemma/llm/layers"
    return {
        "q": params[f"{lay}/attn/q_einsum{sfx}/w"][layer],  # (H, D, hd)
        "kv": params[f"{lay}/attn/kv_einsum{sfx}/w"][layer],  # (2, K, D, hd)
        "o": params[f"{lay}/attn/attn_vec_einsum{sfx}/w"][layer],  # (H, hd, D)
        "gating": params[f"{lay}/mlp{sfx}/gating_einsum"][layer],  # (2, D, F)
        "linear": params[f"{lay}/mlp{sfx}/linear"][layer],  # (F, D)
        "ln_attn": params[f"{lay}/pre_attention_norm{sfx}/scale"][layer],
        "ln_ffw": params[f"{lay}/pre_ffw_norm{sfx}/scale"][layer],
    }


def gemma_two_expert_forward(
    params: dict, dims: Pi0Dims, xs: list[np.ndarray], attn_mask: np.ndarray, positions: np.ndarray
) -> list[np.ndarray]:
    """gemma.Module.__call__ with configs [paligemma, action_expert] and no adaRMS / kv cache.

    xs: [prefix [B, Tp, llm_width], suffix [B, Ts, expert_width]]; attn_mask bool [B, Tp+Ts, Tp+Ts];
    positions int [B, Tp+Ts]. Returns [final_norm(prefix), final_norm_1(suffix)].
    """
    sfxs = ("", "_1")
    n_heads, n_kv, hd = dims.llm_heads, dims.llm_kv_heads, dims.head_dim
    groups = n_heads // n_kv
    lens = [x.shape[1] for x in xs]
    xs = [_f32(x) for x in xs]
    for layer in range(dims.llm_depth):
        ws = [_expert_weights(params, s, layer) for s in sfxs]
        # gemma.Block: pre_attention_norm{_i} per expert, then gemma.Attention over the concatenated sequence.
        qs, ks, vs = [], [], []
        for x, w in zip(xs, ws, strict=True):
            h = _rms_norm(x, w["ln_attn"])
            qs.append(np.einsum("btd,ndh->btnh", h, w["q"]))
            kv = np.einsum("bsd,ckdh->cbskh", h, w["kv"])
            ks.append(kv[0])
            vs.append(kv[1])
        q = np.concatenate(qs, axis=1)
        k = np.concatenate(ks, axis=1)
        v = np.concatenate(vs, axis=1)
        q = _apply_rope(q, positions) * np.float32(hd**-0.5)  # rope first, then scale queries
        k = _apply_rope(k, positions)
        b, t = q.shape[:2]
        q = q.reshape(b, t, n_kv, groups, hd)  # heads ordered "(K G)": head n -> kv head n // groups
        logits = _f32(np.einsum("btkgh,bskh->bkgts", q, k))
        logits = np.where(attn_mask[:, None, None, :, :], logits, _BIG_NEG)
        probs = _softmax(logits, axis=-1)  # float32; fully-masked rows (padding queries) become uniform
        enc = np.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n_heads, hd)
        # Each expert projects its own slice of the joint attention output with its own attn_vec_einsum{_i}.
        start, new_xs = 0, []
        for x, w, n in zip(xs, ws, lens, strict=True):
            attn_out = np.einsum("btnh,nhd->btd", enc[:, start : start + n], w["o"])
            start += n
            x = x + attn_out
            # pre_ffw_norm{_i} + GeGLU FeedForward mlp{_i}: gelu(x @ G[0]) * (x @ G[1]) @ linear.
            h = _rms_norm(x, w["ln_ffw"])
            ff = _gelu_tanh(h @ w["gating"][0]) * (h @ w["gating"][1])
            new_xs.append(_f32(x + ff @ w["linear"]))
        xs = new_xs
    return [_rms_norm(x, params[f"PaliGemma/llm/final_norm{s}/scale"]) for x, s in zip(xs, sfxs, strict=True)]


# ----------------------------------------------------------------------------------------------------------------------
# Full π0 velocity
# ----------------------------------------------------------------------------------------------------------------------


def pi0_velocity(
    params: dict[str, np.ndarray],
    dims: Pi0Dims,
    images: np.ndarray,
    image_masks: np.ndarray,
    tokens: np.ndarray,
    token_mask: np.ndarray,
    state: np.ndarray,
    noisy_actions: np.ndarray,
    time: np.ndarray,
) -> np.ndarray:
    """Flow velocity v_t of openpi π0 (the joint prefix+suffix forward of Pi0.compute_loss; identical to one
    sample_actions step with the prefix KV cache).

    images [B, n_cams, H, W, 3] uint8 (already at dims.image_size: openpi's preprocess_observation would resize to
    224 with padding otherwise), image_masks [B, n_cams] bool, tokens [B, T] int, token_mask [B, T] bool,
    state [B, action_dim], noisy_actions [B, horizon, action_dim], time [B]  ->  [B, horizon, action_dim] float32.
    """
    prefix, prefix_mask, prefix_ar = embed_prefix(params, dims, images, image_masks, tokens, token_mask)
    suffix, suffix_mask, suffix_ar = embed_suffix(params, dims, state, noisy_actions, time)
    input_mask = np.concatenate([prefix_mask, suffix_mask], axis=1)
    ar_mask = np.concatenate([prefix_ar, suffix_ar], axis=0)
    attn_mask = make_attn_mask(input_mask, ar_mask)
    positions = np.cumsum(input_mask.astype(np.int32), axis=1) - 1
    _, suffix_out = gemma_two_expert_forward(params, dims, [prefix, suffix], attn_mask, positions)
    out = suffix_out[:, -dims.horizon :]
    return _f32(_dense(out, params["action_out_proj/kernel"], params["action_out_proj/bias"]))
