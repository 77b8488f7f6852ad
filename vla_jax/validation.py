"""One check of a whole training config before anything is built: every field of every group, then the rules
that tie fields together.

:func:`validate_config` raises :class:`~vla_jax.errors.ConfigError` on the first problem, as one line that
names the dotted field, its value and what is allowed::

    config key 'optimizer.b1' is 1.0; expected a finite float in [0, 1)

and returns warning lines (settings that run but are probably not meant) for the caller to print.

Per-field rules (type, range, finiteness, choices) are one table, :func:`field_rules`, whose choices come from
the modules that use the fields. Rules between fields are a few functions (:data:`CROSS_CHECKS`): the batch
against gradient accumulation and the mesh, model shapes, tokenizer vocabularies and prompt length, and the
data config against the dataset specs of its mixture (specs only: no data is read).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from vla_jax import sharding
from vla_jax.errors import ConfigError, DataError

# Where each group's defaults come from (named in the error for a missing field).
GROUP_DEFAULTS = {
    "data": "vla_jax.data.config.data_config()",
    "tokenizer": "vla_jax.tokenizers.config.tokenizer_config()",
    "model": "vla_jax.models.presets.model_config()",
    "optimizer": "vla_jax.training.optimizer.optimizer_config()",
}

# What tokenizers.text.train_text_model puts in every model besides merges: pad, eos, bos, unk, and one piece
# per byte (byte fallback).
TEXT_SPECIAL_IDS = 4
TEXT_BYTE_PIECES = 256


def _name(field: str) -> str:
    """``config key 'a.b'``, or a command-line flag as it is (``--mesh``)."""
    return field if field.startswith("--") else f"config key {field!r}"


def _show(value: Any) -> str:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    return repr(value)


def _fail(field: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{_name(field)} is {_show(value)}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_mapping(value) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, Mapping))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- per-field rules ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """A check of one field's value; ``note`` is appended to what is expected."""

    note: str = dataclasses.field(default="", kw_only=True)

    def ok(self, value) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, field: str, value) -> None:
        if not self.ok(value):
            expected = self.describe()
            raise _fail(field, value, f"{expected} ({self.note})" if self.note else expected)


def _number(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_number(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_number(high)}"
    return ""


def _in_range(value, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value < low or (low_open and value == low)):
        return False
    return not (high is not None and (value > high or (high_open and value == high)))


@dataclasses.dataclass(frozen=True)
class Int(Rule):
    low: int | None = None
    high: int | None = None
    even: bool = False

    def ok(self, value) -> bool:
        return _is_int(value) and _in_range(value, self.low, self.high, False, False) and not (self.even and value % 2)

    def describe(self) -> str:
        return f"{'an even' if self.even else 'an'} int{_range_text(self.low, self.high, False, False)}"


@dataclasses.dataclass(frozen=True)
class Float(Rule):
    """A finite number (ints are fine); ``allow_inf`` also takes +inf."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False

    def ok(self, value) -> bool:
        if not _is_number(value) or math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            return False
        return _in_range(value, self.low, self.high, self.low_open, self.high_open)

    def describe(self) -> str:
        text = _range_text(self.low, self.high, self.low_open, self.high_open)
        return f"a float{text} or inf" if self.allow_inf else f"a finite float{text}"


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
    choices: tuple

    def ok(self, value) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)

    def describe(self) -> str:
        return f"one of {list(self.choices)}"

    def check(self, field: str, value) -> None:
        if len(self.choices) == 1 and not self.ok(value):  # the only value: the note says why
            raise _fail(field, value, f"{self.choices[0]!r}: {self.note}" if self.note else repr(self.choices[0]))
        super().check(field, value)


@dataclasses.dataclass(frozen=True)
class Bool(Rule):
    def ok(self, value) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


@dataclasses.dataclass(frozen=True)
class Str(Rule):
    def ok(self, value) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return "a string"


@dataclasses.dataclass(frozen=True)
class Names(Rule):
    """A tuple of strings, each from ``choices`` if given; ``distinct``: no name twice."""

    choices: tuple | None = None
    non_empty: bool = False
    distinct: bool = True

    def ok(self, value) -> bool:
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            return False
        if (self.distinct and len(set(value)) != len(value)) or (self.non_empty and not value):
            return False
        return self.choices is None or all(v in self.choices for v in value)

    def describe(self) -> str:
        what = "a non-empty tuple of" if self.non_empty else "a tuple of"
        what += " distinct" if self.distinct else ""
        return f"{what} names from {self.choices}" if self.choices else f"{what} strings"


@dataclasses.dataclass(frozen=True)
class Regex(Rule):
    def ok(self, value) -> bool:
        if not isinstance(value, str):
            return False
        try:
            re.compile(value)
        except re.error:
            return False
        return True

    def describe(self) -> str:
        return "a valid Python regular expression"


@dataclasses.dataclass(frozen=True)
class File(Rule):
    def ok(self, value) -> bool:
        return isinstance(value, str) and (not value or pathlib.Path(value).expanduser().is_file())

    def describe(self) -> str:
        return "'' or the path of an existing file"


@dataclasses.dataclass(frozen=True)
class RunSource(Rule):
    """'' or a directory a run can start from: a training workdir (``checkpoints/``) or a release (``release.json``)."""

    def ok(self, value) -> bool:
        if not isinstance(value, str):
            return False
        path = pathlib.Path(value).expanduser()
        return not value or (path / "checkpoints").is_dir() or (path / "release.json").is_file()

    def describe(self) -> str:
        return "'' or a training workdir (it has checkpoints/) or a release directory (it has release.json)"


@dataclasses.dataclass(frozen=True)
class Group(Rule):
    """A field whose value is a mapping or a structure, checked by ``fn(field, value)`` (which raises)."""

    fn: Callable[[str, Any], None]

    def check(self, field: str, value) -> None:
        self.fn(field, value)


def check_mesh_shape(mesh: Mapping[str, int], field: str = "mesh") -> None:
    """Mesh axes from ``sharding.MESH_AXES``, each a positive int or -1 (the remaining devices), one -1 at most.

    ``field`` names the source in errors: a config key (``mesh``) or a flag (``--mesh``).
    """
    if not _is_mapping(mesh):
        raise _fail(field, mesh, f"a mapping of mesh axes {sharding.MESH_AXES} to sizes")
    for axis, size in mesh.items():
        if axis not in sharding.MESH_AXES:
            raise ConfigError(f"{_name(field)} has an unknown axis {axis!r}; expected axes from {sharding.MESH_AXES}")
        if not _is_int(size) or (size < 1 and size != -1):
            where = f"{field} axis {axis!r}" if field.startswith("--") else f"{field}.{axis}"
            raise _fail(where, size, "a positive int, or -1 for the remaining devices")
    if list(mesh.values()).count(-1) > 1:
        raise _fail(field, dict(mesh.items()), "at most one axis of -1 (the one that takes the remaining devices)")


def _check_sharding_rules(field: str, rules) -> None:
    shape = (
        f"a tuple of (logical axis, None | mesh axis | tuple of mesh axes) pairs, mesh axes from {sharding.MESH_AXES}"
    )
    if not isinstance(rules, (tuple, list)):
        raise _fail(field, rules, shape)
    seen = set()
    for entry in rules:
        good = isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)
        axes = entry[1] if good else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if not (good and isinstance(axes, (tuple, list)) and all(a in sharding.MESH_AXES for a in axes)):
            raise ConfigError(f"{_name(field)} has the entry {entry!r}; expected {shape}")
        if entry[0] in seen:
            raise ConfigError(f"{_name(field)} maps the logical axis {entry[0]!r} twice; expected one entry per name")
        seen.add(entry[0])


@dataclasses.dataclass(frozen=True)
class Pair(Rule):
    """A ``(lo, hi)`` pair of finite numbers with ``low <(=) lo <(=) hi <= high``."""

    low: float = 0.0
    high: float | None = None
    low_open: bool = False
    strict: bool = False  # lo < hi rather than lo <= hi

    def ok(self, value) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(_is_number(v) for v in value):
            return False
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi)) or (hi <= lo if self.strict else hi < lo):
            return False
        return _in_range(lo, self.low, None, self.low_open, False) and _in_range(hi, None, self.high, False, False)

    def describe(self) -> str:
        low, lo_hi = f"{_number(self.low)} {'<' if self.low_open else '<='}", "<" if self.strict else "<="
        return f"a pair (lo, hi) with {low} lo {lo_hi} hi" + (
            f" <= {_number(self.high)}" if self.high is not None else ""
        )


@functools.cache
def augment_rules() -> dict[str, Rule]:
    """Per op of ``frame_transforms.augment_image``: what its setting may be (the bounds tf.image enforces)."""
    from vla_jax.data import frame_transforms

    rules = {
        "crop_scale": Pair(0.0, 1.0, low_open=True, note="fraction of the image area"),
        "crop_ratio": Pair(0.0, low_open=True, note="aspect ratio of the crop"),
        "brightness": Float(0.0, 1.0, note="max delta in [0, 1] pixel units"),
        "contrast": Pair(0.0, strict=True, note="factor range"),
        "saturation": Pair(0.0, strict=True, note="factor range"),
        "hue": Float(0.0, 0.5, note="max delta; tf.image allows at most 0.5"),
    }
    assert set(rules) == set(frame_transforms.AUGMENT_OPS), "a new augmentation op needs a rule here"
    return rules


def _check_augment(field: str, augment) -> None:
    if not _is_mapping(augment):
        raise _fail(field, augment, "a mapping of camera role -> {op: setting}")
    rules = augment_rules()
    for role, ops in augment.items():
        if not _is_mapping(ops):
            raise _fail(f"{field}.{role}", ops, f"a mapping of ops from {tuple(rules)} to their settings")
        for op, setting in ops.items():
            if op not in rules:
                raise ConfigError(
                    f"{_name(f'{field}.{role}')} has an unknown op {op!r} (= {_show(setting)}); "
                    f"expected ops from {tuple(rules)}"
                )
            if setting in (None, 0, (), []) or setting is False:  # augment_image skips an op whose setting is falsy
                continue
            rules[op].check(f"{field}.{role}.{op}", setting)


@functools.cache
def field_rules() -> dict[str, Rule]:
    """Every field of a training config and its rule; choices come from the code that uses them."""
    from vla_jax.data import frame_transforms, loader, statistics
    from vla_jax.data.specs import ACTION_SPACES
    from vla_jax.envs import base as env_base
    from vla_jax.envs import registry as env_registry
    from vla_jax.models import moe
    from vla_jax.models.lora import TARGETS as lora_targets
    from vla_jax.models.vla import DTYPES, MODES, REMAT_POLICIES
    from vla_jax.tokenizers.config import ACTION_KINDS
    from vla_jax.training.optimizer import SCHEDULES

    positive = Float(0.0, low_open=True)
    non_negative = Float(0.0)
    fraction = Float(0.0, 1.0, high_open=True)
    rules: dict[str, Rule] = {
        # Run level (vla_jax.training.defaults.run_config).
        "num_steps": Int(0),
        "batch_size": Int(1, note="global, over every process and device"),
        "seed": Int(0, 2**32 - 1, note="JAX keeps 32 bits of a seed; others alias these"),
        "grad_accum_steps": Int(1),
        "ema_decay": Float(0.0, 1.0, high_open=True, note="0: no EMA"),
        "max_nonfinite_skips": Int(0),
        "log_every": Int(1),
        "eval_every": Int(1),
        "checkpoint_every": Int(1),
        "keep_checkpoints": Int(1),
        "keep_period": Int(0, note="0: keep only the last keep_checkpoints"),
        "tensorboard": Bool(),
        "wandb_project": Str(),
        "device_peak_flops": Float(0.0, note="0: from the table of known accelerators"),
        "closed_loop.env": Choice(("", *sorted(env_registry.ENVS)), note='"": no closed-loop evaluation'),
        "closed_loop.episodes": Int(1, env_base.MAX_EVAL_EPISODES),
        "closed_loop.num_envs": Int(1, env_registry.MAX_NUM_ENVS),
        "closed_loop.execute_steps": Int(0, note="0: the whole chunk"),
        "closed_loop.seed": Int(0, env_base.MAX_EVAL_SEED),
        "closed_loop.decoder": Choice(("", "flow", "fast"), note='"": flow where the model has it'),
        "mesh": Group(fn=lambda field, mesh: check_mesh_shape(mesh, field)),
        "sharding.rules": Group(fn=_check_sharding_rules),
        "sharding.fsdp_min_bytes": Int(0),
        "sharding.max_replicated_fraction": Float(0.0, 1.0),
        # Data (vla_jax.data.config.data_config).
        "data.mixture": Str(),
        "data.data_dir": Str(),
        "data.balance_weights": Bool(),
        "data.normalization": Choice(statistics.NORMALIZATION_MODES),
        "data.skip_unlabeled": Bool(),
        "data.max_action": Float(0.0, note="0: keep every episode"),
        "data.target_control_hz": Float(0.0, note="0: native rates"),
        "data.action_horizon": Int(1),
        "data.history": Choice((1,), note="the model reads only the current frame"),
        "data.goal_relabeling": Bool(),
        "data.subsample_length": Int(0, note="0: every step"),
        "data.action_dim": Int(0, note="0: the largest in the mixture"),
        "data.state_dim": Int(0, note="0: the largest in the mixture"),
        "data.cameras": Names(non_empty=True),
        "data.depth_cameras": Names(),
        "data.image_size": Int(1),
        "data.resize_mode": Choice(frame_transforms.RESIZE_MODES),
        "data.augment": Group(fn=_check_augment),
        "data.image_dropout": Float(0.0, 1.0, high_open=True, note="probability of dropping each camera"),
        "data.shuffle_buffer_size": Int(1),
        "data.ram_budget_gb": positive,
        "data.host_sharding": Choice(loader.HOST_SHARDING),
        "data.shuffle_ram_fraction": Float(0.0, 1.0, low_open=True),
        "data.read_threads": Int(1),
        "data.transform_threads": Int(1),
        "data.val_batches": Int(1),
        # Tokenizer (vla_jax.tokenizers.config.tokenizer_config).
        "tokenizer.action": Choice(ACTION_KINDS),
        "tokenizer.action_file": File(),
        "tokenizer.action_vocab_size": Int(1),
        "tokenizer.fast_scale": positive,
        "tokenizer.fit_chunks": Int(1),
        "tokenizer.text_model": File(note="a sentencepiece .model"),
        "tokenizer.text_vocab_size": Int(1),
        "tokenizer.vocab_size": Int(0, note="0: text ids + action ids + reserved_tail"),
        "tokenizer.reserved_tail": Int(0),
        "tokenizer.action_id_order": Choice(("up", "down")),
        "tokenizer.max_length": Int(1),
        "tokenizer.state_bins": Int(2),
        "tokenizer.decode_tokens": Int(0, note="0: max_length"),
        # Initialization from another run (vla_jax.training.init).
        "init.source": RunSource(),
        "init.step": Int(0, note="0: the latest checkpoint"),
        "init.load": Regex(),
        "init.reinit": Regex(note="'' re-initializes nothing"),
        "init.action_space_from": Choice(("", *(space.name for space in ACTION_SPACES)), note='"": none'),
        "init.action_space_expert": Choice(("share", "copy")),
        # Model (vla_jax.models.presets).
        "model.mode": Choice(MODES),
        "model.dtype": Choice(tuple(DTYPES)),
        "model.remat": Choice(tuple(REMAT_POLICIES)),
        "model.vit.patch_size": Int(1),
        "model.vit.width": Int(1),
        "model.vit.depth": Int(0),
        "model.vit.num_heads": Int(1),
        "model.vit.mlp_dim": Int(1),
        "model.vit.attention_bias": Bool(),
        "model.backbone.width": Int(1),
        "model.backbone.depth": Int(1),
        "model.backbone.num_heads": Int(1),
        "model.backbone.num_kv_heads": Int(1),
        "model.backbone.head_dim": Int(2, even=True, note="rotary embeddings rotate pairs of dims"),
        "model.backbone.mlp_dim": Int(1),
        "model.expert.width": Int(2, even=True, note="the flow-time embedding has sine and cosine halves"),
        "model.expert.mlp_dim": Int(1),
        "model.expert.state_token": Bool(),
        "model.expert.plan": Names(moe.KINDS, distinct=False, note="per layer; () gives moe.default_plan"),
        "model.expert.moe.as_dispatch": Choice(moe.DISPATCHES),
        "model.expert.moe.hb_dispatch": Choice(moe.DISPATCHES),
        "model.expert.moe.activation": Choice(("swish", "gelu")),
        "model.expert.moe.as_experts": Int(1),
        "model.expert.moe.as_mlp_dim": Int(1),
        "model.expert.moe.as_capacity_factor": positive,
        "model.expert.moe.as_reg_weight": non_negative,
        "model.expert.moe.as_reg_temperature": positive,
        "model.expert.moe.hb_experts": Int(1),
        "model.expert.moe.hb_mlp_dim": Int(1),
        "model.expert.moe.hb_top_k": Int(1),
        "model.expert.moe.hb_shared_mlp_dim": Int(0, note="0: no shared expert"),
        "model.expert.moe.hb_capacity_factor": positive,
        "model.expert.moe.hb_balance_weight": non_negative,
        "model.expert.moe.hb_z_loss_weight": non_negative,
        "model.lora.rank": Int(0, note="0: no LoRA"),
        "model.lora.alpha": positive,
        "model.lora.targets": Names(tuple(lora_targets), non_empty=True),
        "model.lora.rslora": Bool(),
        "model.flow.num_steps": Int(1),
        "model.flow.loss_weight": positive,
        "model.flow.knowledge_insulation": Bool(),
        # Optimizer (vla_jax.training.optimizer.optimizer_config).
        "optimizer.schedule": Choice(SCHEDULES),
        "optimizer.peak_lr": positive,
        "optimizer.end_lr": non_negative,
        "optimizer.warmup_steps": Int(0),
        "optimizer.clip_norm": Float(
            0.0, low_open=True, allow_inf=True, note="inf: no clipping; 0 would zero every update"
        ),
        "optimizer.b1": fraction,
        "optimizer.b2": fraction,
        "optimizer.weight_decay": non_negative,
        "optimizer.freeze": Regex(
            note="a preset (vision, backbone, all_but_expert, all_but_lora) or a regex over parameter paths; '' freezes nothing"
        ),
    }
    return rules


# -- the config as a tree of dotted keys --------------------------------------------------------------------------


def _lookup(config: ml_collections.ConfigDict, field: str):
    node = config
    parts = field.split(".")
    for depth, part in enumerate(parts):
        if not _is_mapping(node) or part not in node:
            missing = ".".join(parts[: depth + 1])
            defaults = GROUP_DEFAULTS.get(parts[0], "vla_jax.training.defaults.run_config()")
            raise ConfigError(f"{_name(missing)} is missing; every training config has it (defaults: {defaults})")
        node = node[part]
    return node


def _unknown_keys(config, rules: Mapping[str, Rule], prefix: str = "") -> list[str]:
    """Dotted keys that no rule knows (a typo in a config file, or a new option without a rule)."""
    known_groups = {".".join(k.split(".")[:i]) for k in rules for i in range(1, k.count(".") + 1)}
    unknown = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted in rules:
            continue
        if dotted in known_groups and _is_mapping(value):
            unknown += _unknown_keys(value, rules, dotted + ".")
        else:
            unknown.append(dotted)
    return unknown


# -- rules between fields -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Context:
    """What the cross-field checks share: the mixture's dataset specs and the device count (None: abstract)."""

    mixture: str
    datasets: tuple  # of specs.DatasetSpec
    device_count: int | None

    @property
    def action_dim(self) -> int:
        return max(spec.action_dim for spec in self.datasets)


def _mixture_context(config, device_count: int | None) -> Context:
    from vla_jax.data import specs

    value = config.data.mixture
    try:
        mixture = specs.resolve_mixture(value)
        datasets = tuple(specs.get_spec(name) for name, _ in mixture.weights)
    except DataError as e:
        raise ConfigError(
            f"{_name('data.mixture')} is {value!r}; expected a registered mixture or dataset, or "
            f"'name:weight,name:weight': {e}"
        ) from None
    return Context(mixture.name, datasets, device_count)


def _check_data_against_specs(config, ctx: Context) -> list[str]:
    """Every camera, depth camera and augmented role is one that some dataset of the mixture has."""
    data = config.data
    image_roles = sorted(set().union(*(spec.cameras for spec in ctx.datasets)))
    depth_roles = sorted(set().union(*(spec.depth_cameras for spec in ctx.datasets)))
    augment = dict(data.augment)
    for field, roles, have, kind in (
        ("data.cameras", tuple(data.cameras), image_roles, "camera"),
        ("data.depth_cameras", tuple(data.depth_cameras), depth_roles, "depth camera"),
        ("data.augment", tuple(augment), image_roles, "camera"),
    ):
        missing = [role for role in roles if role not in have]
        if missing:
            allowed = f"roles from {have}" if have else f"() (no dataset of the mixture has a {kind})"
            raise ConfigError(
                f"{_name(field)} is {_show(data[field.split('.')[1]])}: no dataset of mixture {ctx.mixture!r} "
                f"has a {missing[0]!r} {kind}; expected {allowed}"
            )
    warnings = [
        f"{_name('data.augment')} augments the {role!r} camera, which is not in data.cameras {tuple(data.cameras)}; "
        "it is ignored"
        for role in augment
        if role not in data.cameras
    ]
    for role, ops in augment.items():
        if ops.get("crop_ratio") and not ops.get("crop_scale"):
            warnings.append(f"{_name(f'data.augment.{role}.crop_ratio')} has no effect without crop_scale")
    if data.image_dropout > 0 and len(data.cameras) == 1:
        warnings.append(
            f"{_name('data.image_dropout')} is {data.image_dropout}, but with one camera it has no effect "
            "(one camera is always kept)"
        )
    if data.action_dim and data.action_dim < ctx.action_dim:
        widest = next(spec.name for spec in ctx.datasets if spec.action_dim == ctx.action_dim)
        raise _fail(
            "data.action_dim",
            data.action_dim,
            f"0 (the largest in the mixture) or >= {ctx.action_dim}: dataset {widest!r} has {ctx.action_dim} action dims",
        )
    return warnings


def _check_batch_and_mesh(config, ctx: Context) -> list[str]:
    """The batch splits into micro-batches and over the devices of the mesh's batch axes."""
    batch, accum = config.batch_size, config.grad_accum_steps
    if batch % accum:
        raise _fail("grad_accum_steps", accum, f"a divisor of batch_size ({batch})")
    mesh = {axis: int(config.mesh.get(axis, 1)) for axis in sharding.MESH_AXES}
    if ctx.device_count is not None:
        known = math.prod(size for size in mesh.values() if size != -1)
        if -1 in mesh.values() and ctx.device_count % known:
            raise _fail("mesh", mesh, f"axis sizes whose product divides the {ctx.device_count} devices (one is -1)")
        if -1 not in mesh.values() and known != ctx.device_count:
            raise _fail(
                "mesh", mesh, f"axis sizes whose product is the {ctx.device_count} devices, or one axis -1 for the rest"
            )
        mesh = dict(zip(sharding.MESH_AXES, sharding.mesh_sizes(mesh, ctx.device_count), strict=True))
    # Without a device count a -1 batch axis is unknown: the other batch axes still have to divide the batch.
    devices = math.prod(mesh[axis] for axis in sharding.BATCH_AXES if mesh[axis] != -1)
    if batch % devices:
        raise _fail(
            "batch_size",
            batch,
            f"a multiple of {devices}, the devices of the batch axes {sharding.BATCH_AXES} of mesh {mesh}",
        )
    micro = batch // accum
    if accum > 1 and micro % devices:
        return [
            f"{_name('grad_accum_steps')} is {accum}: micro-batches of {micro} examples do not split over the "
            f"{devices} devices of the batch axes, so each device computes whole micro-batches"
        ]
    return []


def _check_schedule(config, ctx: Context) -> list[str]:
    opt, warnings = config.optimizer, []
    if opt.warmup_steps > config.num_steps:
        warnings.append(
            f"{_name('optimizer.warmup_steps')} is {opt.warmup_steps}, more than num_steps ({config.num_steps}): "
            f"the learning rate never reaches peak_lr (the schedule clamps warmup to {max(config.num_steps - 1, 0)})"
        )
    if opt.schedule == "cosine" and opt.end_lr > opt.peak_lr:
        warnings.append(
            f"{_name('optimizer.end_lr')} is {opt.end_lr}, above peak_lr ({opt.peak_lr}): the cosine schedule rises"
        )
    return warnings


def _check_init(config, ctx: Context) -> list[str]:
    if config.init.action_space_expert == "copy" and not config.init.action_space_from:
        raise _fail(
            "init.action_space_expert",
            "copy",
            '"share", or "copy" with init.action_space_from naming the trained action space whose expert is copied',
        )
    return []


def _check_closed_loop(config, ctx: Context) -> list[str]:
    from vla_jax.envs import registry
    from vla_jax.models.vla import uses_fast, uses_flow

    loop = config.closed_loop
    if loop.execute_steps > config.data.action_horizon:
        raise _fail(
            "closed_loop.execute_steps",
            loop.execute_steps,
            f"0 (the whole chunk) or an int in [1, data.action_horizon] = [1, {config.data.action_horizon}]",
        )
    decodes = {"flow": uses_flow, "fast": uses_fast}
    if loop.decoder and not decodes[loop.decoder](config.model.mode):
        raise _fail("closed_loop.decoder", loop.decoder, f'"" or a decoder of model.mode {config.model.mode!r}')
    names = [spec.name for spec in ctx.datasets]
    if loop.env and registry.ENVS[loop.env].dataset not in names:
        raise _fail(
            "closed_loop.env",
            loop.env,
            f"an environment whose robot's dataset is in the mixture {names} (env {loop.env!r} acts as dataset "
            f'{registry.ENVS[loop.env].dataset!r}), or "" for none',
        )
    return []


def _check_model_shapes(config, ctx: Context) -> list[str]:
    from vla_jax.models import moe
    from vla_jax.models.vla import uses_flow

    model = config.model
    vit, bb, experts = model.vit, model.backbone, model.expert.moe
    if config.optimizer.freeze == "all_but_lora" and not model.lora.rank:
        raise _fail(
            "optimizer.freeze",
            "all_but_lora",
            "another preset or regex while model.lora.rank is 0 (without LoRA pairs it would freeze every parameter)",
        )
    if vit.width % vit.num_heads:
        raise _fail("model.vit.num_heads", vit.num_heads, f"a divisor of model.vit.width ({vit.width})")
    size = config.data.image_size
    if size % vit.patch_size:
        raise _fail("data.image_size", size, f"a multiple of model.vit.patch_size ({vit.patch_size})")
    if bb.num_heads % bb.num_kv_heads:
        raise _fail(
            "model.backbone.num_kv_heads", bb.num_kv_heads, f"a divisor of model.backbone.num_heads ({bb.num_heads})"
        )
    if experts.hb_top_k > experts.hb_experts:
        raise _fail(
            "model.expert.moe.hb_top_k",
            experts.hb_top_k,
            f"an int in [1, model.expert.moe.hb_experts] = [1, {experts.hb_experts}]",
        )
    plan = tuple(model.expert.plan)
    if plan and len(plan) != bb.depth:
        raise _fail("model.expert.plan", plan, f"one entry per backbone layer ({bb.depth}, model.backbone.depth)")
    if not plan and uses_flow(model.mode) and len(moe.default_plan(bb.depth)) != bb.depth:
        raise _fail(
            "model.expert.plan",
            plan,
            f"one entry per backbone layer ({bb.depth}): moe.default_plan gives "
            f"{len(moe.default_plan(bb.depth))} for model.backbone.depth={bb.depth}, so set the plan",
        )
    if model.mode == "flow" and model.flow.knowledge_insulation:
        # Insulation stops the expert's gradient at the backbone, and flow mode has no FAST loss: nothing would
        # train the vision encoder and backbone (weight decay would only shrink them).
        raise _fail(
            "model.flow.knowledge_insulation",
            True,
            "False with model.mode 'flow' (with insulation nothing trains the backbone and vision encoder; "
            "freeze them with optimizer.freeze, or train FAST tokens too with mode 'fast+flow')",
        )
    return []


@functools.cache
def _prompt_characters(state_bins: int) -> int:
    """Characters of the fixed prompt text that the trained text model needs a piece for (not the state bins)."""
    from vla_jax.tokenizers import build

    symbols = {str(b) for b in range(state_bins)}
    text = "".join(build.text_corpus([""], state_bins))
    return len({c for c in text if c.isprintable()} - symbols)  # sentencepiece keeps no piece for "\n"


def _check_tokenizer(config, ctx: Context) -> list[str]:
    """Vocabularies hold their alphabets and reserved ids; prompts and decoding have room for an action."""
    from vla_jax.models.vla import uses_fast
    from vla_jax.tokenizers import fast
    from vla_jax.tokenizers.binning import BinningTokenizer
    from vla_jax.tokenizers.text import SentencePieceTokenizer

    tok = config.tokenizer
    if tok.text_model:
        try:
            text = SentencePieceTokenizer.from_file(pathlib.Path(tok.text_model).expanduser())
        except ValueError as e:
            raise _fail("tokenizer.text_model", tok.text_model, f"a sentencepiece .model file ({e})") from None
        text_ids, has_bos = text.vocab_size, text.bos_id is not None
    else:
        chars = _prompt_characters(tok.state_bins)
        need = TEXT_SPECIAL_IDS + TEXT_BYTE_PIECES + tok.state_bins + chars
        if tok.text_vocab_size < need:
            raise _fail(
                "tokenizer.text_vocab_size",
                tok.text_vocab_size,
                f"an int >= {need}: {TEXT_SPECIAL_IDS} special ids + {TEXT_BYTE_PIECES} byte pieces + "
                f"{tok.state_bins} state-bin symbols (tokenizer.state_bins) + {chars} characters of the prompt text, "
                "plus one per other character of the instructions",
            )
        text_ids, has_bos = tok.text_vocab_size, True

    fast_mode = uses_fast(config.model.mode)  # flow mode fits no action tokenizer and reserves no action ids
    if fast_mode:
        if tok.action == "binning":
            action_min, why = BinningTokenizer(1, 1).vocab_size, "the binning tokenizer's bins"
        else:
            alphabet = 1 + 2 * fast.MIN_MARGIN
            action_min = alphabet + 1
            why = f"FAST needs more ids than its coefficient alphabet, which has at least {alphabet} characters"
        if tok.action_vocab_size < action_min:
            raise _fail("tokenizer.action_vocab_size", tok.action_vocab_size, f"an int >= {action_min} ({why})")

    if tok.vocab_size:
        action_ids = tok.action_vocab_size if fast_mode else 0
        actions = f"action_vocab_size ({action_ids})" if fast_mode else "no action ids (flow mode)"
        if tok.text_model:  # action ids may take the tail of a big text vocabulary (text ids there become unknown)
            need = max(text_ids, action_ids + tok.reserved_tail + 1)
            why = (
                f"every id of the {text_ids}-id text model; {actions} + reserved_tail ({tok.reserved_tail}) above id 0"
            )
        else:
            need = text_ids + action_ids + tok.reserved_tail
            why = f"text_vocab_size ({text_ids}) + {actions} + reserved_tail ({tok.reserved_tail})"
        if tok.vocab_size < need:
            raise _fail("tokenizer.vocab_size", tok.vocab_size, f"0 or an int >= {need}: {why}")

    # The shortest possible prompt: [BOS], >= 1 id of "Task: ..., State: ...;" and, in fast modes, the postfix
    # "Action: " (>= 1 id), the action ids (>= 1; binning: one per value), "|" (>= 1 id) and EOS.
    prefix = int(has_bos) + 1
    postfix_actions = 1
    if tok.action == "binning":
        postfix_actions = config.data.action_horizon * (config.data.action_dim or ctx.action_dim)
    shortest = prefix + (3 + postfix_actions if fast_mode else 0)
    if tok.max_length < shortest:
        parts = "the prompt prefix" + (" and the action postfix" if fast_mode else "")
        raise _fail(
            "tokenizer.max_length",
            tok.max_length,
            f"an int >= {shortest}: no shorter prompt holds {parts}; instructions, state values and action tokens "
            "need more",
        )
    if tok.decode_tokens > tok.max_length or (fast_mode and 0 < tok.decode_tokens < 3):
        low = 3 if fast_mode else 1
        raise _fail(
            "tokenizer.decode_tokens",
            tok.decode_tokens,
            f"0 (max_length) or an int in [{low}, tokenizer.max_length] = [{low}, {tok.max_length}]"
            + (": greedy decoding writes 'Action: ', an action id and '|'" if fast_mode else ""),
        )
    return []


CROSS_CHECKS: tuple[Callable[[ml_collections.ConfigDict, Context], list[str]], ...] = (
    _check_batch_and_mesh,
    _check_schedule,
    _check_init,
    _check_closed_loop,
    _check_data_against_specs,
    _check_model_shapes,
    _check_tokenizer,
)


def validate_config(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> list[str]:
    """Checks every field of every section; raises vla_jax.errors.ConfigError on the first problem.

    Returns warning lines (e.g. warmup_steps > num_steps) for the caller to print. With ``device_count``
    the mesh must fit that many devices; without it the mesh is abstract (a dry run, a summary).
    """
    rules = field_rules()
    for field, rule in rules.items():
        rule.check(field, _lookup(config, field))
    warnings = [
        f"{_name(key)} is not a known option; it was not checked (vla_jax.validation has no rule for it)"
        for key in _unknown_keys(config, rules)
    ]
    ctx = _mixture_context(config, device_count)
    for check in CROSS_CHECKS:
        warnings += check(config, ctx)
    return warnings
