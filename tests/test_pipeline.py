import functools

import jax
import numpy as np
import pytest
import tensorflow as tf

from vla_jax.data import loader, statistics, traj_transforms, trajectory
from vla_jax.data.specs import get_spec
from vla_jax.data.standardize import standardize
from vla_jax.errors import ConfigError, DataError

from .conftest import assert_statistics_match, debug_config


def _raw_arrays(demo_dir):
    builder = trajectory.open_builder(demo_dir, "vla_demo")
    spec = get_spec("vla_demo")
    ds = trajectory.traj_map(trajectory.from_rlds(builder, "train"), functools.partial(standardize, spec=spec))
    actions, states = [], []
    for traj in ds.as_numpy_iterator():
        actions.append(traj["action"])
        states.append(traj["observation"]["proprio"])
    return np.concatenate(actions), np.concatenate(states)


def test_statistics_match_exact_values(demo_dir):
    source = loader.open_mixture(debug_config().data).sources[0]
    actions, states = _raw_arrays(demo_dir)
    for stats, rows in ((source.statistics.action, actions), (source.statistics.state, states)):
        assert_statistics_match(stats, rows.astype(np.float64), atol=1e-6, std_rtol=1e-5)
    assert source.statistics.num_transitions == len(actions)
    assert source.statistics.action_mask == (True, True, True, False)


def test_statistics_cache_is_keyed_by_fingerprint(demo_dir):
    import dataclasses

    spec = get_spec("vla_demo")
    fp = loader.open_mixture(debug_config().data).sources[0].statistics.fingerprint
    assert (demo_dir / f"vla_jax_stats_{fp}.json").is_file()
    base = statistics.fingerprint(spec, demo_dir)
    changed = dataclasses.replace(spec, normalize_action=(True, True, True, True))
    assert statistics.fingerprint(changed, demo_dir) != base

    def my_fix(traj):
        return traj

    with_transform = dataclasses.replace(spec, standardize_fn=my_fix)
    assert statistics.fingerprint(with_transform, demo_dir) != base
    assert statistics.fingerprint(spec, demo_dir, settings="stride=2") != base
    # Resampling changes the statistics, so a run at another control rate gets its own cache entry.
    resampled = loader.open_mixture(debug_config("data.target_control_hz=5.0").data).sources[0].statistics
    assert (
        resampled.fingerprint != fp
        and resampled.num_transitions
        < 0.6 * loader.open_mixture(debug_config().data).sources[0].statistics.num_transitions
    )


def test_normalization_round_trip_and_mask():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(1000, 3)).astype(np.float32)
    stats = statistics.ArrayStats(
        rows.mean(0), rows.std(0), rows.min(0), rows.max(0), np.quantile(rows, 0.01, 0), np.quantile(rows, 0.99, 0)
    )
    mask = (True, True, False)
    for mode in statistics.NORMALIZATION_MODES:
        normed = statistics.normalize(rows, stats, mode, mask)
        np.testing.assert_array_equal(normed[:, 2], rows[:, 2])
        inside = np.all((rows >= stats.q01) & (rows <= stats.q99), axis=1) if mode == "quantile" else slice(None)
        back = statistics.unnormalize(normed, stats, mode, mask)
        np.testing.assert_allclose(back[inside], rows[inside], atol=1e-5)
        tf_normed = statistics.normalize(tf.constant(rows), stats, mode, mask, xp=tf.experimental.numpy)
        np.testing.assert_allclose(np.asarray(tf_normed), normed, atol=1e-6)
    quantile = statistics.normalize(rows, stats, "quantile")
    assert quantile.min() == -1.0 and quantile.max() == 1.0


def test_chunk_actions_pads_with_mask():
    action = tf.reshape(tf.range(10, dtype=tf.float32), [5, 2])
    out = traj_transforms.chunk_actions({"action": action}, horizon=3)
    assert out["action"].shape == (5, 3, 2)
    np.testing.assert_array_equal(out["action"][3].numpy(), [[6, 7], [8, 9], [8, 9]])
    np.testing.assert_array_equal(out["action_mask"].numpy()[3:], [[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(out["action"][0].numpy(), [[0, 1], [2, 3], [4, 5]])


def test_batches_have_model_layout(demo_dir):
    config = debug_config()
    mix = loader.open_mixture(config.data)
    batch = next(loader.train_batches(mix, config.data, global_batch_size=8, seed=0))
    horizon = config.data.action_horizon
    assert batch.actions.shape == (8, horizon, 4) and batch.action_mask.shape == (8, horizon)
    images, masks = batch.observation.images, batch.observation.image_masks
    assert sorted(images) == sorted(masks) == ["primary", "wrist"]
    assert images["primary"].shape == (8, 64, 64, 3) and images["primary"].dtype == np.uint8
    assert masks["wrist"].all()
    assert batch.observation.prompt_tokens.shape == (8, 0)  # no prompt tokenizer: no prompt (no model takes it)
    assert np.abs(batch.actions[..., :3]).max() <= 1.0  # quantile-normalized dims
    assert set(np.unique(batch.actions[..., 3])) <= {0.0, 1.0}  # gripper left as is


def test_stream_is_seeded_and_resumable(demo_dir):
    config = debug_config()
    mix = loader.open_mixture(config.data)
    stream = loader.train_batches(mix, config.data, global_batch_size=8, seed=3)
    first = [next(stream) for _ in range(4)]
    again = loader.train_batches(mix, config.data, global_batch_size=8, seed=3)
    resumed = loader.train_batches(mix, config.data, global_batch_size=8, seed=3, start_step=2)
    other = next(loader.train_batches(mix, config.data, global_batch_size=8, seed=4))
    jax.tree.map(np.testing.assert_array_equal, next(again), first[0])
    r2, r3 = next(resumed), next(resumed)
    jax.tree.map(np.testing.assert_array_equal, r2, first[2])
    jax.tree.map(np.testing.assert_array_equal, r3, first[3])
    assert not np.array_equal(other.actions, first[0].actions)


def test_missing_dataset_directory_is_a_clear_error(tmp_path):
    config = debug_config(f"data.data_dir={tmp_path / 'nowhere'}")
    with pytest.raises(
        DataError, match=r"dataset 'vla_demo': data dir '.*nowhere' does not exist \(config key data.data_dir\)"
    ):
        loader.open_mixture(config.data)


def test_unknown_dataset_and_mode(demo_dir):
    with pytest.raises(DataError, match="did you mean 'vla_demo'"):
        loader.open_mixture(debug_config("data.mixture=vla_dem").data)
    with pytest.raises(ConfigError, match="data.normalization"):
        loader.open_mixture(debug_config("data.normalization=minmax").data)


def test_statistics_fall_back_to_the_cache_dir_when_the_data_dir_is_not_writable(tmp_path, cache_dir, monkeypatch):
    """A read-only data dir (here: the cache file's name taken by a directory) still gets cached stats."""
    from . import rlds_fixtures

    layout = rlds_fixtures.layouts()["one_camera"]
    rlds_fixtures.build(tmp_path, layout, num_shards=1)
    builder_dir = loader.resolve_builder_dir(layout.spec, str(tmp_path))
    builder = trajectory.open_builder(builder_dir, layout.spec.name)

    def trajectories():
        ds = trajectory.from_rlds(builder, "train")
        return trajectory.traj_map(ds, functools.partial(standardize, spec=layout.spec))

    fp = statistics.fingerprint(layout.spec, builder_dir)
    (builder_dir / f"vla_jax_stats_{fp}.json").mkdir()  # writing there fails
    stats = statistics.load_or_compute(layout.spec, builder_dir, trajectories())
    fallback = cache_dir / "statistics" / layout.spec.name / f"vla_jax_stats_{fp}.json"
    assert fallback.is_file()
    loads = []
    original = statistics.DatasetStatistics.from_json
    monkeypatch.setattr(statistics.DatasetStatistics, "from_json", lambda data: loads.append(1) or original(data))
    again = statistics.load_or_compute(layout.spec, builder_dir, trajectories())
    assert loads == [1]  # read from the fallback cache, not recomputed
    np.testing.assert_array_equal(again.action.mean, stats.action.mean)
    assert not list(builder_dir.glob("*.tmp*"))  # the failed write left nothing behind
