"""Dataset specs, action spaces, mixtures, and the registry that finds them.

A :class:`DatasetSpec` says what one RLDS dataset holds and how to read it.
Specs live one module per dataset (or dataset family) in the package
``vla_jax.data.datasets``; every module there is imported on first lookup, so
adding a dataset means adding one file, with no central table to edit. Spec
files outside the package (a lab's own robot) are found through the
``VLA_JAX_SPECS`` environment variable: a ``os.pathsep``-separated list of
``.py`` files or directories of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import pathlib
import pkgutil
import sys
from collections.abc import Callable, Mapping

from vla_jax.errors import DataError

CAMERA_ROLES = ("primary", "secondary", "wrist")
SPEC_PACKAGE = "vla_jax.data.datasets"
SPEC_PATH_ENV = "VLA_JAX_SPECS"


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """A family of action encodings; its index in ``ACTION_SPACES`` is the id the HiMoE router sees.

    ``delta`` says whether the non-gripper dims are per-step increments (summed
    when steps are merged by resampling) or absolute targets (the last is kept).
    """

    name: str
    description: str
    delta: bool


# Append only: the position of an entry is its id in batches and checkpoints.
ACTION_SPACES = (
    ActionSpace("eef_delta", "end-effector position + rotation deltas, gripper (7-D typical)", delta=True),
    ActionSpace("eef_absolute", "absolute end-effector pose targets, gripper", delta=False),
    ActionSpace("joint_position", "absolute joint position targets of one arm, gripper", delta=False),
    ActionSpace("bimanual_joint_position", "absolute joint targets of two arms with grippers (14-D typical)", False),
    ActionSpace("joint_velocity", "joint velocities of one arm, gripper", delta=True),
    ActionSpace("base_2d", "planar velocity or displacement of a mobile base / 2-D pointer", delta=True),
    ActionSpace("eef_delta_xyz", "end-effector position deltas without rotation, gripper", delta=True),
)
ACTION_SPACE_IDS = {space.name: i for i, space in enumerate(ACTION_SPACES)}

# Gripper conventions of the action's gripper dims as stored (after the spec's
# standardize_fn). The pipeline maps every one of them to 1=open, 0=closed.
GRIPPER_CONVENTIONS = {
    "open=1,closed=0": (0.0, 1.0),
    "open=1,closed=-1": (-1.0, 1.0),
    "closed=1,open=0": (0.0, 1.0),
    "closed=1,open=-1": (-1.0, 1.0),
    "none": None,
}
# Each convention as ``canonical = scale * stored + offset`` (canonical: 1=open, 0=closed); a policy inverts it.
GRIPPER_TO_CANONICAL = {
    "open=1,closed=0": (1.0, 0.0),
    "open=1,closed=-1": (0.5, 0.5),
    "closed=1,open=0": (-1.0, 1.0),
    "closed=1,open=-1": (-0.5, 0.5),
}
STATE_ENCODINGS = ("none", "eef_pos_euler", "eef_pos_quat", "joint", "joint_bimanual", "other")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A declarative description of one RLDS dataset.

    Key paths are ``/``-separated. ``cameras``, ``depth_cameras`` and
    ``state_keys`` are relative to the step's ``observation``; ``action_key``
    and ``language_key`` are relative to the step.

    Attributes:
      name: registry name, also the RLDS builder name on disk.
      action_space: a name from ``ACTION_SPACES``.
      action_dims: the meaning of each action dimension, in order; gripper dims
        are those whose name contains ``gripper``.
      normalize_action: per action dim, whether it is normalized (grippers are not).
      control_frequency_hz: how often actions are issued.
      gripper_convention: a key of ``GRIPPER_CONVENTIONS``.
      cameras: camera role (``primary``/``secondary``/``wrist``) to the image
        key; roles left out are missing and become masked padding.
      depth_cameras: camera role to a depth image key.
      state_keys: keys concatenated into the state (proprio) vector.
      state_encoding: what the state vector holds, one of ``STATE_ENCODINGS``.
      language_key: the key holding the instruction; None if the dataset has none.
      action_key: the key holding the action (after ``standardize_fn``).
      builder_name: the RLDS builder directory name on disk, if not ``name``
        (lets two specs read one dataset, or a spec keep a shorter name).
      version: the RLDS builder version directory.
      config_name: the builder config directory, if the dataset has one.
      train_split / val_split: the tfds splits to train and validate on;
        ``val_split=None`` holds out the last ``val_fraction`` of ``train_split``.
      standardize_fn: optional fix-up of the raw trajectory (a pure tf function
        of the trajectory dict) run before anything else, e.g. assembling the
        action vector from several keys.
      notes: free text for humans (provenance, quirks).
    """

    name: str
    action_space: str
    action_dims: tuple[str, ...]
    normalize_action: tuple[bool, ...]
    control_frequency_hz: float
    gripper_convention: str = "open=1,closed=0"
    cameras: Mapping[str, str] = dataclasses.field(default_factory=dict)
    depth_cameras: Mapping[str, str] = dataclasses.field(default_factory=dict)
    state_keys: tuple[str, ...] = ()
    state_encoding: str = "none"
    language_key: str | None = "language_instruction"
    action_key: str = "action"
    builder_name: str | None = None
    version: str = "1.0.0"
    config_name: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    val_fraction: float = 0.05
    standardize_fn: Callable[[dict], dict] | None = None
    notes: str = ""

    def __post_init__(self):
        def fail(message: str):
            raise DataError(f"dataset spec {self.name!r}: {message}")

        for field, roles in (("cameras", self.cameras), ("depth_cameras", self.depth_cameras)):
            unknown = set(roles) - set(CAMERA_ROLES)
            if unknown:
                fail(f"{field} has unknown roles {sorted(unknown)}; use {CAMERA_ROLES}")
        if self.action_space not in ACTION_SPACE_IDS:
            fail(f"action_space {self.action_space!r} is not one of {sorted(ACTION_SPACE_IDS)}")
        if len(self.normalize_action) != len(self.action_dims):
            fail(f"normalize_action has {len(self.normalize_action)} entries for {len(self.action_dims)} action dims")
        if self.gripper_convention not in GRIPPER_CONVENTIONS:
            fail(f"gripper_convention {self.gripper_convention!r} is not one of {sorted(GRIPPER_CONVENTIONS)}")
        if self.gripper_dims and self.gripper_convention == "none":
            fail(f"action dims {self.gripper_dims} are grippers but gripper_convention is 'none'")
        if self.state_encoding not in STATE_ENCODINGS:
            fail(f"state_encoding {self.state_encoding!r} is not one of {STATE_ENCODINGS}")
        if not self.control_frequency_hz > 0:
            fail(f"control_frequency_hz must be > 0, got {self.control_frequency_hz}")
        if not 0.0 < self.val_fraction < 1.0:
            fail(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def rlds_name(self) -> str:
        """The builder directory name under the data dir."""
        return self.builder_name or self.name

    @property
    def action_dim(self) -> int:
        return len(self.action_dims)

    @property
    def action_space_id(self) -> int:
        return ACTION_SPACE_IDS[self.action_space]

    @property
    def gripper_dims(self) -> tuple[int, ...]:
        return tuple(i for i, name in enumerate(self.action_dims) if "gripper" in name)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Named sampling weights over datasets (before any ×size balancing)."""

    name: str
    weights: tuple[tuple[str, float], ...]
    notes: str = ""

    def __post_init__(self):
        names = [n for n, _ in self.weights]
        if not names:
            raise DataError(f"mixture {self.name!r} is empty")
        if len(set(names)) != len(names):
            raise DataError(f"mixture {self.name!r} lists a dataset twice: {sorted(names)}")
        bad = [(n, w) for n, w in self.weights if not w > 0]
        if bad:
            raise DataError(f"mixture {self.name!r} has non-positive weights {bad}")


_SPECS: dict[str, DatasetSpec] = {}
_MIXTURES: dict[str, Mixture] = {}
_SPEC_ORIGINS: dict[str, str] = {}
_discovered_paths: set[str] = set()
_package_discovered = False


def _origin() -> str:
    frame = sys._getframe(2)
    return frame.f_globals.get("__file__", "?")


def register(spec: DatasetSpec) -> DatasetSpec:
    """Adds a spec to the registry; a different spec of the same name is an error."""
    if spec.name in _MIXTURES:
        raise DataError(f"dataset spec {spec.name!r} has the name of a registered mixture")
    if spec.name in _SPECS and _SPECS[spec.name] != spec:
        raise DataError(
            f"dataset spec {spec.name!r} is registered twice with different contents "
            f"(in {_SPEC_ORIGINS[spec.name]} and {_origin()})"
        )
    _SPECS[spec.name] = spec
    _SPEC_ORIGINS.setdefault(spec.name, _origin())
    return spec


def register_mixture(mixture: Mixture) -> Mixture:
    """Adds a named mixture; its datasets are checked when it is used."""
    if mixture.name in _SPECS:
        raise DataError(f"mixture {mixture.name!r} has the name of a registered dataset")
    if mixture.name in _MIXTURES and _MIXTURES[mixture.name] != mixture:
        raise DataError(f"mixture {mixture.name!r} is registered twice with different contents")
    _MIXTURES[mixture.name] = mixture
    return mixture


def _import_file(path: pathlib.Path) -> None:
    module_name = f"vla_jax_user_specs.{path.stem}_{abs(hash(str(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise DataError(f"cannot import dataset spec file {path} (from ${SPEC_PATH_ENV})")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"dataset spec file {path} (from ${SPEC_PATH_ENV}) failed to import: {e!r}") from None


def discover() -> None:
    """Imports every spec module of the package and of ``$VLA_JAX_SPECS`` (once each)."""
    global _package_discovered
    if not _package_discovered:
        package = importlib.import_module(SPEC_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{SPEC_PACKAGE}.{info.name}")
        _package_discovered = True
    for entry in filter(None, os.environ.get(SPEC_PATH_ENV, "").split(os.pathsep)):
        path = pathlib.Path(entry).expanduser().resolve()
        if str(path) in _discovered_paths:
            continue
        if path.is_dir():
            files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"${SPEC_PATH_ENV} names {entry!r}, which is neither a .py file nor a directory")
        for file in files:
            _import_file(file)
        _discovered_paths.add(str(path))


def _unknown(kind: str, name: str, known) -> DataError:
    matches = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {' or '.join(map(repr, matches))}?" if matches else ""
    return DataError(f"no {kind} named {name!r} ({len(known)} registered; `vla-jax data list` shows them){hint}")


def get_spec(name: str) -> DatasetSpec:
    """The registered spec called ``name``; unknown names suggest close matches."""
    discover()
    if name not in _SPECS:
        raise _unknown("dataset spec", name, _SPECS)
    return _SPECS[name]


def get_mixture(name: str) -> Mixture:
    discover()
    if name not in _MIXTURES:
        raise _unknown("mixture", name, _MIXTURES)
    return _MIXTURES[name]


def all_specs() -> dict[str, DatasetSpec]:
    discover()
    return dict(sorted(_SPECS.items()))


def all_mixtures() -> dict[str, Mixture]:
    discover()
    return dict(sorted(_MIXTURES.items()))


def resolve_mixture(value: str) -> Mixture:
    """A mixture from a config value: a registered mixture, one dataset, or ``"a:2,b:1"``."""
    discover()
    value = value.strip()
    if value in _MIXTURES:
        return _MIXTURES[value]
    if value in _SPECS:
        return Mixture(value, ((value, 1.0),))
    if "," in value or ":" in value:
        weights = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, _, weight = part.partition(":")
            try:
                weights.append((name.strip(), float(weight) if weight else 1.0))
            except ValueError:
                raise DataError(f"mixture {value!r}: weight {weight!r} of {name!r} is not a number") from None
        mixture = Mixture(value, tuple(weights))
        for name, _ in mixture.weights:
            get_spec(name)
        return mixture
    known = {**_SPECS, **_MIXTURES}
    raise _unknown("dataset or mixture", value, known)
