"""Closed-loop episodes: a policy's actions move the environment, the environment's frames feed the policy.

:func:`run_episodes` keeps ``num_envs`` episodes running at once; at each
control step the observations of every slot that needs a new chunk go to the
policy in one batch (``infer_batch`` in process, one request each through a
client). How a chunk is executed is the robot-side wrapper's choice
(:mod:`vla_jax.inference.wrappers`): execute ``k`` actions then query again,
or query every step and ensemble (ACT). A chunk that did not decode (NaN
actions, ``valid`` False) ends its episode as a failure, counted apart.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from vla_jax.envs.base import EnvError, VectorEnv
from vla_jax.inference.wrappers import ActionChunkBroker, TemporalEnsembler


@dataclasses.dataclass(frozen=True)
class Controls:
    """Input ablations: what the policy is shown instead of the truth."""

    shuffle_instructions: bool = False  # each episode is told the instruction of an episode of another task
    blank_cameras: tuple[str, ...] = ()  # these cameras show black frames

    def describe(self) -> str:
        parts = ["shuffled instructions"] if self.shuffle_instructions else []
        parts += [f"blank camera {name}" for name in self.blank_cameras]
        return ", ".join(parts) or "none"


@dataclasses.dataclass
class Episode:
    """One finished episode."""

    index: int
    seed: int
    instruction: str  # the task's own instruction
    prompt: str  # what the policy was told (another episode's instruction under shuffling)
    task: str  # the group it is reported under (the demo: the named colour)
    success: bool
    wrong_object: bool
    invalid_action: bool
    length: int
    queries: int
    final_state: list[float]  # the robot's state at the end (equal actions give equal states)
    frames: list[np.ndarray] | None = None  # camera frames for the video, when recorded

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "frames"}


class _Slot:
    """Stands in for the policy inside one env's wrapper: it hands over the result fetched in the batch."""

    def __init__(self):
        self.result: dict | None = None

    def infer(self, obs: dict) -> dict:
        if self.result is None:
            raise RuntimeError("the wrapper asked for a query the runner did not make")
        result, self.result = self.result, None
        return result


def batch_infer(policy) -> Callable[[list[dict]], list[dict]]:
    """``policy.infer_batch`` where it has one (a ``Policy``), else one ``infer`` per observation (a client)."""
    if hasattr(policy, "infer_batch"):
        return policy.infer_batch
    return lambda observations: [policy.infer(obs) for obs in observations]


def other_task_prompts(starts: Sequence[tuple[str, str]], rng: np.random.Generator) -> list[str]:
    """For each episode, the instruction of a random episode of *another* task (the shuffled-instruction control).

    Another episode's text is not enough: two scenes may name the same colour
    (or be the same Meta-World task), and the policy would be told its own task.
    """
    tasks = np.array([task for task, _ in starts])
    if len(set(tasks)) < 2:
        raise EnvError(f"shuffled instructions need episodes of at least two tasks; these are all {tasks[0]!r}")
    prompts = []
    for task, _ in starts:
        others = np.flatnonzero(tasks != task)
        prompts.append(starts[int(rng.choice(others))][1])
    return prompts


def _camera_frame(obs: dict, cameras: Sequence[str]) -> np.ndarray:
    """The observation's camera images side by side (what the video shows of one step)."""
    images = [np.asarray(obs[f"image/{name}"]) for name in cameras if f"image/{name}" in obs]
    height = max(image.shape[0] for image in images)
    padded = [np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0))) for image in images]
    return np.concatenate(padded, axis=1)


def run_episodes(
    policy,
    envs: VectorEnv,
    seeds: Sequence[int],
    starts: Sequence[tuple[str, str]],
    *,
    execute_steps: int | None = None,
    ensemble_decay: float | None = None,
    controls: Controls | None = None,
    control_seed: int = 0,
    record_episodes: int = 0,
    cameras: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Episode], dict]:
    """Runs one episode per seed; returns the episodes (in seed order) and timing.

    ``policy`` None runs the environments' scripted experts instead (one
    action per step, from the true state), through the same loop.

    ``starts[i]`` is episode ``i``'s task and instruction
    (:func:`episode_starts`); under ``controls.shuffle_instructions`` the
    policy is told the instruction of an episode of another task.
    ``execute_steps`` (``None``: the whole chunk) or ``ensemble_decay`` (query
    every step, ACT ensembling) choose how chunks are executed. The first
    ``record_episodes`` episodes keep their frames for a video.
    """
    controls = controls or Controls()
    infer = batch_infer(policy) if policy is not None else None
    prompts = [instruction for _, instruction in starts]
    if controls.shuffle_instructions:
        prompts = other_task_prompts(starts, np.random.default_rng(control_seed))

    def wrapper(slot: _Slot):
        if ensemble_decay is not None:
            return TemporalEnsembler(slot, decay=ensemble_decay)
        return ActionChunkBroker(slot, execute_steps)

    slots = [_Slot() for _ in range(envs.num_envs)]
    wrappers = [wrapper(slot) for slot in slots]
    running: dict[int, dict] = {}  # env slot -> the episode it is running
    observations: dict[int, dict] = {}
    finished: list[Episode] = []
    pending = list(range(len(seeds)))
    timing = {"infer_s": 0.0, "env_s": 0.0, "queries": 0, "batches": 0, "steps": 0}
    start = time.perf_counter()

    def begin(slot: int) -> None:
        index = pending.pop(0)
        started = time.perf_counter()
        observations[slot] = envs.reset(slot, int(seeds[index]))
        timing["env_s"] += time.perf_counter() - started
        wrappers[slot].reset()
        record = index < record_episodes
        running[slot] = {"index": index, "steps": 0, "queries": 0, "frames": [] if record else None}
        if record:
            running[slot]["frames"].append(_camera_frame(observations[slot], cameras))

    def shown(slot: int) -> dict:
        """The observation as the policy sees it under the controls."""
        episode = running[slot]
        obs = dict(observations[slot], prompt=prompts[episode["index"]])
        obs["seed"] = int((seeds[episode["index"]] * 1009 + episode["steps"]) % 2**31)  # the flow sampler's noise
        for name in controls.blank_cameras:
            obs[f"image/{name}"] = np.zeros_like(np.asarray(obs[f"image/{name}"]))
        return obs

    def finish(slot: int, info: dict, invalid: bool) -> None:
        episode = running.pop(slot)
        index = episode["index"]
        finished.append(
            Episode(
                index=index,
                seed=int(seeds[index]),
                instruction=starts[index][1],
                prompt=prompts[index],
                task=starts[index][0],
                success=bool(info.get("success", False)) and not invalid,
                wrong_object=bool(info.get("wrong_object", False)),
                invalid_action=invalid,
                length=episode["steps"],
                queries=episode["queries"],
                final_state=np.asarray(observations[slot]["state"], np.float64).tolist(),
                frames=episode["frames"],
            )
        )
        if progress is not None:
            progress(len(finished), len(seeds))

    for slot in range(min(envs.num_envs, len(pending))):
        begin(slot)
    while running:
        shown_obs = {slot: shown(slot) for slot in running}
        asking = [slot for slot in running if wrappers[slot].needs_query] if infer is not None else []
        if asking:
            started = time.perf_counter()
            results = infer([shown_obs[slot] for slot in asking])
            timing["infer_s"] += time.perf_counter() - started
            timing["queries"] += len(asking)
            timing["batches"] += 1
            for slot, result in zip(asking, results, strict=True):
                slots[slot].result = result
                running[slot]["queries"] += 1
        actions, invalid = {}, []
        for slot in list(running):
            if infer is None:
                action = np.asarray(envs.expert_action(slot), np.float64)
            else:
                action = np.asarray(wrappers[slot].infer(shown_obs[slot])["actions"], np.float64)
            if np.all(np.isfinite(action)):
                actions[slot] = action
            else:
                invalid.append(slot)
        for slot in invalid:
            finish(slot, {}, invalid=True)
        started = time.perf_counter()
        stepped = envs.step(actions)
        timing["env_s"] += time.perf_counter() - started
        timing["steps"] += len(actions)
        for slot, (obs, done, info) in stepped.items():
            observations[slot] = obs
            running[slot]["steps"] += 1
            if running[slot]["frames"] is not None:
                running[slot]["frames"].append(_camera_frame(obs, cameras))
            if done:
                finish(slot, info, invalid=False)
        for slot in range(envs.num_envs):
            if slot not in running and pending:
                begin(slot)
    timing["wall_s"] = time.perf_counter() - start
    finished.sort(key=lambda e: e.index)
    return finished, timing


def episode_starts(envs: VectorEnv, seeds: Sequence[int]) -> list[tuple[str, str]]:
    """Each seed's task and instruction (what episodes are grouped by, and what shuffling hands around)."""
    return [envs.episode(int(seed)) for seed in seeds]
