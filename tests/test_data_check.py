"""`vla-jax data check` and `data show` on tiny RLDS datasets written on the fly."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vla_jax.data import check, show, specs
from vla_jax.data.rlds_writer import write_rlds
from vla_jax.errors import DataError

from .conftest import REPO

ACTION_DIMS = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
IMAGE = 16
INSTRUCTION = "pick up the block"


def _spec(name: str, **fields) -> specs.DatasetSpec:
    """Registers a 7-D eef-delta spec with one camera and a 4-D state (overridable)."""
    base = dict(
        name=name,
        action_space="eef_delta",
        action_dims=ACTION_DIMS,
        normalize_action=(True,) * 6 + (False,),
        control_frequency_hz=10.0,
        cameras={"primary": "image"},
        state_keys=("state",),
        state_encoding="other",
        val_split=None,
    )
    return specs.register(specs.DatasetSpec(**{**base, **fields}))


def _episode(rng, length: int, *, action_dim: int = 7) -> dict:
    action = rng.normal(0.0, 0.1, (length, action_dim)).astype(np.float32)
    action[:, -1] = np.arange(length) % 2  # gripper in {0, 1}, never constant
    return {
        "steps": {
            "observation": {
                "image": rng.integers(0, 256, (length, IMAGE, IMAGE, 3), dtype=np.uint8),
                "state": rng.normal(size=(length, 4)).astype(np.float32),
            },
            "action": action,
            "language_instruction": np.full(length, INSTRUCTION),
            "is_first": np.arange(length) == 0,
            "is_last": np.arange(length) == length - 1,
        }
    }


def _jpeg(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG")
    return out.getvalue()


def _write(tmp_path, name: str, splits: dict, **kwargs):
    return write_rlds(tmp_path / "data", name, splits, num_shards=1, **kwargs)


def _read_order(builder_dir, split: str = "train") -> list[int]:
    """Episode lengths in tfds read order (the order the report's episode indices refer to)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(builder_dir))
    decoders = {"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}}
    return [len(list(ep["steps"])) for ep in builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)]


def _only(report: dict, kind: str) -> dict:
    found = [p for p in report["problems"] if p["kind"] == kind]
    assert len(found) == 1, (kind, check.format_report(report))
    return found[0]


def test_good_dataset_is_usable_with_exact_counts(tmp_path):
    rng = np.random.default_rng(0)
    _spec("check_good", val_split="val")
    splits = {"train": [_episode(rng, n) for n in (5, 4, 6)], "val": [_episode(rng, 3)]}
    path = _write(tmp_path, "check_good", splits)
    report = check.check_dataset("check_good", str(tmp_path / "data"))
    assert report["usable"], check.format_report(report)
    assert report["problems"] == [] and report["errors"] == report["warnings"] == 0
    assert (report["episodes"], report["steps"]) == (4, 18)
    assert report["splits"] == {"train": {"episodes": 3, "steps": 15}, "val": {"episodes": 1, "steps": 3}}
    assert report["builder_dir"] == str(path) and report["dataset"] == "check_good"
    json.dumps(report)  # the JSON contract
    assert "USABLE: 4 episodes, 18 steps" in check.format_report(report)
    limited = check.check_dataset("check_good", str(tmp_path / "data"), max_episodes=1)
    assert limited["episodes"] == 2 and limited["splits"]["train"]["episodes"] == 1


def test_nan_action_names_episode_step_and_key(tmp_path):
    rng = np.random.default_rng(1)
    _spec("check_nan")
    episodes = [_episode(rng, n) for n in (5, 6, 4)]
    episodes[1]["steps"]["action"][3, 2] = np.nan
    path = _write(tmp_path, "check_nan", {"train": episodes})
    report = check.check_dataset("check_nan", str(tmp_path / "data"))
    problem = _only(report, "non_finite")
    assert problem["episode"] == _read_order(path).index(6)
    assert (problem["key"], problem["split"], problem["severity"]) == ("action", "train", "error")
    assert "step 3" in problem["message"] and "2 (z)" in problem["message"]
    assert not report["usable"] and report["steps"] == 15


def test_corrupt_jpeg_is_reported_without_aborting_the_scan(tmp_path):
    rng = np.random.default_rng(2)
    _spec("check_jpeg")
    episodes = [_episode(rng, n) for n in (5, 3, 4)]
    for episode in episodes:
        episode["steps"]["observation"]["image"] = [_jpeg(i) for i in episode["steps"]["observation"]["image"]]
    episodes[1]["steps"]["observation"]["image"][2] = b"this is not a jpeg"
    path = _write(tmp_path, "check_jpeg", {"train": episodes}, image_shapes={"observation/image": (IMAGE, IMAGE, 3)})
    report = check.check_dataset("check_jpeg", str(tmp_path / "data"))
    problem = _only(report, "bad_image")
    assert problem["episode"] == _read_order(path).index(3)
    assert (problem["key"], problem["severity"]) == ("observation/image", "error")
    assert "step 2" in problem["message"]
    assert not report["usable"] and (report["episodes"], report["steps"]) == (3, 12)


def test_wrong_action_shape(tmp_path):
    rng = np.random.default_rng(3)
    _spec("check_shape")
    _write(tmp_path, "check_shape", {"train": [_episode(rng, 5, action_dim=6) for _ in range(2)]})
    report = check.check_dataset("check_shape", str(tmp_path / "data"))
    problem = _only(report, "wrong_shape")
    assert (problem["key"], problem["episode"], problem["severity"]) == ("action", None, "error")
    assert "[6]" in problem["message"] and "7 action dims" in problem["message"]
    assert not report["usable"] and report["episodes"] == 2  # the rest of the scan still ran


def test_empty_episode(tmp_path):
    rng = np.random.default_rng(4)
    _spec("check_empty")
    path = _write(tmp_path, "check_empty", {"train": [_episode(rng, n) for n in (5, 0, 4)]})
    report = check.check_dataset("check_empty", str(tmp_path / "data"))
    problem = _only(report, "empty_episode")
    assert problem["episode"] == _read_order(path).index(0) and problem["severity"] == "error"
    assert not report["usable"] and (report["episodes"], report["steps"]) == (3, 9)


def test_missing_camera_key(tmp_path):
    rng = np.random.default_rng(5)
    _spec("check_missing", cameras={"primary": "image", "wrist": "wrist_image"})
    _write(tmp_path, "check_missing", {"train": [_episode(rng, 4) for _ in range(2)]})
    report = check.check_dataset("check_missing", str(tmp_path / "data"))
    problem = _only(report, "missing_key")
    assert (problem["key"], problem["episode"], problem["severity"]) == ("observation/wrist_image", None, "error")
    assert "'image'" in problem["message"]  # says what is there
    assert not report["usable"] and report["episodes"] == 2


def test_warnings_keep_the_dataset_usable(tmp_path):
    rng = np.random.default_rng(6)
    _spec("check_warn")
    episodes = [_episode(rng, n) for n in (5, 4)]
    for episode in episodes:
        episode["steps"]["action"][:, 5] = 0.25
    episodes[1]["steps"]["language_instruction"][:] = ""
    episodes[0]["steps"]["is_last"][:] = False
    _write(tmp_path, "check_warn", {"train": episodes})
    report = check.check_dataset("check_warn", str(tmp_path / "data"))
    assert report["usable"] and report["errors"] == 0, check.format_report(report)
    assert {p["kind"]: p["severity"] for p in report["problems"]} == {
        "constant_dim": "warning",
        "missing_language": "warning",
        "bad_flags": "warning",
    }
    assert "5 (yaw)" in _only(report, "constant_dim")["message"]


def test_gripper_outside_its_convention_and_per_kind_cap(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    _spec("check_range")
    episodes = [_episode(rng, 3) for _ in range(4)]
    for episode in episodes:
        episode["steps"]["action"][::2, -1] = -1.0  # stored as closed=-1 but the spec says open=1,closed=0
    _write(tmp_path, "check_range", {"train": episodes})
    monkeypatch.setattr(check, "MAX_PER_KIND", 2)
    report = check.check_dataset("check_range", str(tmp_path / "data"))
    assert report["problem_counts"] == {"out_of_range": 4}
    assert len(report["problems"]) == 2 and not report["usable"]
    assert "2 more out_of_range" in check.format_report(report)


def _split_action(traj: dict) -> dict:
    """A standardize_fn: the action is stored as a 6-D delta plus a 1-D gripper."""
    import tensorflow as tf

    return {**traj, "action": tf.concat([traj["delta"], traj["grip"]], axis=-1)}


def test_keys_are_checked_after_standardize_fn(tmp_path):
    rng = np.random.default_rng(8)
    _spec("check_fn", standardize_fn=_split_action)
    episodes = [_episode(rng, 4) for _ in range(2)]
    for episode in episodes:
        action = episode["steps"].pop("action")
        episode["steps"].update(delta=action[:, :6], grip=action[:, 6:])
    _write(tmp_path, "check_fn", {"train": episodes})
    report = check.check_dataset("check_fn", str(tmp_path / "data"))
    assert report["usable"] and report["steps"] == 8, check.format_report(report)


def test_location_and_unreadable_problems(tmp_path):
    rng = np.random.default_rng(9)
    _spec("check_where", version="2.0.0")
    report = check.check_dataset("check_where", str(tmp_path / "nowhere"))
    assert [p["kind"] for p in report["problems"]] == ["not_found"] and not report["usable"]
    path = _write(tmp_path, "check_where", {"train": [_episode(rng, 3) for _ in range(3)]})
    problem = _only(check.check_dataset("check_where", str(tmp_path / "data")), "wrong_version")
    assert "'1.0.0'" in problem["message"]

    _spec("check_corrupt")
    path = _write(tmp_path, "check_corrupt", {"train": [_episode(rng, 3) for _ in range(3)]})
    record = next(path.glob("*train.tfrecord*"))
    data = bytearray(record.read_bytes())
    data[len(data) // 2] ^= 0xFF
    record.write_bytes(bytes(data))
    problem = _only(check.check_dataset("check_corrupt", str(tmp_path / "data")), "unreadable")
    assert problem["split"] == "train" and problem["episode"] is not None
    (path / "features.json").write_text("{not json")
    report = check.check_dataset("check_corrupt", str(tmp_path / "data"))
    assert _only(report, "unreadable")["episode"] is None and not report["usable"]


SPEC_FILE = """
from vla_jax.data.specs import DatasetSpec, register

for name in ("cli_check_good", "cli_check_nan"):
    register(DatasetSpec(
        name=name, action_space="eef_delta", action_dims={dims!r}, normalize_action=(True,) * 6 + (False,),
        control_frequency_hz=10.0, cameras={{"primary": "image"}}, state_keys=("state",), val_split=None,
    ))
"""


def test_cli_exit_codes_and_json(tmp_path):
    rng = np.random.default_rng(10)
    spec_file = tmp_path / "my_specs.py"
    spec_file.write_text(SPEC_FILE.format(dims=ACTION_DIMS))
    broken = [_episode(rng, 4) for _ in range(2)]
    broken[0]["steps"]["action"][:] = np.nan
    _write(tmp_path, "cli_check_nan", {"train": broken})
    _write(tmp_path, "cli_check_good", {"train": [_episode(rng, 4) for _ in range(2)]})
    script = REPO / ".venv" / "bin" / "vla-jax"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "vla_jax.cli"]
    env = dict(os.environ, VLA_JAX_SPECS=str(spec_file), TF_CPP_MIN_LOG_LEVEL="3")

    def run(name: str) -> subprocess.CompletedProcess:
        args = [*command, "data", "check", name, "--data-dir", str(tmp_path / "data"), "--json"]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)

    result = run("cli_check_nan")
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["usable"] is False and report["episodes"] == 2
    assert [(p["kind"], p["key"], p["split"]) for p in report["problems"]] == [("non_finite", "action", "train")]
    result = run("cli_check_good")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["usable"] is True


def test_render_draws_frames_and_scales_with_episodes(tmp_path):
    rng = np.random.default_rng(11)
    _spec("show_tiny")
    _write(tmp_path, "show_tiny", {"train": [_episode(rng, n) for n in (5, 6, 4)]})
    size, frames = 32, 3
    sizes = {}
    for count in (1, 3):
        out = show.render(
            "show_tiny",
            str(tmp_path / "data"),
            str(tmp_path / "pics" / f"show_{count}.png"),
            num_episodes=count,
            frames_per_episode=frames,
            image_size=size,
        )
        assert out.is_file()
        with Image.open(out) as picture:
            assert picture.format == "PNG"
            sizes[count] = picture.size
            pixels = np.asarray(picture.convert("RGB"))
    layout = show.Layout(3, frames, size, len(ACTION_DIMS), 4)
    assert sizes[3] == (layout.width, layout.height)
    assert sizes[1][0] == sizes[3][0] and sizes[3][1] - show.MARGIN == 3 * (sizes[1][1] - show.MARGIN)
    assert sizes[3][0] >= frames * size
    x0, y0, x1, y1 = layout.frame_box(2, 0, frames - 1)  # last frame of the primary camera, last episode
    frame = pixels[y0:y1, x0:x1].reshape(-1, 3)
    assert len(np.unique(frame, axis=0)) > 10
    x0, y0, x1, y1 = layout.frame_box(0, 2, 0)  # the spec has no wrist camera: a grey box
    assert (pixels[y1 - 4, x0 + 4 : x1 - 4] == show.MISSING).all()


def test_render_of_a_missing_dataset_is_one_clear_error(tmp_path):
    _spec("show_missing")
    with pytest.raises(DataError, match="no directory 'show_missing' under data dir"):
        show.render("show_missing", str(tmp_path), str(tmp_path / "x.png"))
    with pytest.raises(DataError, match="num_episodes >= 1"):
        show.render("show_missing", str(tmp_path), str(tmp_path / "x.png"), num_episodes=0)


def _bridge_like(traj: dict) -> dict:
    """Like bridge_v2_transform: drops the first step (a zero action) and relabels the movement dims from the
    reached states, dropping the last: the raw action's movement dims are never read."""
    import tensorflow as tf

    state = traj["observation"]["state"]
    move = state[2:] - state[1:-1]  # dims 0-3 from the reached states
    sliced = tf.nest.map_structure(lambda x: x[1:-1], traj)
    return {**sliced, "action": tf.concat([move, traj["action"][1:-1, 4:]], axis=-1)}


def test_a_standardize_fn_that_drops_steps_keeps_the_recorded_flags_and_raw_nans_are_warned(tmp_path):
    rng = np.random.default_rng(11)
    _spec("check_bridge_like", standardize_fn=_bridge_like)
    episodes = [_episode(rng, n) for n in (6, 7, 5)]
    episodes[2]["steps"]["action"][3, 1] = np.nan  # a movement dim the relabelling recomputes
    path = _write(tmp_path, "check_bridge_like", {"train": episodes})
    report = check.check_dataset("check_bridge_like", str(tmp_path / "data"))
    assert report["usable"] and report["errors"] == 0, check.format_report(report)
    assert [p["kind"] for p in report["problems"]] == ["non_finite_raw"]  # and no bad_flags: is_first/is_last hold
    problem = report["problems"][0]
    assert (problem["key"], problem["episode"]) == ("action", _read_order(path).index(5))
    assert "step 3" in problem["message"] and "standardize_fn" in problem["message"]
    assert report["steps"] == 18  # recorded steps
