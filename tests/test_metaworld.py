"""Meta-World through vla_jax.envs.metaworld: real simulators in spawned workers, the experts, the demo writer.

This process never imports metaworld or mujoco (MuJoCo's renderer and TensorFlow
cannot share a process): availability is probed in a subprocess.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

_probe = subprocess.run([sys.executable, "-c", "import metaworld"], capture_output=True, text=True, timeout=120)
if _probe.returncode != 0:
    pytest.skip(
        f"`import metaworld` fails ({_probe.stderr.strip().splitlines()[-1:]}); pip install metaworld==3.1.1",
        allow_module_level=True,
    )

from vla_jax.envs import metaworld as mw  # noqa: E402
from vla_jax.envs.base import EnvError, eval_seed  # noqa: E402

# The two tasks whose experts succeed on every variation tried (DESIGN.md section 8), with short episodes.
TASKS = ("button-press-topdown-v3", "drawer-close-v3")


@pytest.fixture(scope="module")
def envs():
    env = mw.MetaWorldVectorEnv(2, tasks=TASKS)
    yield env
    env.close()


def test_seeds_map_to_tasks_and_held_out_variations():
    assert mw.task_and_variation(0, TASKS) == (TASKS[0], 0)
    assert mw.task_and_variation(7, TASKS) == (TASKS[1], 3)
    evaluation = [mw.task_and_variation(eval_seed(0, i)) for i in range(20)]
    assert sorted(t for t, _ in evaluation) == sorted(mw.MT10 * 2)  # every task twice
    assert min(v for _, v in evaluation) > 50_000  # far from the demonstrations' variations 0, 1, ...
    with pytest.raises(EnvError, match="seed is -1"):
        mw.task_and_variation(-1)


def test_frames_states_and_steps(envs):
    obs = envs.reset(0, 0)
    assert set(obs) == {"image/primary", "state", "prompt", "dataset"}
    assert obs["prompt"] == "press the button from the top" and obs["dataset"] == "metaworld"
    assert envs.task(0) == TASKS[0]
    first = obs["image/primary"]
    assert first.dtype == np.uint8 and first.shape == (64, 64, 3) and first.any()
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (4,)
    frames = [first]
    for _ in range(8):
        action = envs.expert_action(0)
        assert action.shape == (4,) and np.all(np.abs(action) <= 1.0)
        obs, done, info = envs.step({0: action})[0]
        assert not done and not info["success"]
        frames.append(obs["image/primary"])
        assert frames[-1].any()
    assert not np.array_equal(frames[0], frames[-1])  # the arm moved


def test_the_same_seed_gives_the_same_first_frame(envs):
    a = envs.reset(0, 2)["image/primary"]
    other = envs.reset(0, 3)  # another task in the same worker
    assert other["prompt"] == "close the drawer"
    again = envs.reset(0, 2)["image/primary"]
    elsewhere = envs.reset(1, 2)["image/primary"]  # another worker
    np.testing.assert_array_equal(a, again)
    np.testing.assert_array_equal(a, elsewhere)
    assert not np.array_equal(a, envs.reset(1, 4)["image/primary"])  # another variation of the same task


@pytest.mark.parametrize(
    "action, message",
    [([0.0, 0.0, 0.0], r"shape \(3,\); expected \[4\]"), ([0.0, np.nan, 0.0, 1.0], "NaN or inf")],
)
def test_a_bad_action_is_an_error_naming_it(envs, action, message):
    envs.reset(0, 0)
    with pytest.raises(EnvError, match=message):
        envs.step({0: action})


def test_a_dead_worker_is_a_clear_error():
    env = mw.MetaWorldVectorEnv(1, tasks=TASKS)
    try:
        env._procs[0].kill()
        env._procs[0].join(10)
        with pytest.raises(mw.WorkerError, match=r"worker 0 .*(died|gone)"):
            env.reset(0, 0)
    finally:
        started = time.perf_counter()
        env.close()
        assert time.perf_counter() - started < 5


def test_the_scripted_expert_succeeds_in_closed_loop():
    from vla_jax.evaluation import closed_loop

    # Held-out episodes 0 and 1 of MT10 are reach and push, whose experts succeeded on 20 of 20 variations each.
    summary = closed_loop.evaluate(None, "metaworld", 2, expert=True, num_envs=2)
    assert summary["success_rate"] == 1.0, summary
    assert summary["env_steps"] < 2 * mw.MAX_STEPS


def test_the_demonstrations_read_back_with_the_env_frames(tmp_path, envs):
    import tensorflow_datasets as tfds

    from vla_jax.data import metaworld_demos

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = metaworld_demos.generate(
        tmp_path, episodes_per_task=1, val_episodes_per_task=0, tasks=TASKS, num_workers=2, image_encoding="png"
    )
    assert result["train_episodes"] == 2 and result["val_episodes"] == 0
    builder = tfds.builder_from_directory(result["builder_dir"])
    steps = builder.info.features["steps"]
    assert steps["observation"]["image"].shape == (64, 64, 3)
    assert steps["observation"]["state"].shape == (4,) and steps["action"].shape == (4,)
    episodes = list(tfds.as_numpy(builder.as_dataset(split="train")))
    assert len(episodes) == 2
    for episode in episodes:
        seed = int(episode["episode_metadata"]["seed"])
        rows = list(episode["steps"])
        assert rows[0]["is_first"] and rows[-1]["is_last"] and rows[-1]["reward"] == 1.0
        assert rows[0]["language_instruction"].decode() == mw.instruction(TASKS[seed % len(TASKS)])
        actions = np.stack([row["action"] for row in rows])
        assert np.all(np.abs(actions) <= 1.0)
        obs = envs.reset(0, seed)
        np.testing.assert_array_equal(rows[0]["observation"]["image"], obs["image/primary"])
        np.testing.assert_array_equal(rows[0]["observation"]["state"], obs["state"])
