"""Meta-World v3 (MuJoCo, a Sawyer arm) as a closed-loop environment; every simulator runs in a spawned worker.

MuJoCo's renderer cannot share a process with TensorFlow (the design notes,
section 8), and a child forked from a TensorFlow process crashes, so each slot
of :class:`MetaWorldVectorEnv` is a worker process started with the ``spawn``
context; this module (what the parent imports) never imports ``metaworld`` or
``mujoco``. A worker keeps one simulator per task it has met (at most
``max_simulators``, each closed explicitly: a garbage-collected renderer makes
the others return black frames) and switches variations with ``set_task``.

Seeds. An env seed ``n >= 0`` is the variation ``n // K`` of task
``tasks[n % K]`` (``K`` tasks, MT10 by default), so consecutive seeds cycle
through the tasks. Variation ``v`` of a task is
``metaworld.MT1(task, seed=v // 50).train_tasks[v % 50]``: Meta-World's own
seeded variations, bit-identical on every rerun. The demonstrations use seeds
``0, 1, ...`` (training) and ``VAL_SEED_BASE + i`` (validation); closed-loop
evaluation uses ``EVAL_SEED_BASE + 10_000 * seed + episode``
(:func:`vla_jax.envs.base.eval_seed`, the scheme every environment shares):
held out from both, and ``E`` consecutive episodes cover
the ``K`` tasks evenly.

Observations: ``image/primary`` (camera ``corner2``, turned right side up,
64x64 by default), ``state`` = ``[hand x, y, z, gripper opening]`` (opening in
[0, 1], 1 open: Meta-World's first four observation values, as LeRobot uses),
``prompt`` (an instruction per task), ``dataset``. Actions are Meta-World's
``[dx, dy, dz, gripper]`` in [-1, 1] (clipped; position deltas of 1 cm per
unit; gripper +1 closes, -1 opens) at 80 Hz (``env.dt`` = 2.5 ms x 5 frames).
An episode ends at the first step whose ``info["success"]`` is set (success is
not sticky in Meta-World) or after ``max_steps``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback

import numpy as np

from vla_jax.envs.base import EnvError, check_action
from vla_jax.errors import VlaJaxError

NAME = "metaworld"
DATASET = "metaworld"
MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
IMAGE_SIZE = 64
CAMERA = "corner2"  # LeRobot's choice: the whole table and arm; rendered upside down (rolled 180°), turned here
# 200: twice the slowest scripted expert on MT10 (46-101 steps to the first success), 2.5 s at 80 Hz; Meta-World's
# own 500 mostly costs time in failed episodes.
MAX_STEPS = 200
PATH_LENGTH = 500  # Meta-World refuses to step further without a reset
CONTROL_FREQUENCY_HZ = 80.0  # env.dt = model timestep 0.0025 s x frame_skip 5 = 0.0125 s
STATE_DIM = ACTION_DIM = 4
VARIATIONS_PER_SEED = 50  # metaworld.MT1(task, seed=s) makes 50 variations
# Simulators a worker keeps (one per task, least recently used closed first): each holds a render context of about
# 160 MB, and making one costs about 0.7 s.
MAX_SIMULATORS = 10
REPLY_TIMEOUT_S = 600.0  # a worker silent this long (while alive) is reported as hung


class WorkerError(VlaJaxError):
    """A simulator worker died, hung or failed; the message says which, doing what, and why."""


def instruction(task: str) -> str:
    """The natural instruction of a task (its name in words where none is written)."""
    return INSTRUCTIONS.get(task, task.removesuffix("-v3").replace("-", " "))


def task_and_variation(seed: int, tasks=MT10) -> tuple[str, int]:
    """What env seed ``seed`` runs: ``(tasks[seed % K], variation seed // K)`` (module docstring)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise EnvError(f"env {NAME!r}: seed is {seed!r}; expected an int >= 0")
    return tasks[int(seed) % len(tasks)], int(seed) // len(tasks)


# -- the worker process (MuJoCo lives only here) ---------------------------------------------------------------------


class _Simulator:
    """One task's Meta-World env with its renderer and scripted expert, inside a worker."""

    def __init__(self, metaworld, mujoco, policies, task: str, image_size: int, camera: str):
        self.mujoco, self.task = mujoco, task
        cls = metaworld.ALL_V3_ENVIRONMENTS[task]
        self.env = cls(render_mode="rgb_array", width=image_size, height=image_size, camera_name=camera)
        # No multisampling (set before the render context exists), shadows or reflections: 3-4x faster renders.
        self.env.model.vis.quality.offsamples = 0
        self.policy = policies[task]()
        self.viewer = None
        self.obs = None

    def reset(self, variation) -> np.ndarray:
        self.mujoco.mj_resetData(self.env.model, self.env.data)  # no solver warm start carried between episodes
        self.env.set_task(variation)
        self.obs, _ = self.env.reset()
        return self.obs

    def step(self, action: np.ndarray) -> bool:
        self.obs, _, _, _, info = self.env.step(np.clip(action, -1.0, 1.0))
        return bool(info["success"] > 0)

    def frame(self) -> np.ndarray:
        if self.viewer is None:
            self.env.render()  # creates the viewer
            self.viewer = self.env.mujoco_renderer.viewer
            flags = self.mujoco.mjtRndFlag
            self.viewer.scn.flags[flags.mjRND_SHADOW] = 0
            self.viewer.scn.flags[flags.mjRND_REFLECTION] = 0
        self.viewer.make_context_current()  # a worker holds one render context per task
        image = np.ascontiguousarray(np.flip(self.env.render(), (0, 1)))  # the camera is rolled 180°
        if not image.any():
            raise RuntimeError(f"{self.task}: the renderer returned an all-zero frame (a freed render context?)")
        return image

    def expert(self) -> np.ndarray:
        return np.clip(self.policy.get_action(self.obs), -1.0, 1.0).astype(np.float32)

    def reply(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame, state, the expert's action) for the current observation."""
        return self.frame(), np.asarray(self.obs[:STATE_DIM], np.float32), self.expert()

    def close(self) -> None:
        self.env.close()


def _refuse_all(conn, reason: str) -> None:
    """Answers every request with ``reason`` until the parent closes the worker."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "close":
            return
        conn.send(("error", reason, False))


def _worker(conn, image_size: int, camera: str, max_simulators: int) -> None:
    """A worker's loop: ``("reset", task, variation)``, ``("step", action)``, ``("close",)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which closes the workers
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; unset, the first render fails
    simulators: dict[str, _Simulator] = {}
    variations: dict[tuple[str, int], list] = {}
    current: _Simulator | None = None
    try:
        import warnings

        try:
            import metaworld
            import mujoco
            from metaworld.policies import ENV_POLICY_MAP
        except Exception as error:  # reported once per request, not as a traceback per worker
            _refuse_all(conn, f"Meta-World cannot be imported here ({type(error).__name__}: {error}); "
                              "install it with `pip install metaworld==3.1.1` (the test extra)")  # fmt: skip
            return

        warnings.filterwarnings("ignore", message="Constant.*may be too high")  # the experts' gains, clipped
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the parent is gone
                return
            try:
                if message[0] == "close":
                    return
                if message[0] == "reset":
                    _, task, variation = message
                    if task not in metaworld.ALL_V3_ENVIRONMENTS:
                        raise ValueError(f"{task!r} is not a Meta-World v3 task")
                    pool = variation // VARIATIONS_PER_SEED
                    if (task, pool) not in variations:
                        variations[task, pool] = metaworld.MT1(task, seed=pool).train_tasks
                    if task not in simulators:
                        while len(simulators) >= max_simulators:  # closed before the next exists: no renderer trap
                            simulators.pop(next(iter(simulators))).close()
                        simulators[task] = _Simulator(metaworld, mujoco, ENV_POLICY_MAP, task, image_size, camera)
                    current = simulators[task] = simulators.pop(task)  # most recently used last
                    current.reset(variations[task, pool][variation % VARIATIONS_PER_SEED])
                    conn.send(("ok", current.reply(), False))
                elif message[0] == "step":
                    success = current.step(message[1])
                    conn.send(("ok", current.reply(), success))
                elif message[0] == "describe":
                    env = next(iter(simulators.values())).env
                    conn.send(("ok", {"dt": float(env.dt), "frame_skip": int(env.frame_skip)}, False))
                else:
                    raise ValueError(f"unknown command {message[0]!r}")
            except Exception:
                conn.send(("error", traceback.format_exc(), False))
    finally:
        for simulator in simulators.values():  # freed explicitly, or EGL prints tracebacks at exit
            simulator.close()
        conn.close()


# -- the parent's side -----------------------------------------------------------------------------------------------


class MetaWorldVectorEnv:
    """``num_envs`` Meta-World slots, one spawned worker process each (see the module docstring)."""

    name = NAME
    dataset = DATASET
    action_dim = ACTION_DIM
    cameras = ("primary",)

    def __init__(
        self,
        num_envs: int,
        *,
        tasks=MT10,
        image_size: int = IMAGE_SIZE,
        max_steps: int = MAX_STEPS,
        camera: str = CAMERA,
        max_simulators: int = MAX_SIMULATORS,
    ):
        if num_envs < 1:
            raise EnvError(f"env {NAME!r}: num_envs is {num_envs}; expected at least 1")
        if not 1 <= max_steps <= PATH_LENGTH:
            raise EnvError(f"env {NAME!r}: max_steps is {max_steps}; expected an int in [1, {PATH_LENGTH}]")
        self.tasks = tuple(tasks)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise EnvError(f"env {NAME!r}: tasks {list(self.tasks)} must be a non-empty list without repeats")
        self.num_envs, self.max_steps, self.image_size = num_envs, max_steps, image_size
        context = multiprocessing.get_context("spawn")  # never fork: the parent may hold TensorFlow
        self._conns, self._procs = [], []
        for index in range(num_envs):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker, args=(child, image_size, camera, max_simulators), name=f"metaworld-{index}", daemon=True
            )
            process.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(process)
        self._task: list[str | None] = [None] * num_envs
        self._steps = [0] * num_envs
        self._done = [True] * num_envs
        self._expert: list[np.ndarray | None] = [None] * num_envs
        self._closed = False

    # -- talking to workers -------------------------------------------------------------------------------------------

    def _receive(self, index: int, doing: str):
        conn, process = self._conns[index], self._procs[index]
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while not conn.poll(0.5):
            if not process.is_alive():
                raise WorkerError(
                    f"env {NAME!r}: worker {index} (pid {process.pid}) died with exit code {process.exitcode} "
                    f"while {doing}"
                )
            if time.monotonic() > deadline:
                raise WorkerError(f"env {NAME!r}: worker {index} (pid {process.pid}) gave no answer in "
                                  f"{REPLY_TIMEOUT_S:.0f} s while {doing}")  # fmt: skip
        try:
            status, payload, success = conn.recv()
        except EOFError:
            raise WorkerError(
                f"env {NAME!r}: worker {index} (pid {process.pid}) closed its pipe while {doing}"
            ) from None
        if status == "error":
            if "\n" not in payload.strip():  # a reason, not a traceback
                raise WorkerError(f"env {NAME!r}: {payload}")
            raise WorkerError(f"env {NAME!r}: worker {index} failed while {doing}:\n{payload}")
        return payload, success

    def _send(self, index: int, message: tuple, doing: str) -> None:
        if self._closed:
            raise EnvError(f"env {NAME!r}: used after close()")
        try:
            self._conns[index].send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            code = self._procs[index].exitcode
            raise WorkerError(f"env {NAME!r}: worker {index} is gone (exit code {code}) before {doing}") from None

    def _observation(self, index: int, payload) -> dict:
        frame, state, expert = payload
        self._expert[index] = expert
        return {
            "image/primary": frame,
            "state": state,
            "prompt": instruction(self._task[index]),
            "dataset": DATASET,
        }

    # -- the VectorEnv protocol ---------------------------------------------------------------------------------------

    def reset(self, index: int, seed: int) -> dict:
        task, variation = task_and_variation(seed, self.tasks)
        doing = f"resetting to seed {seed} ({task}, variation {variation})"
        self._send(index, ("reset", task, variation), doing)
        self._task[index], self._steps[index], self._done[index] = task, 0, False
        payload, _ = self._receive(index, doing)
        return self._observation(index, payload)

    def step(self, actions: dict[int, np.ndarray]) -> dict[int, tuple[dict, bool, dict]]:
        checked = {}
        for index, action in actions.items():
            if self._task[index] is None:
                raise EnvError(f"env {NAME!r}: step() of slot {index} before reset()")
            if self._done[index]:
                raise EnvError(f"env {NAME!r}: step() of slot {index} after its episode ended; reset it first")
            checked[index] = np.clip(check_action(action, ACTION_DIM, NAME), -1.0, 1.0)
        for index, action in checked.items():  # all workers step at once
            self._send(index, ("step", action), f"step {self._steps[index] + 1} of {self._task[index]}")
        results = {}
        for index in checked:
            payload, success = self._receive(index, f"step {self._steps[index] + 1} of {self._task[index]}")
            self._steps[index] += 1
            done = success or self._steps[index] >= self.max_steps
            self._done[index] = done
            info = {"success": success, "task": self._task[index], "steps": self._steps[index]}
            results[index] = (self._observation(index, payload), done, info)
        return results

    def task(self, index: int) -> str:
        if self._task[index] is None:
            raise EnvError(f"env {NAME!r}: task() of slot {index} before reset()")
        return self._task[index]

    def episode(self, seed: int) -> tuple[str, str]:
        task = task_and_variation(seed, self.tasks)[0]
        return task, instruction(task)

    def expert_action(self, index: int) -> np.ndarray:
        """Meta-World's scripted expert (``metaworld.policies``) for the slot's true state, clipped to [-1, 1]."""
        if self._expert[index] is None:
            raise EnvError(f"env {NAME!r}: expert_action() of slot {index} before reset()")
        return self._expert[index].copy()

    def describe(self, index: int = 0) -> dict:
        """The simulator's control period (``dt``) and frame skip, read from a slot reset at least once."""
        self._send(index, ("describe",), "describing its simulator")
        return self._receive(index, "describing its simulator")[0]

    def close(self) -> None:
        """Ends the workers (each frees its renderers); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):  # already gone
                conn.send(("close",))
        for process in self._procs:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for conn in self._conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make(num_envs: int) -> MetaWorldVectorEnv:
    """MT10 with the default settings (the registry caps ``num_envs`` at one worker per CPU core)."""
    return MetaWorldVectorEnv(num_envs)
