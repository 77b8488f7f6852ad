"""`vla-jax data convert lerobot`: LeRobot datasets (v2.1, v3.0; H.264 and AV1 videos) written here with
pyarrow and PyAV, converted to RLDS, checked, shown and trained on."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

from tests.conftest import REPO
from tests.lerobot_fixture import corrupt_video, write_lerobot
from vla_jax.data import lerobot
from vla_jax.errors import DataError

CAMERAS = ("observation.images.top", "observation.images.wrist")
LENGTHS = (12, 9, 15)
VLA_JAX = str(REPO / ".venv" / "bin" / "vla-jax")


def _write(root: pathlib.Path, version: str, codec: str) -> list[dict]:
    """A 3-episode dataset as lerobot writes it (tests/lerobot_fixture.py); each episode's arrays and frames."""
    return write_lerobot(root, version=version, codec=codec, cameras=CAMERAS, lengths=LENGTHS)["episodes"]


def _read_rlds(builder_dir: pathlib.Path) -> list[dict]:
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(builder_dir))
    episodes = []
    for episode in builder.as_dataset(split="train", shuffle_files=False):
        steps = list(episode["steps"].as_numpy_iterator())
        episodes.append({k: np.stack([s[k] for s in steps]) for k in ("action", "is_first", "is_last")} | {
            "state": np.stack([s["observation"]["state"] for s in steps]),
            "frames": {c: np.stack([s["observation"][c.removeprefix("observation.")] for s in steps]) for c in CAMERAS},
            "task": steps[0]["language_instruction"].decode(),
        })  # fmt: skip
    return episodes


@pytest.mark.parametrize("version, codec", [("v2.1", "av1"), ("v3.0", "h264")])
def test_a_lerobot_dataset_converts_to_rlds_that_checks_and_trains(tmp_path, version, codec):
    written = _write(tmp_path / "so100_pick", version, codec)
    out = tmp_path / "data"
    summary = lerobot.convert(tmp_path / "so100_pick", out)
    assert (summary["name"], summary["episodes"], summary["steps"]) == ("so100_pick", 3, sum(LENGTHS))
    assert not (out / ".so100_pick.staging").exists()
    episodes = sorted(_read_rlds(pathlib.Path(summary["builder_dir"])), key=lambda e: len(e["action"]))
    for got, want in zip(episodes, sorted(written, key=lambda e: len(e["action"])), strict=True):
        np.testing.assert_array_equal(got["action"], want["action"])
        np.testing.assert_array_equal(got["state"], want["state"])
        assert got["task"] == want["task"] and got["is_first"][0] and got["is_last"][-1]
        for camera in CAMERAS:  # through a lossy codec and JPEG: close, and each frame closest to its own time
            frames, source = got["frames"][camera].astype(float), want["frames"][camera]
            error = np.abs(frames - source).mean()
            off_by_one = np.abs(frames[1:] - source[:-1]).mean()
            assert error < 10.0 and error < 0.85 * off_by_one, (camera, error, off_by_one)
    spec_file = pathlib.Path(summary["spec_file"])
    text = spec_file.read_text()
    assert "control_frequency_hz=10.0" in text and "'motor_0.pos'" in text and "CONFIRM" in text
    env = dict(os.environ, VLA_JAX_SPECS=str(spec_file), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [VLA_JAX, "data", "check", "so100_pick", "--data-dir", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(result.stdout)["usable"]
    if version == "v3.0":  # show and a 5-step training run, once
        shown = subprocess.run(
            [VLA_JAX, "data", "show", "so100_pick", "--data-dir", str(out), "--out", str(tmp_path / "show.png")],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert shown.returncode == 0 and (tmp_path / "show.png").stat().st_size > 1000, shown.stderr[-2000:]
        train = subprocess.run(
            [VLA_JAX, "train", "--config", str(REPO / "experiments" / "debug.py"), "--workdir", str(tmp_path / "run"),
             "--config.data.mixture=so100_pick", f"--config.data.data_dir={out}", "--config.num_steps=5",
             "--config.eval_every=5", "--config.checkpoint_every=5", "--config.data.action_dim=6",
             "--config.data.state_dim=6", "--config.data.val_batches=1", "--config.tokenizer.fit_chunks=200",
             "--config.batch_size=8"],
            env=dict(env, VLA_JAX_CACHE=str(tmp_path / "cache")), capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert train.returncode == 0, train.stderr[-3000:]
        steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 5


def test_an_interrupted_conversion_resumes_and_bad_sources_are_one_line(tmp_path, monkeypatch):
    _write(tmp_path / "src", "v2.1", "h264")
    out = tmp_path / "data"
    calls = []
    real = lerobot.read_episode

    def failing(source, episode, tasks):
        if episode.index == 2:
            raise KeyboardInterrupt  # the conversion stops after two episodes
        calls.append(episode.index)
        return real(source, episode, tasks)

    monkeypatch.setattr(lerobot, "read_episode", failing)
    with pytest.raises(KeyboardInterrupt):
        lerobot.convert(tmp_path / "src", out, name="resumed")
    assert sorted(p.name for p in (out / ".resumed.staging").iterdir()) == [
        "episode_000000.npz", "episode_000001.npz"
    ]  # fmt: skip
    monkeypatch.setattr(lerobot, "read_episode", lambda s, e, t: (calls.append(e.index), real(s, e, t))[1])
    summary = lerobot.convert(tmp_path / "src", out, name="resumed")
    assert summary["resumed_episodes"] == 2 and calls == [0, 1, 2]  # only episode 2 was decoded again

    video = tmp_path / "src" / "videos" / "chunk-000" / CAMERAS[1] / "episode_000001.mp4"
    good = video.read_bytes()
    corrupt_video(video)
    with pytest.raises(DataError, match=r"episode_000001\.mp4: (does not decode|has \d+ frames)"):
        lerobot.convert(tmp_path / "src", tmp_path / "other")
    video.write_bytes(good)
    (tmp_path / "src" / "data" / "chunk-000" / "episode_000002.parquet").unlink()
    result = subprocess.run(
        [VLA_JAX, "data", "convert", "lerobot", str(tmp_path / "src"), "--out", str(tmp_path / "third")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "episode_000002.parquet: missing" in lines[-1], result.stderr[-2000:]
    info = json.loads((tmp_path / "src" / "meta" / "info.json").read_text())
    del info["fps"]
    (tmp_path / "src" / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"info\.json: has no field 'fps'"):
        lerobot.open_source(tmp_path / "src")
