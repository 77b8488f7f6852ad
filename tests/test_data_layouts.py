"""The pipeline on tiny RLDS datasets of different layouts, built on the fly."""

import functools

import jax
import numpy as np
import pytest
import tensorflow as tf

from vla_jax.data import loader, statistics, traj_transforms, trajectory
from vla_jax.data.config import data_config
from vla_jax.data.specs import ACTION_SPACE_IDS
from vla_jax.data.standardize import standardize
from vla_jax.errors import ConfigError

from . import rlds_fixtures
from .conftest import assert_statistics_match


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("rlds")
    layouts = rlds_fixtures.layouts()
    raw = {key: rlds_fixtures.build(root, layout) for key, layout in layouts.items()}
    return root, layouts, raw


def _config(root, mixture, **overrides):
    config = data_config(mixture)
    config.data_dir = str(root)
    config.cameras = ("primary", "secondary", "wrist")
    config.image_size = 16
    config.shuffle_buffer_size = 64
    config.read_threads = 2
    config.transform_threads = 2
    config.update(overrides)
    return config


def _standardized(root, layout, split="train"):
    """Standardized trajectories in episode order (RLDS files store them in hashed key order)."""
    spec = layout.spec
    builder = trajectory.open_builder(loader.resolve_builder_dir(spec, str(root)), spec.name)
    ds = trajectory.from_rlds(builder, split)
    ds = ds.map(lambda t: (t["episode_metadata"]["file_path"][0], standardize(t, spec)))
    pairs = [(int(path.decode().rsplit("_", 1)[1]), traj) for path, traj in ds.as_numpy_iterator()]
    return [traj for _, traj in sorted(pairs, key=lambda p: p[0])]


def _episode_indices(builder, split):
    ds = trajectory.from_rlds(builder, split).map(lambda t: t["episode_metadata"]["file_path"][0])
    return sorted(int(p.decode().rsplit("_", 1)[1]) for p in ds.as_numpy_iterator())


def test_standardized_schema_per_layout(corpus):
    root, layouts, raw = corpus
    for key, layout in layouts.items():
        trajs = _standardized(root, layout)
        episodes = raw[key]["episodes"]
        assert len(trajs) == len(episodes)
        for traj, episode in zip(trajs, episodes):
            steps = episode["steps"]
            length = len(steps["action"])
            obs = traj["observation"]
            np.testing.assert_allclose(traj["action"], steps["action"], rtol=1e-6)
            np.testing.assert_allclose(obs["proprio"], steps["observation"]["state"], rtol=1e-6)
            assert traj["action_space"].tolist() == [ACTION_SPACE_IDS[layout.spec.action_space]] * length
            for role in ("primary", "secondary", "wrist"):
                present = role in layout.spec.cameras
                assert obs[f"image_{role}_present"].tolist() == [present] * length
                assert all((len(b) > 0) == present for b in obs[f"image_{role}"])
            assert ("depth_primary" in obs) == bool(layout.depth)
            instructions = {s.decode() for s in traj["language_instruction"]}
            assert instructions == ({str(steps["language_instruction"][0])} if layout.language else {""})


def test_mixture_batches_have_unified_widths_and_masks(corpus):
    root, layouts, _ = corpus
    config = _config(root, "tiny_one_camera:1,tiny_cameras_depth:1,tiny_bimanual:1", depth_cameras=("primary",))
    mix = loader.open_mixture(config)
    assert (mix.action_dim, mix.state_dim) == (14, 14)
    batch = next(loader.train_batches(mix, config, global_batch_size=48, seed=0))
    obs = batch.observation
    assert batch.actions.shape == (48, 4, 14) and obs.state.shape == (48, 14)
    assert obs.images["depth_primary"].shape == (48, 16, 16, 1) and obs.images["depth_primary"].dtype == np.float32
    for i, source in enumerate(mix.sources):
        rows = batch.dataset_index == i
        assert rows.any(), source.spec.name
        width, state_width = source.spec.action_dim, len(source.statistics.state.mean)
        assert (obs.action_dim_mask[rows].sum(1) == width).all()
        assert (obs.state_mask[rows].sum(1) == state_width).all()
        assert (batch.actions[rows][..., width:] == 0).all() and (obs.state[rows][:, state_width:] == 0).all()
        assert (obs.action_space[rows] == source.spec.action_space_id).all()
        assert np.allclose(batch.control_hz[rows], source.spec.control_frequency_hz)
        for role in ("primary", "secondary", "wrist"):
            present = role in source.spec.cameras
            assert (obs.image_masks[role][rows] == present).all()
            if not present:
                assert (obs.images[role][rows] == 0).all()
        assert (obs.image_masks["depth_primary"][rows] == bool(source.spec.depth_cameras)).all()
        if source.spec.depth_cameras:
            assert obs.images["depth_primary"][rows].any()  # real depth values reach the batch


def test_chunks_at_episode_ends(corpus):
    root, layouts, raw = corpus
    layout = layouts["one_camera"]
    for traj, episode in zip(_standardized(root, layout), raw["one_camera"]["episodes"]):
        chunked = {k: v.numpy() for k, v in traj_transforms.chunk_actions(
            {"action": tf.constant(traj["action"])}, horizon=4).items()}  # fmt: skip
        actions = episode["steps"]["action"]
        n = len(actions)
        for t in range(n):
            for h in range(4):
                expected = actions[min(t + h, n - 1)]
                np.testing.assert_allclose(chunked["action"][t, h], expected, rtol=1e-6)
                assert chunked["action_mask"][t, h] == (t + h < n)


def test_statistics_match_numpy_on_the_train_split(corpus):
    root, layouts, raw = corpus
    for key, layout in layouts.items():
        source = loader.open_source(layout.spec, _config(root, layout.spec.name))
        train = _episode_indices(source.builder, source.train_split)
        assert len(train) == 6 and len(_episode_indices(source.builder, source.val_split)) == 2
        episodes = [raw[key]["episodes"][i] for i in train]
        actions = np.concatenate([e["steps"]["action"] for e in episodes]).astype(np.float64)
        states = np.concatenate([e["steps"]["observation"]["state"] for e in episodes]).astype(np.float64)
        stats = source.statistics
        assert stats.num_trajectories == len(episodes) and stats.num_transitions == len(actions)
        for got, rows in ((stats.action, actions), (stats.state, states)):
            assert_statistics_match(got, rows, atol=1e-5, std_rtol=1e-4)
        assert stats.action_mask == layout.spec.normalize_action


def test_statistics_cache_invalidated_when_transform_source_changes(corpus, tmp_path):
    import dataclasses
    import importlib.util

    root, layouts, _ = corpus
    spec = layouts["one_camera"].spec
    builder_dir = loader.resolve_builder_dir(spec, str(root))
    source_code = (
        "import tensorflow as tf\n\ndef scale(traj):\n"
        "    return dict(traj, action=traj['action'] * tf.constant(FACTOR, tf.float32))\n"
    )

    def load(factor, name):
        path = tmp_path / f"{name}.py"
        path.write_text(source_code.replace("FACTOR", str(factor)))
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return dataclasses.replace(spec, standardize_fn=module.scale)

    def stats_of(variant):
        builder = trajectory.open_builder(builder_dir, spec.name)
        ds = trajectory.traj_map(trajectory.from_rlds(builder, "train"), functools.partial(standardize, spec=variant))
        return statistics.load_or_compute(variant, builder_dir, ds)

    first = stats_of(load(2.0, "transform_a"))
    again = stats_of(load(2.0, "transform_b"))  # same source: served from the cache
    changed = stats_of(load(3.0, "transform_c"))  # edited source: recomputed
    assert again.fingerprint == first.fingerprint
    assert changed.fingerprint != first.fingerprint
    np.testing.assert_allclose(changed.action.mean[:6], first.action.mean[:6] * 1.5, rtol=1e-5)
    assert (builder_dir / f"vla_jax_stats_{changed.fingerprint}.json").is_file()


def test_mixture_proportions_within_sampling_error(corpus):
    root, _, _ = corpus
    names = ("tiny_one_camera", "tiny_cameras_depth", "tiny_bimanual")
    weights = (1.0, 2.0, 0.5)
    mixture = ",".join(f"{n}:{w}" for n, w in zip(names, weights))
    for balance in (False, True):
        config = _config(root, mixture, balance_weights=balance, cameras=("primary",), action_horizon=1)
        mix = loader.open_mixture(config)
        sizes = np.array([s.statistics.num_transitions for s in mix.sources], float)
        expected = np.array(weights) * (sizes if balance else 1.0)
        expected /= expected.sum()
        np.testing.assert_allclose(mix.probabilities, expected)
        stream = loader.train_batches(mix, config, global_batch_size=100, seed=1)
        counts = np.bincount(np.concatenate([next(stream).dataset_index for _ in range(20)]), minlength=3)
        n = counts.sum()
        sigma = np.sqrt(n * expected * (1 - expected))
        assert np.all(np.abs(counts - n * expected) < 4 * sigma), (counts, n * expected)


@pytest.mark.parametrize("num_shards", [4, 1])
def test_per_host_shards_are_disjoint_and_complete(tmp_path, cache_dir, num_shards):
    layout = rlds_fixtures.layouts()["one_camera"]
    layout = rlds_fixtures.Layout(
        **{
            **layout.__dict__,
            "spec": layout.spec.__class__(**{**layout.spec.__dict__, "name": f"tiny_hosts{num_shards}"}),
        }
    )
    rlds_fixtures.build(tmp_path, layout, num_shards=num_shards)
    builder = trajectory.open_builder(loader.resolve_builder_dir(layout.spec, str(tmp_path)), layout.spec.name)
    assert trajectory.num_files(builder, "train") == num_shards

    def episodes(shard):
        ds = trajectory.from_rlds(builder, "train", shard=shard)
        return [t["episode_metadata"]["file_path"][0].decode() for t in ds.as_numpy_iterator()]

    everything = episodes((0, 1))
    hosts = [episodes((i, 2)) for i in range(2)]
    assert not set(hosts[0]) & set(hosts[1])
    assert sorted(hosts[0] + hosts[1]) == sorted(everything) and len(everything) == len(layout.lengths)
    assert all(hosts)


def test_resampling_to_a_common_control_rate(corpus):
    root, layouts, raw = corpus
    spec = layouts["bimanual_no_language"].spec  # 50 Hz absolute joint targets
    stride = traj_transforms.resample_stride(spec, 10.0)
    assert stride == 5
    traj = _standardized(root, layouts["bimanual_no_language"])[0]
    tensors = tf.nest.map_structure(tf.constant, traj)
    out = traj_transforms.resample(tensors, spec, stride)
    n = len(traj["action"])
    starts = np.arange(0, n, stride)
    np.testing.assert_allclose(out["action"].numpy(), traj["action"][np.minimum(starts + stride, n) - 1])
    np.testing.assert_allclose(out["observation"]["proprio"].numpy(), traj["observation"]["proprio"][starts])
    delta_spec = layouts["one_camera"].spec  # deltas are summed, the gripper takes the last command
    traj = _standardized(root, layouts["one_camera"])[2]
    out = traj_transforms.resample(tf.nest.map_structure(tf.constant, traj), delta_spec, 3)
    n = len(traj["action"])
    for i, start in enumerate(range(0, n, 3)):
        group = traj["action"][start : start + 3]
        np.testing.assert_allclose(out["action"].numpy()[i, :6], group[:, :6].sum(0), rtol=1e-5)
        assert out["action"].numpy()[i, 6] == group[-1, 6]


def test_filters_history_goal_and_subsample(corpus):
    root, layouts, _ = corpus
    traj = tf.nest.map_structure(tf.constant, _standardized(root, layouts["one_camera"])[1])  # 8 steps
    assert bool(traj_transforms.has_language(traj))
    no_language = _standardized(root, layouts["bimanual_no_language"])[0]
    assert not bool(traj_transforms.has_language(tf.nest.map_structure(tf.constant, no_language)))
    assert bool(traj_transforms.actions_within(traj, 1e4)) and not bool(traj_transforms.actions_within(traj, 50.0))

    window = traj_transforms.history_window(traj, 3)
    assert window["observation"]["proprio"].shape == (8, 3, 8)
    np.testing.assert_array_equal(window["history_mask"].numpy()[:3], [[0, 0, 1], [0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(window["observation"]["proprio"][5].numpy(), traj["observation"]["proprio"][3:6])

    goal = traj_transforms.relabel_goal(traj, ("primary",), tf.constant([1, 2], tf.int64))
    images = list(traj["observation"]["image_primary"].numpy())
    goal_index = [images.index(g) for g in goal["goal_image_primary"].numpy()]
    assert all(g >= t for t, g in enumerate(goal_index)) and goal_index[-1] == 7

    kept = traj_transforms.subsample(traj, 5, tf.constant([3, 4], tf.int64))
    steps = kept["timestep"].numpy()
    assert len(steps) == 5 and (np.diff(steps) > 0).all()


def test_unified_width_too_small_is_a_config_error(corpus):
    root, _, _ = corpus
    with pytest.raises(ConfigError, match=r"data.action_dim.*'tiny_bimanual' has 14"):
        loader.open_mixture(_config(root, "tiny_one_camera,tiny_bimanual", action_dim=7))


def test_augmented_stream_is_seeded_and_resumable(corpus):
    root, _, _ = corpus
    config = _config(
        root, "tiny_one_camera:1,tiny_cameras_depth:1", image_dropout=0.3, goal_relabeling=True,
        cameras=("primary", "wrist"),
    )  # fmt: skip
    config.augment = {"primary": {"crop_scale": (0.6, 1.0), "brightness": 0.2}, "wrist": {"hue": 0.1}}
    mix = loader.open_mixture(config)
    first = [b for _, b in zip(range(3), loader.train_batches(mix, config, global_batch_size=8, seed=5))]
    resumed = next(loader.train_batches(mix, config, global_batch_size=8, seed=5, start_step=2))
    jax.tree.map(np.testing.assert_array_equal, resumed, first[2])
    batch = first[0]
    images, masks = batch.observation.images, batch.observation.image_masks
    assert images["primary"].shape == (8, 16, 16, 3) and images["goal_primary"].shape == (8, 16, 16, 3)
    assert sorted(images) == sorted(masks) == ["goal_primary", "goal_wrist", "primary", "wrist"]
    assert (masks["primary"] | masks["wrist"]).all()  # dropout keeps a camera
    np.testing.assert_array_equal(masks["goal_primary"], masks["primary"])  # a goal image is there with its camera
    unaugmented = next(loader.train_batches(mix, _config(
        root, "tiny_one_camera:1,tiny_cameras_depth:1", goal_relabeling=True, cameras=("primary", "wrist")
    ), global_batch_size=8, seed=5))  # fmt: skip
    np.testing.assert_array_equal(unaugmented.actions, batch.actions)  # same frames...
    assert not np.array_equal(unaugmented.observation.images["primary"], images["primary"])  # ...other pixels


def test_an_observation_history_is_refused(corpus):
    root, _, _ = corpus
    with pytest.raises(ConfigError, match=r"'data.history' is 2; expected 1: the model reads only the current frame"):
        loader.open_mixture(_config(root, "tiny_one_camera", history=2))
