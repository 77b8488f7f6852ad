"""The typed observation and training batch: what the data pipeline produces and the model consumes.

One schema for every stage: the loader builds a :class:`Batch` at the edge of
tf.data, the model and the jitted steps read its fields, and inference builds an
:class:`Observation` from a robot's raw observation. Both are frozen
dataclasses registered as pytrees, so ``jax.tree.map``, ``jax.jit`` and
shardings work on them as on dicts. Shapes and dtypes are checked in one
place, :func:`check_batch`, against the :class:`IOShapes` the model is built for.

Image streams are named by role: a camera ``"primary"`` is ``images["primary"]``
``[B, H, W, 3]`` uint8; a depth camera is ``images["depth_primary"]``
``[B, H, W, 1]`` float32 (the dataset's depth units); a goal image (goal
relabeling) is ``images["goal_primary"]`` ``[B, H, W, 3]`` uint8. Every stream has
a ``[B]`` bool mask in ``image_masks``: False where the camera is missing (its
tokens are never attended to).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vla_jax.errors import DataError

# Action spaces the HiMoE router can tell apart: ``len(vla_jax.data.specs.ACTION_SPACES)`` (a test holds them equal).
NUM_ACTION_SPACES = 7


@dataclasses.dataclass(frozen=True)
class IOShapes:
    """What the data gives the model, fixed by the data config, dataset specs and tokenizers.

    ``text_vocab_size`` and ``text_length`` are the prompt tokenizer's
    vocabulary (the embedding rows) and ``max_length``.
    """

    cameras: tuple[str, ...]
    image_size: int
    text_vocab_size: int
    text_length: int
    state_dim: int
    action_dim: int
    action_horizon: int
    depth_cameras: tuple[str, ...] = ()
    goal_images: bool = False  # one goal image per camera (data.goal_relabeling)
    num_action_spaces: int = NUM_ACTION_SPACES

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> IOShapes:
        fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    @property
    def image_streams(self) -> tuple[tuple[str, int], ...]:
        """``(name, channels)`` of every image stream, in token order: cameras, depth cameras, goal images."""
        streams = [(role, 3) for role in self.cameras]
        streams += [(f"depth_{role}", 1) for role in self.depth_cameras]
        if self.goal_images:
            streams += [(f"goal_{role}", 3) for role in self.cameras]
        return tuple(streams)


def _pytree(cls):
    fields = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=fields, meta_fields=[])


@_pytree
@dataclasses.dataclass(frozen=True)
class Observation:
    """What the model reads to act: images by stream, state, the prompt prefix and the robot's action space.

    - ``images[name]`` ``[B, H, W, C]`` and ``image_masks[name]`` ``[B]`` bool (see the module docstring).
    - ``state`` ``[B, S]`` float32, normalized and zero-padded; ``state_mask`` ``[B, S]`` bool (real dims).
    - ``prompt_tokens`` ``[B, L]`` int32; ``prompt_mask`` ``[B, L]`` (real tokens) and ``prompt_ar_mask``
      ``[B, L]`` (the causal FAST postfix; all False at inference) bool.
    - ``action_dim_mask`` ``[B, A]`` bool (the robot's real action dims) and ``action_space`` ``[B]`` int32
      (the id the AS-MoE router sees).
    """

    images: dict
    image_masks: dict
    state: object
    state_mask: object
    prompt_tokens: object
    prompt_mask: object
    prompt_ar_mask: object
    action_dim_mask: object
    action_space: object

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]


@_pytree
@dataclasses.dataclass(frozen=True)
class Batch:
    """A training or validation batch: an :class:`Observation` and its targets.

    - ``actions`` ``[B, H, A]`` float32 (normalized chunks); ``action_mask`` ``[B, H]`` bool (False past the
      episode's end).
    - ``prompt_loss_mask`` ``[B, L]`` bool (the FAST postfix ids that carry loss); ``prompt_truncated`` ``[B]``
      bool (the prompt lost its end to ``max_length``).
    - ``dataset_index`` ``[B]`` int32 (position in the mixture); ``control_hz`` ``[B]`` float32.
    """

    observation: Observation
    actions: object
    action_mask: object
    prompt_loss_mask: object
    prompt_truncated: object
    dataset_index: object
    control_hz: object

    @property
    def batch_size(self) -> int:
        return self.actions.shape[0]


def _expected(io: IOShapes, rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Field -> (shape, dtype kind) of a batch of ``rows`` under ``io``."""
    b, size, length = rows, io.image_size, io.text_length
    fields = {
        "observation.state": ((b, io.state_dim), "float32"),
        "observation.state_mask": ((b, io.state_dim), "bool"),
        "observation.prompt_tokens": ((b, length), "int32"),
        "observation.prompt_mask": ((b, length), "bool"),
        "observation.prompt_ar_mask": ((b, length), "bool"),
        "observation.action_dim_mask": ((b, io.action_dim), "bool"),
        "observation.action_space": ((b,), "int32"),
        "actions": ((b, io.action_horizon, io.action_dim), "float32"),
        "action_mask": ((b, io.action_horizon), "bool"),
        "prompt_loss_mask": ((b, length), "bool"),
        "prompt_truncated": ((b,), "bool"),
        "dataset_index": ((b,), "int32"),
        "control_hz": ((b,), "float32"),
    }
    for name, channels in io.image_streams:
        fields[f"observation.images[{name!r}]"] = ((b, size, size, channels), "uint8" if channels == 3 else "float32")
        fields[f"observation.image_masks[{name!r}]"] = ((b,), "bool")
    return fields


def _fields(batch: Batch | Observation) -> dict:
    obs = batch.observation if isinstance(batch, Batch) else batch
    found = {f"observation.{f.name}": getattr(obs, f.name) for f in dataclasses.fields(Observation)}
    for group in ("images", "image_masks"):
        for name, value in found.pop(f"observation.{group}").items():
            found[f"observation.{group}[{name!r}]"] = value
    if isinstance(batch, Batch):
        found |= {f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch) if f.name != "observation"}
    return found


def check_batch(batch: Batch | Observation, io: IOShapes, where: str = "batch") -> None:
    """Raises DataError naming the first field whose shape or dtype does not match ``io``.

    Works on NumPy arrays, ``jax.Array`` and abstract values alike (it reads
    ``.shape`` and ``.dtype`` only), so the model calls it at trace time.
    """
    found = _fields(batch)
    expected = _expected(io, batch.batch_size)
    if not isinstance(batch, Batch):
        expected = {k: v for k, v in expected.items() if k.startswith("observation.")}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise DataError(
            f"{where}: image streams {sorted(_streams(found))} do not match the model's "
            f"{[n for n, _ in io.image_streams]} (missing {missing}, unexpected {extra})"
        )
    for key, (shape, dtype) in expected.items():
        value = found[key]
        if tuple(value.shape) != shape or str(value.dtype) != dtype:
            raise DataError(
                f"{where}: {key} has shape {tuple(value.shape)} and dtype {value.dtype}; expected {shape} {dtype}"
            )


def _streams(found: dict) -> set[str]:
    prefix = "observation.images["
    return {k[len(prefix) : -1].strip("'") for k in found if k.startswith(prefix)}


def example_batch(io: IOShapes, batch_size: int, seed: int = 0, postfix: int | None = None) -> Batch:
    """A random NumPy batch of the shapes ``io`` describes (tests, benchmarks, warm-up compiles).

    The last ``postfix`` prompt ids (default: half the prompt) are a causal postfix with loss.
    """
    rng = np.random.default_rng(seed)
    b, length = batch_size, io.text_length
    postfix = length // 2 if postfix is None else postfix
    positions = np.broadcast_to(np.arange(length)[None, :], (b, length))
    images, masks = {}, {}
    for name, channels in io.image_streams:
        shape = (b, io.image_size, io.image_size, channels)
        images[name] = (
            rng.integers(0, 255, shape, dtype=np.uint8)
            if channels == 3
            else rng.uniform(0, 2, shape).astype(np.float32)
        )
        masks[name] = np.ones(b, bool)
    ar_mask = positions >= length - postfix
    observation = Observation(
        images=images,
        image_masks=masks,
        state=rng.normal(size=(b, io.state_dim)).astype(np.float32),
        state_mask=np.ones((b, io.state_dim), bool),
        prompt_tokens=rng.integers(3, io.text_vocab_size, (b, length)).astype(np.int32),
        prompt_mask=np.ones((b, length), bool),
        prompt_ar_mask=ar_mask.copy(),
        action_dim_mask=np.ones((b, io.action_dim), bool),
        action_space=(np.arange(b) % 2).astype(np.int32),
    )
    return Batch(
        observation=observation,
        actions=rng.uniform(-1, 1, (b, io.action_horizon, io.action_dim)).astype(np.float32),
        action_mask=np.ones((b, io.action_horizon), bool),
        prompt_loss_mask=ar_mask.copy(),
        prompt_truncated=np.zeros(b, bool),
        dataset_index=np.zeros(b, np.int32),
        control_hz=np.full(b, 10.0, np.float32),
    )
