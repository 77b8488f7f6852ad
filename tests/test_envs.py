"""Closed-loop pieces without a trained model: the demo environment, the episode runner, the report and video."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from vla_jax.envs import demo
from vla_jax.envs.base import EnvError, SyncVectorEnv, eval_seed
from vla_jax.envs.demo import DemoEnv
from vla_jax.evaluation import closed_loop, report, video
from vla_jax.evaluation.runner import Controls, episode_starts, other_task_prompts, run_episodes


def test_the_same_seed_gives_the_same_scene_and_another_seed_another():
    a, b, c = DemoEnv(), DemoEnv(), DemoEnv()
    first, again, other = a.reset(5), b.reset(5), c.reset(6)
    for key in ("image/primary", "image/wrist", "state"):
        np.testing.assert_array_equal(first[key], again[key])
    assert first["prompt"] == again["prompt"]
    assert not np.array_equal(first["image/primary"], other["image/primary"])
    assert set(first) == {"image/primary", "image/wrist", "state", "prompt", "dataset"}
    assert first["image/primary"].dtype == np.uint8 and first["image/primary"].shape == (64, 64, 3)


def test_the_expert_succeeds_and_lifts_the_named_block():
    for seed in range(40):
        episode = demo.expert_episode(eval_seed(0, seed))
        assert episode["success"], seed
        assert len(episode["steps"]) < demo.MAX_STEPS


def _drive_to(env: DemoEnv, block: int, close_at: float) -> dict:
    """Moves over ``block``, descends to ``close_at``, closes the gripper and lifts; the last info."""
    info = {}
    for _ in range(30):
        delta = env.blocks[block] - env.ee[:2]
        if np.linalg.norm(delta) < 1e-3:
            break
        _, _, info = env.step([*np.clip(delta, -0.06, 0.06), 0.0, 1.0])
    _, _, info = env.step([0.0, 0.0, close_at - env.ee[2], 1.0])
    _, _, info = env.step([0.0, 0.0, 0.0, 0.0])
    done = False
    while not done:
        _, done, info = env.step([0.0, 0.0, 0.5, 0.0])
    return info


def test_lifting_another_block_is_a_wrong_object_and_closing_high_grasps_nothing():
    env = DemoEnv()
    env.reset(3)
    other = (env.target + 1) % 3
    info = _drive_to(env, other, close_at=0.0)
    assert info["wrong_object"] and not info["success"] and info["held"] == env.color_names[other]

    env.reset(3)
    start = [b.copy() for b in env.blocks]
    info = _drive_to(env, env.target, close_at=0.5)  # closes in the air: nothing is grasped, the episode times out
    assert not info["success"] and not info["wrong_object"] and info["held"] == ""
    assert env.steps == env.max_steps
    for before, after in zip(start, env.blocks, strict=True):
        np.testing.assert_array_equal(before, after)

    env.reset(3)
    assert _drive_to(env, env.target, close_at=0.0)["success"]


def test_opening_the_gripper_drops_the_block():
    env = DemoEnv()
    env.reset(11)
    target = env.target
    env.blocks[target] = env.ee[:2].copy()  # put the block under the gripper
    env.step([0.0, 0.0, -1.0, 1.0])
    env.step([0.0, 0.0, 0.0, 0.0])
    assert env.held == target
    env.step([0.1, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(env.blocks[target], env.ee[:2])
    env.step([0.0, 0.0, 0.0, 1.0])
    assert env.held is None and env.block_heights[target] == 0.0
    moved_to = env.blocks[target].copy()
    env.step([0.1, 0.1, 0.0, 1.0])
    np.testing.assert_array_equal(env.blocks[target], moved_to)


@pytest.mark.parametrize(
    "action, message",
    [([0.0, 0.0, 0.0], r"shape \(3,\); expected \[4\]"), ([0.0, np.nan, 0.0, 1.0], "NaN or inf")],
)
def test_a_bad_action_is_an_error_naming_it(action, message):
    env = DemoEnv()
    with pytest.raises(EnvError, match="before reset"):
        env.step([0.0] * 4)
    env.reset(0)
    with pytest.raises(EnvError, match=message):
        env.step(action)
    with pytest.raises(EnvError, match="seed is -1"):
        env.reset(-1)


class ConstantPolicy:
    """A policy that always answers the same chunk; records what it was shown."""

    def __init__(self, chunk: np.ndarray):
        self.chunk = chunk
        self.shown: list[dict] = []

    def infer_batch(self, observations: list[dict]) -> list[dict]:
        self.shown += observations
        return [{"actions": self.chunk.copy()} for _ in observations]


class ExpertChunkPolicy:
    """Answers a chunk of horizon H whose every row is the expert's action for the observed scene's env."""

    def __init__(self, envs: SyncVectorEnv, horizon: int = 4):
        self.envs, self.horizon = envs, horizon

    def infer_batch(self, observations):
        results = []
        for obs in observations:
            env = next(e for e in self.envs.envs if np.array_equal(e.state(), obs["state"]))
            results.append({"actions": np.repeat(env.expert_action()[None], self.horizon, 0)})
        return results


def _run(policy, n=6, num_envs=3, **kwargs):
    envs = SyncVectorEnv([DemoEnv() for _ in range(num_envs)])
    seeds = [eval_seed(0, i) for i in range(n)]
    return run_episodes(policy, envs, seeds, episode_starts(envs, seeds), **kwargs)


def test_the_runner_gives_the_experts_episodes_in_seed_order():
    episodes, timing = _run(None, n=10, num_envs=4)
    assert [e.index for e in episodes] == list(range(10))
    for e in episodes:
        own = demo.expert_episode(e.seed)
        assert e.success and e.length == len(own["steps"]) and e.instruction == own["instruction"]
    assert timing["steps"] == sum(e.length for e in episodes)


def test_chunks_are_executed_k_at_a_time_or_ensembled_every_step():
    still = np.zeros((4, 4), np.float32)
    still[:, 3] = 1.0
    for kwargs, per_episode in (({}, 15), ({"execute_steps": 2}, 30), ({"ensemble_decay": 0.01}, 60)):
        policy = ConstantPolicy(still)
        episodes, _ = _run(policy, n=3, **kwargs)
        assert all(e.length == demo.MAX_STEPS and not e.success for e in episodes)
        assert [e.queries for e in episodes] == [per_episode] * 3, kwargs
        assert len(policy.shown) == 3 * per_episode


def test_controls_change_what_the_policy_is_shown_not_the_task():
    still = np.zeros((4, 4), np.float32)
    policy = ConstantPolicy(still)
    episodes, _ = _run(policy, n=12, num_envs=4, controls=Controls(shuffle_instructions=True, blank_cameras=("wrist",)))
    instructions = {e.instruction for e in episodes}
    for e in episodes:  # told the instruction of an episode of another task: never its own colour
        assert e.task not in e.prompt and e.prompt in instructions
        assert e.task in e.instruction
    assert all(not obs["image/wrist"].any() for obs in policy.shown)
    assert all(obs["image/primary"].any() for obs in policy.shown)
    assert {obs["prompt"] for obs in policy.shown} == {e.prompt for e in episodes}
    starts = [("red", "pick up the red block"), ("red", "grab the red block"), ("blue", "lift the blue cube")]
    prompts = other_task_prompts(starts, np.random.default_rng(0))
    assert prompts == ["lift the blue cube", "lift the blue cube", prompts[2]] and "red" in prompts[2]
    with pytest.raises(EnvError, match="at least two tasks"):
        other_task_prompts(starts[:2], np.random.default_rng(0))


def test_an_undecodable_chunk_ends_its_episode_as_a_failure():
    episodes, _ = _run(ConstantPolicy(np.full((4, 4), np.nan, np.float32)), n=2)
    assert all(e.invalid_action and not e.success and e.length == 0 for e in episodes)
    summary = report.summarize(episodes)
    assert summary["invalid_action_rate"] == 1.0 and summary["timeout_rate"] == 0.0


def test_a_policy_that_follows_the_expert_succeeds_through_the_runner():
    envs = SyncVectorEnv([DemoEnv() for _ in range(3)])
    seeds = [eval_seed(1, i) for i in range(6)]
    episodes, _ = run_episodes(ExpertChunkPolicy(envs), envs, seeds, episode_starts(envs, seeds), execute_steps=1)
    assert all(e.success for e in episodes)


def test_wilson_interval_and_per_task_rates():
    low, high = report.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert report.wilson_interval(0, 20)[0] == 0.0 and report.wilson_interval(20, 20)[1] == 1.0
    episodes, _ = _run(None, n=12, num_envs=4)
    episodes[0].success = False
    summary = report.summarize(episodes)
    assert summary["successes"] == 11 and summary["success_rate"] == pytest.approx(11 / 12)
    assert sum(t["episodes"] for t in summary["per_task"].values()) == 12
    assert summary["per_task"][episodes[0].task]["successes"] == summary["per_task"][episodes[0].task]["episodes"] - 1


def test_the_video_shows_every_recorded_episode_to_its_end(tmp_path):
    from PIL import Image

    episodes, _ = _run(None, n=5, record_episodes=3, cameras=("primary", "wrist"))
    assert [e.frames is not None for e in episodes] == [True, True, True, False, False]
    assert all(len(e.frames) == e.length + 1 for e in episodes[:3])
    path = video.write_gif(episodes, tmp_path / "v.gif", fps=10, scale=2, columns=2)
    gif = Image.open(path)
    longest = max(e.length for e in episodes[:3]) + 1
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert sum(durations) == 100 * (longest - 1) + video.HOLD_MS  # identical frames may be merged, time is kept
    cell_w = 2 * 128 + 2 * video.BORDER
    assert gif.size == (2 * cell_w, 2 * (128 + 2 * video.BORDER + video.CAPTION))
    gif.seek(gif.n_frames - 1)
    corner = np.asarray(gif.convert("RGB"))[1, 1]
    assert tuple(corner) == video.SUCCESS


def test_settings_are_checked_before_anything_runs():
    with pytest.raises(Exception, match="--env 'moon' is not an environment"):
        closed_loop.env_spec("moon")
    for kwargs, message in (
        ({"episodes": 0}, "--episodes is 0"),
        ({"num_envs": 65}, "--num-envs is 65"),
        ({"execute_steps": 5, "horizon": 4}, r"--execute is 5; expected an int in \[1, the policy's horizon 4\]"),
        ({"ensemble_decay": -1.0}, "--ensemble is -1.0"),
    ):
        settings = dict(episodes=4, num_envs=4, execute_steps=None, ensemble_decay=None, horizon=None) | kwargs
        with pytest.raises(Exception, match=message):
            closed_loop.check_settings(**settings)


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "vla_jax.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_eval_cli_runs_the_expert_and_writes_results_and_video(tmp_path):
    out = tmp_path / "ev"
    done = _cli("eval", "--env", "demo", "--expert", "--episodes", "6", "--num-envs", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "success 100.0% (6/6" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["success_rate"] == 1.0 and len(results["episodes_detail"]) == 6
    assert results["first_env_seed"] == eval_seed(0, 0)
    assert (out / "episodes.gif").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "moon", "--expert"], "--env 'moon' is not an environment"),
        (["--env", "demo"], "needs exactly one of"),
        (["--env", "demo", "--expert", "--episodes", "0"], "--episodes is 0"),
        (["--env", "demo", "--expert", "--blank-camera", "top"], "--blank-camera 'top'"),
        (["--env", "demo", "/nonexistent"], "does not exist"),
        (["--env", "demo", "--expert", "--seed", "-200"], "--seed is -200; expected an int in [0, 1048576]"),
        (["--env", "demo", "--expert", "--episodes", "10001"], "--episodes is 10001"),
        (["--env", "demo", "--expert", "--decoder", "fast"], "--decoder does not apply with --expert"),
        (["--env", "demo", "--expert", "--token", "t"], "--token does not apply"),
        (["--env", "demo", "--server", "localhost"], "is not HOST:PORT"),
    ],
)
def test_eval_cli_refuses_bad_settings_in_one_line(args, message, tmp_path):
    done = _cli("eval", *args, "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vla-jax: error:") and message in lines[0], done.stderr
