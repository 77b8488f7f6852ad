"""A trained policy on a robot's raw observations: ``Policy.load(path).infer(obs)``.

An observation is a flat dict (the same keys in process and on the wire):

- ``image/<role>``: uint8 ``[H, W, 3]`` (or ``[3, H, W]``) of any size, for each of the run's cameras
  that the dataset has (``Policy.metadata`` lists them); resized exactly as in training.
- ``depth/<role>``: float ``[H, W]`` or ``[H, W, 1]`` in the dataset's depth units, for its depth cameras.
- ``goal/<role>``: uint8 goal images, when the model was trained with goal relabeling.
- ``state``: float ``[S]`` in the robot's units (the dataset's proprio vector).
- ``prompt``: the instruction (str).
- ``dataset``: which dataset's robot this is (optional when the policy knows one); it selects the
  statistics, the action space and the action dims.
- ``seed``: int (optional, default 0): the flow sampler's noise for this request.

The result: ``actions`` float32 ``[horizon, action_dim]`` in that robot's units and
gripper convention, ``valid`` (False for a FAST chunk that did not decode cleanly;
its actions are NaN, never zeros), ``decoder``, ``dataset``, ``control_hz`` and
``policy_timing`` (milliseconds).

Preprocessing runs the pipeline's own code: the camera resize of
:func:`vla_jax.data.frame_transforms.fit_image`, :func:`vla_jax.data.statistics.normalize`
and the prompt tokenizer; postprocessing inverts normalization and the gripper mapping.
"""

from __future__ import annotations

import functools
import pathlib
import tempfile
import time

import jax
import numpy as np
import tensorflow as tf
from flax import nnx

from vla_jax import sharding
from vla_jax.data import frame_transforms
from vla_jax.data.embodiment import Embodiment
from vla_jax.data.statistics import normalize, unnormalize
from vla_jax.errors import CheckpointError, ConfigError, ObservationError
from vla_jax.inference import bundle as bundle_lib
from vla_jax.models.vla import uses_fast, uses_flow
from vla_jax.observation import Observation
from vla_jax.tokenizers import build
from vla_jax.tokenizers.prompt import PromptTokenizer

DECODERS = ("flow", "fast")
MAX_BATCH_SIZE = 64


def _bucket(rows: int) -> int:
    """Batch sizes are padded to a power of two, so a few compiled shapes serve every batch."""
    return 1 << max(rows - 1, 0).bit_length()


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The padded batch sizes that batches of up to ``max_batch`` observations use (what a server warms up)."""
    return tuple(sorted({_bucket(n) for n in range(1, max_batch + 1)}))


def _prompt_tokenizer(b: bundle_lib.PolicyBundle) -> PromptTokenizer:
    config = b.config
    with_actions = uses_fast(config.model.mode)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in b.tokenizer_files.items():
            (pathlib.Path(tmp) / name).write_bytes(data)
        text, actions = build.from_files(
            pathlib.Path(tmp),
            horizon=b.io.action_horizon,
            action_dim=b.io.action_dim,
            normalization=config.data.normalization,
            with_actions=with_actions,
        )
    return build.prompt_tokenizer(config.tokenizer, text, actions)


class Policy:
    """Loads a policy and runs it on raw observations (see the module docstring for the keys).

    ``decoder`` is ``"flow"`` (the action expert; the default where the model
    has one) or ``"fast"`` (greedy FAST decoding with the KV cache).
    ``warmup_batch_sizes`` are compiled at load; ``warmup_s`` holds their seconds.
    A batch is padded to the next power of two, or to ``pad_batch_to`` when it
    is no larger (one compiled shape for a caller with a fixed number of robots).
    """

    def __init__(
        self,
        parts: bundle_lib.PolicyBundle,
        *,
        decoder: str | None = None,
        flow_steps: int | None = None,
        warmup_batch_sizes: tuple[int, ...] = (1,),
        pad_batch_to: int | None = None,
    ):
        self.parts, self.io, self.config = parts, parts.io, parts.config
        if not parts.embodiments or build.TEXT_FILE not in parts.tokenizer_files:
            missing = "no robot (dataset embodiment)" if not parts.embodiments else "no text tokenizer"
            raise CheckpointError(
                f"{parts.source} has {missing}: converted weights are a starting point; fine-tune them on your "
                "robot's data (config.init.source) to get a policy (converting with --tokenizer brings the text model)"
            )
        if pad_batch_to is not None and not 1 <= pad_batch_to <= MAX_BATCH_SIZE:
            raise ConfigError(f"pad_batch_to is {pad_batch_to}; expected an int in [1, {MAX_BATCH_SIZE}]")
        self.pad_batch_to = pad_batch_to
        mode = self.config.model.mode
        self.decoders = tuple(d for d in DECODERS if (uses_flow if d == "flow" else uses_fast)(mode))
        self.decoder = decoder or self.decoders[0]
        if self.decoder not in self.decoders:
            raise ConfigError(f"decoder {self.decoder!r}: this {mode!r} model has {list(self.decoders)}")
        self.flow_steps = flow_steps or self.config.model.flow.num_steps
        if self.flow_steps < 1:
            raise ConfigError(f"flow_steps is {self.flow_steps}; expected at least 1")
        self.prompt = _prompt_tokenizer(parts)
        data = self.config.data
        self.image_size, self.resize_mode = data.image_size, data.resize_mode
        self.normalization = data.normalization
        self.decode_tokens = self.config.tokenizer.decode_tokens or self.config.tokenizer.max_length
        self._fit_image = tf.function(
            functools.partial(frame_transforms.fit_image, size=self.image_size, mode=self.resize_mode),
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        )
        self._fit_depth = tf.function(
            functools.partial(frame_transforms.fit_depth, size=self.image_size, mode=self.resize_mode),
            input_signature=[tf.TensorSpec([None, None, 1], tf.float32)],
        )
        self._replicated = sharding.replicated(parts.mesh)
        self._compiled: dict = {}
        self.warmup_s: dict[str, float] = {}
        for size in warmup_batch_sizes:
            self.warm_up(size)

    def padded_size(self, rows: int) -> int:
        """The batch size ``rows`` observations run at."""
        if self.pad_batch_to is not None and rows <= self.pad_batch_to:
            return self.pad_batch_to
        return _bucket(rows)

    # -- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | pathlib.Path, *, step: int | None = None, devices=None, **options) -> Policy:
        """From a release directory or a training workdir (latest complete checkpoint, or ``step``)."""
        return cls(bundle_lib.load(path, step=step, devices=devices), **options)

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.parts.embodiments)

    @property
    def metadata(self) -> dict:
        """What a client needs to know (sent by the server on connect); plain msgpack/JSON types."""
        return {
            "vla_jax_policy": 1,
            "step": self.parts.step,
            "decoder": self.decoder,
            "decoders": list(self.decoders),
            "flow_steps": self.flow_steps,
            "image_size": self.image_size,
            "action_horizon": self.io.action_horizon,
            "datasets": {
                name: {
                    "action_dim": e.action_dim,
                    "action_dims": list(e.action_dims),
                    "action_space": e.action_space,
                    "control_hz": e.control_hz,
                    "state_dim": e.state_dim,
                    "keys": self.expected_keys(name),
                }
                for name, e in self.parts.embodiments.items()
            },
        }

    def expected_keys(self, dataset: str) -> list[str]:
        """The observation keys a request for ``dataset`` must hold (``dataset`` and ``seed`` may be added)."""
        e = self.parts.embodiments[dataset]
        keys = [f"image/{role}" for role in e.cameras] + [f"depth/{role}" for role in e.depth_cameras]
        if self.io.goal_images:
            keys += [f"goal/{role}" for role in e.cameras]
        return [*keys, "state", "prompt"]

    # -- checking and preprocessing --------------------------------------------------------------------------------

    def _embodiment(self, obs: dict) -> Embodiment:
        name = obs.get("dataset")
        if name is None:
            if len(self.datasets) == 1:
                return self.parts.embodiments[self.datasets[0]]
            raise ObservationError(f"observation key 'dataset' is missing; this policy has {list(self.datasets)}")
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        if name not in self.parts.embodiments:
            raise ObservationError(f"observation key 'dataset' is {name!r}; expected one of {list(self.datasets)}")
        return self.parts.embodiments[name]

    def check(self, obs: dict) -> None:
        """Raises ObservationError naming the first key that is missing, unexpected or malformed."""
        if not isinstance(obs, dict):
            raise ObservationError(f"an observation is a dict of keys to values, got {type(obs).__name__}")
        e = self._embodiment(obs)
        expected = self.expected_keys(e.dataset)
        missing = [k for k in expected if k not in obs]
        if missing:
            raise ObservationError(
                f"observation key {missing[0]!r} is missing (dataset {e.dataset!r} expects {expected})"
            )
        extra = sorted(set(obs) - set(expected) - {"dataset", "seed"})
        if extra:
            raise ObservationError(
                f"observation key {extra[0]!r} is not used by this policy for dataset {e.dataset!r} "
                f"(expected {expected}, plus 'dataset' and 'seed')"
            )
        for key in expected:
            if key.startswith(("image/", "goal/")):
                _camera_image(obs[key], key)
            elif key.startswith("depth/"):
                _depth_image(obs[key], key)
        _state(obs["state"], e)
        if not isinstance(obs["prompt"], str | bytes):
            raise ObservationError(f"observation key 'prompt' is a {type(obs['prompt']).__name__}; expected a string")
        seed = obs.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**31:
            raise ObservationError(f"observation key 'seed' is {seed!r}; expected an int in [0, 2**31)")

    def _row(self, obs: dict) -> tuple[dict, Embodiment]:
        """One checked observation as the model's inputs (NumPy, unbatched) and its embodiment."""
        self.check(obs)
        e = self._embodiment(obs)
        stats = self.parts.statistics[e.dataset]
        images, masks = {}, {}
        for name, channels in self.io.image_streams:
            kind, role = ("depth", name[6:]) if name.startswith("depth_") else ("image", name)
            if name.startswith("goal_"):
                kind, role = "goal", name[5:]
            present = role in (e.depth_cameras if kind == "depth" else e.cameras)
            if not present:
                images[name] = np.zeros(
                    (self.image_size, self.image_size, channels), np.uint8 if channels == 3 else np.float32
                )
            elif kind == "depth":
                images[name] = self._fit_depth(_depth_image(obs[f"depth/{role}"], f"depth/{role}")).numpy()
            else:
                images[name] = self._fit_image(_camera_image(obs[f"{kind}/{role}"], f"{kind}/{role}")).numpy()
            masks[name] = np.bool_(present)
        state = np.zeros(self.io.state_dim, np.float32)
        state[: e.state_dim] = normalize(_state(obs["state"], e), stats.state, self.normalization)
        action_dim_mask = np.arange(self.io.action_dim) < e.action_dim
        prompt = obs["prompt"]
        row = {
            "images": images,
            "image_masks": masks,
            "state": state,
            "state_mask": np.arange(self.io.state_dim) < e.state_dim,
            "prompt": prompt if isinstance(prompt, bytes) else prompt.encode(),
            "action_dim_mask": action_dim_mask,
            "action_space": np.int32(e.action_space_id),
            "seed": np.int32(obs.get("seed", 0)),
        }
        return row, e

    def _observation(self, rows: list[dict]) -> tuple[Observation, np.ndarray]:
        """The typed, batched observation of prepared rows, and their seeds."""
        stack = lambda key: np.stack([r[key] for r in rows])  # noqa: E731
        prompts = self.prompt.tokenize([r["prompt"] for r in rows], stack("state"), stack("state_mask"))
        observation = Observation(
            images={name: np.stack([r["images"][name] for r in rows]) for name, _ in self.io.image_streams},
            image_masks={name: np.stack([r["image_masks"][name] for r in rows]) for name, _ in self.io.image_streams},
            state=stack("state"),
            state_mask=stack("state_mask"),
            prompt_tokens=prompts["prompt_tokens"],
            prompt_mask=prompts["prompt_mask"],
            prompt_ar_mask=prompts["prompt_ar_mask"],
            action_dim_mask=stack("action_dim_mask"),
            action_space=stack("action_space"),
        )
        return observation, stack("seed")

    # -- the model -------------------------------------------------------------------------------------------------

    def _model_fn(self, decoder: str, rows: int):
        """The jitted model call of ``decoder`` for a batch of ``rows`` (compiled once per shape)."""
        key = (decoder, rows, self.flow_steps)
        if key in self._compiled:
            return self._compiled[key]
        graphdef, seed = self.parts.graphdef, self.config.seed
        num_steps, num_tokens, eos = self.flow_steps, self.decode_tokens, self.prompt.eos

        def run(params, observation: Observation, seeds):
            model = nnx.merge(graphdef, params)
            if decoder == "flow":
                return model.sample_actions(observation, jax.random.key(seed), num_steps, row_seeds=seeds)
            return model.generate(observation, num_tokens, eos)

        rules = bundle_lib.inference_rules(self.config)
        mesh = self.parts.mesh

        def call(params, observation, seeds):
            with sharding.logical_rules(rules), jax.set_mesh(mesh):
                return jitted(params, observation, seeds)

        jitted = jax.jit(run, out_shardings=self._replicated)
        self._compiled[key] = call
        return call

    def warm_up(self, rows: int = 1, decoder: str | None = None) -> float:
        """Compiles (and runs once) the model for a padded batch of ``rows``; returns the seconds it took."""
        decoder = decoder or self.decoder
        e = self.parts.embodiments[self.datasets[0]]
        stats = self.parts.statistics[e.dataset]
        obs = {key: np.zeros((self.image_size, self.image_size, 3), np.uint8) for key in self.expected_keys(e.dataset)}
        for key in [k for k in obs if k.startswith("depth/")]:
            obs[key] = np.ones((self.image_size, self.image_size), np.float32)
        obs.update(state=np.asarray(stats.state.mean, np.float32), prompt="", dataset=e.dataset)
        start = time.perf_counter()
        self.infer_batch([obs] * self.padded_size(rows), decoder=decoder)
        seconds = time.perf_counter() - start
        self.warmup_s[f"{decoder}/{self.padded_size(rows)}"] = seconds
        return seconds

    # -- inference -------------------------------------------------------------------------------------------------

    def infer(self, obs: dict, *, decoder: str | None = None) -> dict:
        """One observation to one action chunk in the robot's units (see the module docstring)."""
        return self.infer_batch([obs], decoder=decoder)[0]

    def infer_batch(self, observations: list[dict], *, decoder: str | None = None) -> list[dict]:
        """Many observations (any mix of datasets) in one model call; one result per observation, in order."""
        decoder = decoder or self.decoder
        if decoder not in self.decoders:
            raise ConfigError(f"decoder {decoder!r}: this model has {list(self.decoders)}")
        if not observations:
            return []
        if len(observations) > MAX_BATCH_SIZE:
            return [r for i in range(0, len(observations), MAX_BATCH_SIZE)
                    for r in self.infer_batch(observations[i : i + MAX_BATCH_SIZE], decoder=decoder)]  # fmt: skip
        start = time.perf_counter()
        prepared = [self._row(obs) for obs in observations]
        rows = [row for row, _ in prepared]
        padded = rows + [rows[0]] * (self.padded_size(len(rows)) - len(rows))
        observation, seeds = self._observation(padded)
        prepared_at = time.perf_counter()
        out = np.asarray(jax.device_get(self._model_fn(decoder, len(padded))(self.parts.params, observation, seeds)))
        model_at = time.perf_counter()
        if decoder == "fast":
            chunks, valid = self.prompt.extract_actions(out)
        else:
            chunks, valid = out, np.ones(len(out), bool)
        results = [self._result(chunks[i], bool(valid[i]), e, decoder) for i, (_, e) in enumerate(prepared)]
        if decoder == "fast":  # the greedy ids, for debugging a chunk that did not decode
            for result, tokens in zip(results, out, strict=False):
                result["fast_tokens"] = tokens.astype(np.int32)
        done = time.perf_counter()
        timing = {
            "infer_ms": 1e3 * (done - start),
            "preprocess_ms": 1e3 * (prepared_at - start),
            "model_ms": 1e3 * (model_at - prepared_at),
            "postprocess_ms": 1e3 * (done - model_at),
            "batch_size": len(observations),
        }
        for result in results:
            result["policy_timing"] = dict(timing)
        return results

    def _result(self, chunk: np.ndarray, valid: bool, e: Embodiment, decoder: str) -> dict:
        """A normalized, padded chunk ``[H, A]`` as the robot's actions ``[H, its dims]`` in its units."""
        stats = self.parts.statistics[e.dataset]
        own = np.asarray(chunk[:, : e.action_dim], np.float32)
        actions = e.gripper_to_dataset(unnormalize(own, stats.action, self.normalization, stats.action_mask))
        if not valid:
            actions = np.full_like(actions, np.nan)  # a chunk that did not decode is never something to execute
        return {
            "actions": actions.astype(np.float32),
            "valid": valid,
            "decoder": decoder,
            "dataset": e.dataset,
            "control_hz": e.control_hz,
        }


def _camera_image(value, key: str) -> np.ndarray:
    """A uint8 ``[H, W, 3]`` image (``[3, H, W]`` is transposed); ObservationError otherwise."""
    array = np.asarray(value)
    if array.dtype != np.uint8:
        raise ObservationError(f"observation key {key!r} has dtype {array.dtype}; expected uint8 [H, W, 3]")
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = np.transpose(array, (1, 2, 0))
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise ObservationError(f"observation key {key!r} has shape {array.shape}; expected uint8 [H, W, 3]")
    return np.ascontiguousarray(array)


def _depth_image(value, key: str) -> np.ndarray:
    """A finite float ``[H, W]`` or ``[H, W, 1]`` depth image as float32 ``[H, W, 1]``."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ObservationError(f"observation key {key!r} has dtype {array.dtype}; expected float [H, W] or [H, W, 1]")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] != 1 or min(array.shape[:2]) < 1:
        raise ObservationError(f"observation key {key!r} has shape {array.shape}; expected float [H, W] or [H, W, 1]")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ObservationError(f"observation key {key!r} holds NaN or inf values")
    return array


def _state(value, e: Embodiment) -> np.ndarray:
    """The robot's state vector of ``e.state_dim`` finite values, as float32."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ObservationError(f"observation key 'state' has dtype {array.dtype}; expected float [{e.state_dim}]")
    if array.shape != (e.state_dim,):
        raise ObservationError(
            f"observation key 'state' has shape {array.shape}; expected [{e.state_dim}] for dataset {e.dataset!r}"
        )
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array)).tolist()
        raise ObservationError(f"observation key 'state' holds NaN or inf values at dims {bad}")
    return array
