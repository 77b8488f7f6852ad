"""The worked example of data/README.md: raw .npz episodes -> RLDS with the builder template -> a usable spec."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

from .conftest import REPO

TEMPLATE_DIR = REPO / "data" / "templates" / "rlds_builder"
SPEC_FILE = TEMPLATE_DIR / "my_robot.py"
VLA_JAX = str(pathlib.Path(sys.executable).parent / "vla-jax")  # the venv's console script


def _import_template(file_name: str) -> types.ModuleType:
    """Imports a template file once per process (tfds refuses to register a builder name twice)."""
    module_name = f"vla_jax_template_{pathlib.Path(file_name).stem}"
    if module_name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(module_name, TEMPLATE_DIR / file_name)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="module")
def builder_module() -> types.ModuleType:
    return _import_template("my_robot_dataset_builder.py")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("my_robot_raw")
    _import_template("make_example_raw_episodes.py").write_example_raw_episodes(path, num_train=4, num_val=2)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, builder_module, raw_dir) -> pathlib.Path:
    import tensorflow_datasets as tfds

    path = tmp_path_factory.mktemp("my_robot_rlds")
    builder = builder_module.MyRobot(data_dir=str(path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw_dir)))
    return path


@pytest.fixture
def clean_registry(monkeypatch):
    """Points VLA_JAX_SPECS at the template spec; forgets what it registered afterwards."""
    from vla_jax.data import specs

    specs.discover()  # the package's specs first, so that they survive the restore below
    saved = dict(specs._SPECS), dict(specs._SPEC_ORIGINS), set(specs._discovered_paths)
    monkeypatch.setenv(specs.SPEC_PATH_ENV, str(SPEC_FILE))
    yield specs
    specs._SPECS.clear()
    specs._SPECS.update(saved[0])
    specs._SPEC_ORIGINS.clear()
    specs._SPEC_ORIGINS.update(saved[1])
    specs._discovered_paths.clear()
    specs._discovered_paths.update(saved[2])


def _episodes(builder_dir: pathlib.Path, split: str) -> dict[str, dict]:
    """The split's episodes as NumPy step arrays stacked over time, keyed by ``episode_metadata/file_path``."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(builder_dir))
    episodes = {}
    for episode in builder.as_dataset(split=split):
        steps = episode["steps"].batch(1_000_000).get_single_element()
        episodes[episode["episode_metadata"]["file_path"].numpy().decode()] = tf.nest.map_structure(
            lambda x: x.numpy(), steps
        )
    return episodes


def test_builds_the_standard_rlds_layout(builder_module, data_dir):
    import tensorflow_datasets as tfds

    builder_dir = data_dir / "my_robot" / "1.0.0"
    assert (builder_dir / "dataset_info.json").is_file()
    assert (builder_dir / "features.json").is_file()
    assert sorted(p.name.split(".")[0] for p in builder_dir.glob("*.tfrecord*")) == ["my_robot-train", "my_robot-val"]

    builder = tfds.builder_from_directory(str(builder_dir))
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.splits["val"].num_examples == 2
    features = builder.info.features
    assert set(features) == {"steps", "episode_metadata"}
    assert set(features["episode_metadata"]) == {"file_path"}
    steps = features["steps"].feature
    assert set(steps) == {
        "observation", "action", "language_instruction", "is_first", "is_last", "is_terminal", "reward", "discount",
    }  # fmt: skip
    assert set(steps["observation"]) == {"image", "wrist_image", "state"}
    for camera in ("image", "wrist_image"):
        assert isinstance(steps["observation"][camera], tfds.features.Image)
        assert steps["observation"][camera].shape == builder_module.IMAGE_SHAPE
        assert steps["observation"][camera].np_dtype == np.uint8
    assert steps["observation"]["state"].shape == (builder_module.STATE_DIM,)
    assert steps["observation"]["state"].np_dtype == np.float32
    assert steps["action"].shape == (builder_module.ACTION_DIM,)
    assert steps["action"].np_dtype == np.float32
    assert isinstance(steps["language_instruction"], tfds.features.Text)
    for key in ("is_first", "is_last", "is_terminal"):
        assert steps[key].np_dtype == np.bool_ and steps[key].shape == ()
    for key in ("reward", "discount"):
        assert steps[key].np_dtype == np.float32 and steps[key].shape == ()


def test_contents_round_trip(data_dir, raw_dir):
    builder_dir = data_dir / "my_robot" / "1.0.0"
    for split, count in (("train", 4), ("val", 2)):
        episodes = _episodes(builder_dir, split)
        assert sorted(episodes) == [f"{split}/episode_{i:04d}.npz" for i in range(count)]
        for file_path, episode in episodes.items():
            with np.load(raw_dir / file_path) as raw:
                length = len(raw["action"])
                np.testing.assert_array_equal(episode["action"], raw["action"])
                np.testing.assert_array_equal(episode["observation"]["state"], raw["state"])
                for camera in ("image", "wrist_image"):  # JPEG: close, not equal
                    image = episode["observation"][camera]
                    assert image.shape == raw[camera].shape and image.dtype == np.uint8
                    assert np.abs(image.astype(np.float32) - raw[camera]).mean() < 8.0
                instruction = str(raw["language_instruction"])
            assert {text.decode() for text in episode["language_instruction"]} == {instruction}
            last = np.arange(length) == length - 1
            np.testing.assert_array_equal(episode["is_first"], np.arange(length) == 0)
            np.testing.assert_array_equal(episode["is_last"], last)
            np.testing.assert_array_equal(episode["is_terminal"], last)
            np.testing.assert_array_equal(episode["reward"], last.astype(np.float32))
            np.testing.assert_array_equal(episode["discount"], np.ones(length, np.float32))


def test_rebuilding_gives_identical_shards(tmp_path, builder_module, raw_dir, data_dir):
    rebuilt = builder_module.build(raw_dir, tmp_path)
    original = data_dir / "my_robot" / "1.0.0"
    shards = sorted(p.name for p in original.glob("*.tfrecord*"))
    assert shards == sorted(p.name for p in rebuilt.glob("*.tfrecord*"))
    for name in shards:
        assert (original / name).read_bytes() == (rebuilt / name).read_bytes(), name


def test_bad_raw_episode_is_reported_with_its_file(builder_module, raw_dir, tmp_path):
    episode = builder_module.load_raw_episode(raw_dir / "train" / "episode_0000.npz")
    episode["state"] = episode["state"][:, :3]
    with pytest.raises(ValueError, match=r"bad\.npz: 'state' is float32\[\d+, 3\], expected float32\[\d+, 8\]"):
        builder_module.check_episode(episode, tmp_path / "bad.npz")


def test_template_spec_is_found_through_env_and_matches_the_build(clean_registry, builder_module, data_dir):
    import tensorflow_datasets as tfds

    spec = clean_registry.get_spec("my_robot")
    assert spec.name == "my_robot"
    assert spec.action_dim == builder_module.ACTION_DIM
    assert spec.gripper_dims == (builder_module.ACTION_DIM - 1,)
    assert spec.version == str(builder_module.MyRobot.VERSION)
    assert spec.config_name is None

    builder = tfds.builder_from_directory(str(data_dir / spec.name / spec.version))
    steps = builder.info.features["steps"].feature
    assert set(spec.cameras.values()) <= set(steps["observation"])
    assert sum(steps["observation"][key].shape[0] for key in spec.state_keys) == builder_module.STATE_DIM
    assert spec.action_key in steps and spec.language_key in steps
    assert {spec.train_split, spec.val_split} <= set(builder.info.splits)


def test_cli_check_finds_the_built_dataset_usable(data_dir, tmp_path):
    env = {**os.environ, "VLA_JAX_SPECS": str(SPEC_FILE), "VLA_JAX_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [VLA_JAX, "data", "check", "my_robot", "--data-dir", str(data_dir), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["usable"] is True, report
    assert report["episodes"] >= 4 and report["steps"] > report["episodes"], report
