"""Policies out of checkpoints: raw observations in, robot actions out; releases; the trainer's own predictions."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, debug_config
from vla_jax import sharding
from vla_jax.data import frame_transforms, loader, standardize, trajectory
from vla_jax.data.embodiment import Embodiment
from vla_jax.data.specs import GRIPPER_TO_CANONICAL, DatasetSpec, get_spec
from vla_jax.data.statistics import unnormalize
from vla_jax.errors import CheckpointError, ObservationError
from vla_jax.inference import release
from vla_jax.inference.policy import Policy
from vla_jax.training import trainer

pytestmark = pytest.mark.slow  # trains a small run once (about a minute)

# Trained FSDP-sharded over the 8 fake devices, with EMA, so loading it on 1 device reshards it.
RUN_OVERRIDES = (
    "num_steps=4",
    "eval_every=4",
    "checkpoint_every=4",
    "log_every=2",
    "ema_decay=0.5",
    "mesh.data=1",
    "mesh.fsdp=8",
    "sharding.fsdp_min_bytes=2048",
    "data.val_batches=1",
)


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("policy_run")
    trainer.train(debug_config(*RUN_OVERRIDES), workdir)
    return workdir


@pytest.fixture(scope="module")
def policy(trained) -> Policy:
    return Policy.load(trained)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("releases") / "demo_release"
    release.export(trained, out)
    return out


def raw_val_frames(config, count: int) -> list[dict]:
    """The first ``count`` validation frames as a robot would give them: decoded images at their stored size,
    state in the dataset's units, the instruction (the loader's validation order for one dataset)."""
    mix = loader.open_mixture(config.data)
    (source,) = mix.sources
    assert source.stride == 1
    ds = trajectory.from_rlds(source.builder, source.val_split)
    frames = []
    for traj in ds.as_numpy_iterator():
        traj = standardize.standardize(tf.nest.map_structure(tf.constant, traj), source.spec)
        for t in range(int(traj["action"].shape[0])):
            obs = traj["observation"]
            frame = {
                f"image/{role}": tf.io.decode_image(obs[f"image_{role}"][t], channels=3).numpy()
                for role in config.data.cameras
            }
            frame |= {"state": obs["proprio"][t].numpy(), "prompt": traj["language_instruction"][t].numpy().decode()}
            frames.append(frame)
            if len(frames) == count:
                return frames
    return frames


def test_policy_equals_the_trainers_validation_predictions(trained, policy):
    """Raw frames through the Policy give the trainer's validation predictions (same params, seeds = rows)."""
    config = debug_config(*RUN_OVERRIDES)
    run = trainer.setup(config)
    prompt = trainer.prepare_prompt_tokenizer(config, run.data, trained)
    (val,) = loader.val_batches(run.data, config.data, global_batch_size=config.batch_size, prompt=prompt)
    batch = loader.to_global_batch(val, run.batch_sharding)
    params = jax.device_put(policy.parts.params, run.layout.shardings["params"])
    assert policy.parts.parameters_from == "ema"
    frames = raw_val_frames(config, config.batch_size)
    for row, frame in enumerate(frames):
        frame["seed"] = row
    stats = run.data.sources[0].statistics
    dims = len(stats.action.mean)
    with jax.set_mesh(run.mesh), sharding.logical_rules(run.rules):
        eval_steps = trainer.make_eval_steps(config, run.layout, run.batch_sharding, prompt, run.eval_graphdef)
        sampled = jax.device_get(eval_steps["val"](params, batch))
        generated = jax.device_get(eval_steps["val_fast"](params, batch))
    expected = unnormalize(sampled["predicted"][..., :dims], stats.action, "quantile", stats.action_mask)
    got = np.stack([r["actions"] for r in policy.infer_batch(frames, decoder="flow")])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    fast = policy.infer_batch(frames, decoder="fast")
    np.testing.assert_array_equal(np.stack([r["fast_tokens"] for r in fast]), generated["generated"])
    _, valid = prompt.extract_actions(generated["generated"])
    assert [r["valid"] for r in fast] == valid.tolist()
    for r in fast:  # a chunk that did not decode is NaN, never zeros
        assert r["valid"] or np.isnan(r["actions"]).all()


def test_cameras_are_resized_with_the_pipelines_own_code(policy):
    rng = np.random.default_rng(0)
    for shape in ((48, 80, 3), (90, 70, 3), (64, 64, 3)):
        image = rng.integers(0, 255, shape, dtype=np.uint8)
        pipeline = frame_transforms.decode_image(tf.io.encode_png(image), policy.image_size, policy.resize_mode)
        np.testing.assert_array_equal(policy._fit_image(image).numpy(), pipeline.numpy())


def test_actions_come_back_in_the_robots_units_and_gripper_convention():
    """Canonical gripper values (the pipeline's) map back to every dataset convention."""
    stored = np.array([[0.3, -0.2, 1.0], [0.1, 0.4, -1.0], [0.0, 0.0, 0.0]], np.float32)
    for convention in GRIPPER_TO_CANONICAL:
        spec = DatasetSpec("g", "eef_delta", ("x", "y", "gripper"), (True, True, False), 10.0, convention)
        canonical = standardize.canonical_gripper(tf.constant(stored), spec).numpy()
        e = Embodiment("g", 0, "eef_delta", 0, spec.action_dims, spec.gripper_dims, convention, 10.0, (), (), 0)
        np.testing.assert_allclose(e.gripper_to_dataset(canonical), stored, atol=1e-6)
        if convention != "open=1,closed=0":
            assert not np.allclose(canonical, stored)


def _good(policy) -> dict:
    e = policy.parts.embodiments["vla_demo"]
    return {
        "image/primary": np.zeros((100, 120, 3), np.uint8),
        "image/wrist": np.zeros((3, 64, 64), np.uint8),  # CHW is accepted
        "state": np.zeros(e.state_dim, np.float32),
        "prompt": "pick up the red block",
        "dataset": "vla_demo",
    }


BAD_OBSERVATIONS = [
    (lambda o: o.pop("image/wrist"), "'image/wrist' is missing"),
    (lambda o: o.update({"image/primary": np.zeros((10, 10), np.uint8)}), "'image/primary' has shape (10, 10)"),
    (lambda o: o.update({"image/primary": np.zeros((8, 8, 3), np.float32)}), "'image/primary' has dtype float32"),
    (lambda o: o.update({"state": np.array([0, np.nan, 0, 0], np.float32)}), "'state' holds NaN or inf"),
    (lambda o: o.update({"state": np.zeros(7, np.float32)}), "'state' has shape (7,)"),
    (lambda o: o.update({"dataset": "franka_kitchen"}), "'dataset' is 'franka_kitchen'"),
    (lambda o: o.update({"prompt": 3}), "'prompt' is a int"),
    (lambda o: o.update({"seed": -1}), "'seed' is -1"),
    (lambda o: o.update({"image/secondary": np.zeros((8, 8, 3), np.uint8)}), "'image/secondary' is not used"),
]


@pytest.mark.parametrize("mutate,message", BAD_OBSERVATIONS)
def test_a_bad_observation_is_one_error_naming_the_key(policy, mutate, message):
    obs = _good(policy)
    mutate(obs)
    with pytest.raises(ObservationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        policy.infer(obs)


def test_results_do_not_depend_on_the_batch_they_are_in(policy):
    obs = _good(policy)
    alone = policy.infer(dict(obs, seed=3))["actions"]
    others = [dict(obs, seed=s, state=np.full(4, 0.1 * s, np.float32)) for s in range(5)]
    batched = policy.infer_batch([*others, dict(obs, seed=3)])
    np.testing.assert_allclose(batched[-1]["actions"], alone, rtol=1e-5, atol=1e-5)
    assert not np.allclose(policy.infer(dict(obs, seed=4))["actions"], alone)  # the seed matters
    result = batched[0]
    assert result["actions"].shape == (policy.io.action_horizon, 4) and result["dataset"] == "vla_demo"
    assert result["policy_timing"]["batch_size"] == 6 and result["control_hz"] == 10.0
    assert policy.warmup_s and all(s > 0 for s in policy.warmup_s.values())


def test_release_round_trip_and_manifest(exported, policy):
    summary = json.loads((exported / "release.json").read_text())
    assert summary["step"] == 4 and summary["parameters_from"] == "ema"
    assert summary["num_params"] == policy.parts.num_params
    assert summary["datasets"]["vla_demo"]["action_dims"] == list(get_spec("vla_demo").action_dims)
    assert any(name.startswith("params/") for name in summary["files"])
    assert "tokenizers/text.model" in summary["files"]
    loaded = Policy.load(exported)
    obs = dict(_good(policy), seed=1)
    np.testing.assert_allclose(loaded.infer(obs)["actions"], policy.infer(obs)["actions"], rtol=1e-5, atol=1e-6)


def test_a_damaged_release_is_one_clear_error(exported, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(exported, corrupt)
    target = corrupt / "dataset_statistics.json"
    target.write_text(target.read_text().replace("0", "1", 1))
    with pytest.raises(CheckpointError, match="dataset_statistics.json does not match its sha256"):
        Policy.load(corrupt)
    partial = tmp_path / "partial"
    shutil.copytree(exported, partial)
    (partial / "tokenizers" / "text.model").unlink()
    with pytest.raises(CheckpointError, match="tokenizers/text.model of the release is missing"):
        Policy.load(partial)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "release.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a vla_jax.release manifest"):
        Policy.load(foreign)
    with pytest.raises(CheckpointError, match="neither a release"):
        Policy.load(tmp_path)
    with pytest.raises(CheckpointError, match="already exists and is not empty"):
        release.export(exported, corrupt)


def test_export_refuses_a_missing_step(trained, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint of step 3"):
        release.export(trained, tmp_path / "out", step=3)
    assert not (tmp_path / "out").exists()


def test_a_release_of_an_8_device_fsdp_run_gives_the_same_actions_on_1_device(exported, policy, tmp_path):
    obs = dict(_good(policy), seed=2)
    np.savez(tmp_path / "obs.npz", **{k: v for k, v in obs.items() if isinstance(v, np.ndarray)})
    (tmp_path / "obs.json").write_text(json.dumps({"prompt": obs["prompt"], "dataset": obs["dataset"], "seed": 2}))
    script = f"""
import json, numpy as np, jax
from vla_jax.inference.policy import Policy
assert jax.device_count() == 1, jax.device_count()
obs = dict(np.load({str(tmp_path / "obs.npz")!r}), **json.load(open({str(tmp_path / "obs.json")!r})))
np.save({str(tmp_path / "out.npy")!r}, Policy.load({str(exported)!r}).infer(obs)["actions"])
"""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO, timeout=300)
    sharded = Policy.load(exported, devices=jax.devices()[:8], warmup_batch_sizes=())
    expected = sharded.infer(obs)["actions"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-5)
    leaves = jax.tree.leaves(sharded.parts.params)
    assert any(not leaf.sharding.is_fully_replicated for leaf in leaves)  # it really is spread over 8 devices


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(exported):
    """``vla-jax serve RELEASE`` in its own process (1 device), with a token and a 1 MiB message limit."""
    import time
    import urllib.request

    port = _free_port()
    command = [sys.executable, "-m", "vla_jax.cli", "serve", str(exported), "--port", str(port)]
    command += ["--token", "secret", "--max-batch", "2", "--max-message-mb", "1"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_export_serve_and_openpis_client_give_the_in_process_actions(served, policy):
    openpi_client = pytest.importorskip("openpi_client.websocket_client_policy")
    client = openpi_client.WebsocketClientPolicy("127.0.0.1", served, api_key="secret")
    metadata = client.get_server_metadata()
    assert metadata["datasets"]["vla_demo"]["action_dim"] == 4 and metadata["decoder"] == "flow"
    for seed in (0, 5):
        obs = dict(_good(policy), seed=seed)
        reply = client.infer(obs)
        np.testing.assert_allclose(reply["actions"], policy.infer(obs)["actions"], rtol=1e-5, atol=1e-5)
        assert reply["actions"].dtype == np.float32 and "infer_ms" in reply["server_timing"]


def test_the_server_answers_each_bad_request_and_goes_on_serving(served, policy):
    from vla_jax.inference.client import PolicyClient, PolicyServerError

    with pytest.raises(PolicyServerError, match="401"):
        PolicyClient("127.0.0.1", served, token="wrong", connect_timeout_s=5)
    good = dict(_good(policy), seed=1)
    expected = policy.infer(good)["actions"]
    big = np.zeros((700, 700, 3), np.uint8)  # 1.4 MiB: over the 1 MiB limit
    cases = [(mutate, message) for mutate, message in BAD_OBSERVATIONS]
    cases.append((lambda o: o.update({"image/primary": big}), "over the limit"))
    with PolicyClient("127.0.0.1", served, token="secret") as client:
        for mutate, message in cases:
            obs = dict(good)
            mutate(obs)
            with pytest.raises(PolicyServerError, match=message.replace("(", r"\(").replace(")", r"\)")):
                client.infer(obs)
            np.testing.assert_allclose(client.infer(good)["actions"], expected, rtol=1e-5, atol=1e-5)
        client._ws.send(b"\xc1 not msgpack")
        assert "not valid msgpack" in client._ws.recv()
        np.testing.assert_allclose(client.infer(good)["actions"], expected, rtol=1e-5, atol=1e-5)
