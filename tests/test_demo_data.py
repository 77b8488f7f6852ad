import json
import shutil

import numpy as np
import pytest

from vla_jax.data import demo
from vla_jax.envs import demo as demo_env
from vla_jax.envs.demo import DemoEnv
from vla_jax.errors import DataError


def test_rlds_layout_and_episode_flags(demo_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(demo_dir))
    steps = builder.info.features["steps"]
    assert set(steps.keys()) >= {
        "observation", "action", "language_instruction", "is_first", "is_last", "is_terminal", "reward", "discount",
    }  # fmt: skip
    assert set(steps["observation"].keys()) == {"image", "wrist_image", "state"}
    assert builder.info.splits["train"].num_examples == demo.TRAIN_EPISODES
    episode = next(iter(builder.as_dataset(split="val").take(1)))
    traj = next(iter(episode["steps"].batch(1000))).copy()
    flags = {k: traj[k].numpy() for k in ("is_first", "is_last", "is_terminal")}
    assert flags["is_first"][0] and not flags["is_first"][1:].any()
    assert flags["is_last"][-1] and not flags["is_last"][:-1].any()
    assert traj["observation"]["image"].shape[1:] == (demo.IMAGE_SIZE, demo.IMAGE_SIZE, 3)


def test_action_depends_on_named_block_position():
    """The first move heads to the named block, not to the others: vision and language both matter."""
    to_named, to_other = [], []
    for seed in range(50):
        env = DemoEnv()
        first = env.reset(10_000 + seed)
        action = env.expert_action()
        assert env.color_names[env.target] in first["prompt"]
        start = first["state"][:2]
        direction = action[:2] / np.linalg.norm(action[:2])
        for index, block in enumerate(env.blocks):
            cosine = float(direction @ (block - start) / np.linalg.norm(block - start))
            (to_named if index == env.target else to_other).append(cosine)
    assert np.mean(to_named) > 0.98
    assert np.mean(to_other) < 0.6


def test_the_dataset_is_the_environment_rolled_out_by_the_expert(demo_dir):
    """One source of truth: each recorded episode's frames, states and actions are the env's from its seed."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(demo_dir))
    for split, first_seed in (("train", 0), ("val", demo.SPLIT_SEEDS["val"])):
        for episode in builder.as_dataset(split=split, decoders={"steps": {"observation": {
            "image": tfds.decode.SkipDecoding(), "wrist_image": tfds.decode.SkipDecoding()}}}).take(2):  # fmt: skip
            seed = int(episode["episode_metadata"]["seed"])
            assert seed >= first_seed
            recorded = next(iter(episode["steps"].batch(1000)))
            rollout = demo_env.expert_episode(seed)
            assert rollout["success"]
            assert len(rollout["steps"]) == len(recorded["action"])
            for i, step in enumerate(rollout["steps"]):
                obs = step["observation"]
                assert recorded["observation"]["image"][i].numpy() == demo._jpeg(obs["image/primary"])
                assert recorded["observation"]["wrist_image"][i].numpy() == demo._jpeg(obs["image/wrist"])
                np.testing.assert_array_equal(recorded["observation"]["state"][i].numpy(), obs["state"])
                np.testing.assert_array_equal(recorded["action"][i].numpy(), step["action"])
            assert recorded["language_instruction"][0].numpy().decode() == rollout["instruction"]


def test_cache_is_reused(demo_dir):
    stamp = (demo_dir / demo.MANIFEST).stat().st_mtime_ns
    assert demo.ensure_demo_dataset() == demo_dir
    assert (demo_dir / demo.MANIFEST).stat().st_mtime_ns == stamp


def test_corrupt_cache_is_reported_not_read(demo_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_dir, copy)
    record = next(copy.glob("*val.tfrecord*"))
    data = bytearray(record.read_bytes())
    data[len(data) // 2] ^= 0xFF
    record.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"corrupt: file {record.name} .*delete {copy}"):
        demo.verify_cache(copy)
    manifest = json.loads((demo_dir / demo.MANIFEST).read_text())
    (copy / demo.MANIFEST).write_text(json.dumps(dict(manifest, generator="0" * 16)))
    with pytest.raises(DataError, match="another version of the generator"):
        demo.verify_cache(copy)
    (copy / demo.MANIFEST).unlink()
    with pytest.raises(DataError, match="no vla_jax_manifest.json"):
        demo.verify_cache(copy)


def test_manifest_lists_every_data_file(demo_dir):
    files = json.loads((demo_dir / demo.MANIFEST).read_text())["files"]
    written = {p.name for p in demo_dir.iterdir() if p.name != demo.MANIFEST}
    statistics_caches = {n for n in written if n.startswith("vla_jax_stats_")}  # written later, next to the data
    assert written - statistics_caches == set(files)
