"""Dataset specs: what each RLDS dataset holds and how to read it, plus the registry."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable

from vla_jax.errors import DataError

CAMERA_ROLES = ("primary", "secondary", "wrist")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A declarative description of one RLDS dataset.

    Attributes:
      name: registry name, also the RLDS builder name on disk.
      cameras: camera role (``primary``/``secondary``/``wrist``) to the key under
        ``observation``; roles left out are missing and become masked padding.
      state_keys: keys under ``observation`` concatenated into the state vector.
      action_dims: the meaning of each action dimension, in order.
      normalize_action: per action dim, whether it is normalized (grippers are not).
      gripper_convention: how the gripper dim reads, e.g. ``"1=open,0=closed"``.
      control_frequency_hz: how often actions are issued.
      language_key: the step key holding the instruction.
      action_key: the step key holding the action.
      version: the RLDS builder version directory.
      config_name: the builder config directory, if the dataset has one.
      raw_transform: optional fix-up applied to the raw trajectory before
        standardization (a pure tf function of the trajectory dict).
    """

    name: str
    cameras: dict[str, str]
    state_keys: tuple[str, ...]
    action_dims: tuple[str, ...]
    normalize_action: tuple[bool, ...]
    gripper_convention: str
    control_frequency_hz: float
    language_key: str = "language_instruction"
    action_key: str = "action"
    version: str = "1.0.0"
    config_name: str | None = None
    raw_transform: Callable[[dict], dict] | None = None

    def __post_init__(self):
        unknown = set(self.cameras) - set(CAMERA_ROLES)
        if unknown:
            raise DataError(f"dataset spec {self.name!r}: unknown camera roles {sorted(unknown)}; use {CAMERA_ROLES}")
        if len(self.normalize_action) != len(self.action_dims):
            raise DataError(
                f"dataset spec {self.name!r}: normalize_action has {len(self.normalize_action)} entries "
                f"for {len(self.action_dims)} action dims"
            )

    @property
    def action_dim(self) -> int:
        return len(self.action_dims)


_REGISTRY: dict[str, DatasetSpec] = {}
_BUILTIN_SPEC_MODULES = ("vla_jax.data.demo_spec",)


def register(spec: DatasetSpec) -> DatasetSpec:
    """Adds a spec to the registry; a second spec of the same name is an error."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise DataError(f"dataset spec {spec.name!r} is registered twice with different contents")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    """The registered spec called ``name``; unknown names suggest close matches."""
    for module in _BUILTIN_SPEC_MODULES:
        importlib.import_module(module)
    if name not in _REGISTRY:
        matches = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {' or '.join(map(repr, matches))}?" if matches else ""
        raise DataError(f"no dataset spec named {name!r} (registered: {sorted(_REGISTRY)}){hint}")
    return _REGISTRY[name]
