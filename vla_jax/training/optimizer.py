"""The optimizer: global-norm clipping and AdamW on a schedule, with parameters frozen by regex.

``config.optimizer`` fields: ``schedule`` ("cosine": linear warmup then cosine
decay to ``end_lr``; "rsqrt": warmup then ``peak_lr * sqrt(warmup / step)``;
"constant": warmup then ``peak_lr``), ``peak_lr``, ``end_lr``,
``warmup_steps``, ``clip_norm``, ``b1``, ``b2``, ``weight_decay`` (not on
vectors: norms, biases), ``freeze`` (a regex; parameters whose path, joined by
``/``, matches it get no update and no optimizer state; or a preset name of
``FREEZE_PRESETS``: ``vision``, ``backbone``, ``all_but_expert``, ``all_but_lora``).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from vla_jax.errors import ConfigError
from vla_jax.models.lora import is_lora_path

SCHEDULES = ("cosine", "rsqrt", "constant")


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """Every optimizer option (``config.optimizer``) with its default (π0/openpi-like)."""
    c = ml_collections.ConfigDict()
    c.schedule = "cosine"
    c.peak_lr = 2.5e-5
    c.end_lr = 2.5e-6
    c.warmup_steps = 1000
    c.clip_norm = 1.0
    c.b1 = 0.9
    c.b2 = 0.95
    c.weight_decay = 1e-10
    c.freeze = ""  # a preset (see FREEZE_PRESETS) or a regex over parameter paths, e.g. "^vit/"
    c.update(overrides)
    return c


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    warmup = min(config.warmup_steps, max(num_steps - 1, 0))
    kind = config.schedule
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.peak_lr,
            warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1),
            end_value=config.end_lr,
        )
    if kind in ("rsqrt", "constant"):
        peak, ramp = config.peak_lr, max(warmup, 1)

        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            warm = peak * jnp.minimum(step / ramp, 1.0)
            if kind == "constant":
                return warm
            return jnp.where(step < ramp, warm, peak * jnp.sqrt(ramp / jnp.maximum(step, 1.0)))

        return schedule
    raise ConfigError(f"config key 'optimizer.schedule' is {kind!r}; expected one of {SCHEDULES}")


def param_path(path) -> str:
    """``backbone/layers/0/query`` from a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


# optimizer.freeze presets (a name here, or any regex over parameter paths).
FREEZE_PRESETS = {
    "vision": r"^(vit|image_proj)/",  # the image encoder and its projection into the backbone
    "backbone": r"^(vit|image_proj|backbone)/|^embed$",  # the whole VLM: image encoder, backbone, token embeddings
    "all_but_expert": r"^(?!action_expert/)",  # everything but the flow-matching action expert
    "all_but_lora": r"^(?!.*_lora/)",  # everything but the LoRA pairs (model.lora.rank > 0)
}


def freeze_pattern(freeze: str) -> str:
    """The regex of ``optimizer.freeze``: a preset's, or the value itself."""
    return FREEZE_PRESETS.get(freeze, freeze)


def frozen_labels(params, pattern: str):
    """``"frozen"`` / ``"trained"`` per parameter; frozen when ``re.search(pattern, path)``, LoRA pairs never.

    A LoRA pair exists to be trained, so a preset like ``backbone`` that covers
    the module holding it freezes the weights beside it, not the pair.
    """
    regex = re.compile(pattern) if pattern else None

    def label(path, _) -> str:
        name = param_path(path)
        return "frozen" if regex and regex.search(name) and not is_lora_path(name) else "trained"

    return jax.tree_util.tree_map_with_path(label, params)


def check_freeze_matches(config: ml_collections.ConfigDict, params) -> None:
    """A freeze regex that matches no parameter is a ConfigError naming it (a typo would train everything)."""
    pattern = freeze_pattern(config.freeze)
    if not pattern:
        return
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config key 'optimizer.freeze' is not a valid regex ({e}): {pattern!r}") from None
    paths = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not any(regex.search(path) for path in paths):
        tops = sorted({path.split("/")[0] for path in paths})
        raise ConfigError(
            f"config key 'optimizer.freeze' is {pattern!r}, which matches no parameter; parameter paths look like "
            f"{paths[0]!r} (top-level modules {tops})"
        )


def frozen_pattern(config: ml_collections.ConfigDict, also: str = "") -> str:
    """One regex of what is frozen: ``optimizer.freeze`` (a preset or a regex) and ``also`` (e.g. LoRA's base weights)."""
    return "|".join(f"(?:{p})" for p in (freeze_pattern(config.freeze), also) if p)


def make_optimizer(
    config: ml_collections.ConfigDict, num_steps: int, also_frozen: str = ""
) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW; no weight decay on vectors. Frozen parameters are left out entirely.

    ``also_frozen``: a regex of parameters frozen beside ``config.freeze`` (the weights LoRA adapts).
    """
    trained = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            learning_rate_schedule(config, num_steps),
            b1=config.b1,
            b2=config.b2,
            weight_decay=config.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    )
    pattern = frozen_pattern(config, also_frozen)
    if not pattern:
        return trained
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config key 'optimizer.freeze' is not a valid regex ({e}): {pattern!r}") from None
    return optax.multi_transform(
        {"trained": trained, "frozen": optax.set_to_zero()}, lambda params: frozen_labels(params, pattern)
    )
