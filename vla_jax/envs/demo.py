"""The embedded demo task as an environment: pick up the named block.

Three blocks of different colours lie on a table seen from above; the
instruction names one ("pick up the red block"). The end effector moves by the
action's ``[dx, dy, dz]`` and the gripper follows its fourth value
(``open=1, closed=0``). Closing the gripper low over a block (``z <=
GRASP_HEIGHT``, centre within the block's half-width) grasps it; the grasped
block moves with the gripper until it opens. The episode ends when a block is
lifted to ``LIFT_HEIGHT``: a success if it is the named one, a wrong-object
failure otherwise; or after ``MAX_STEPS`` steps.

This module is the one source of the task: the demo dataset
(:mod:`vla_jax.data.demo`) is written by rolling out :class:`DemoExpert` in
:class:`DemoEnv`, so training frames and evaluation frames come from the same
scene generator, renderer and dynamics.
"""

from __future__ import annotations

import numpy as np

from vla_jax.envs.base import EnvError, check_action

NAME = "demo"
DATASET = "vla_demo"
IMAGE_SIZE = 64
CONTROL_FREQUENCY_HZ = 10.0
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 200),
}
TEMPLATES = ("pick up the {} block", "grab the {} block", "lift the {} cube", "pick the {} one up")
BLOCK_HALF = 0.06  # block half-width, world units (the table is the unit square)
WRIST_VIEW = 0.36  # side of the wrist camera's view, world units
MAX_XY_STEP = 0.06  # the expert's largest horizontal move per step
Z_STEP = 0.5  # the expert's vertical move per step
GRASP_HEIGHT = 0.1  # the gripper grasps a block when it closes at or below this height
LIFT_HEIGHT = 0.9  # a block held at or above this height is lifted: the episode ends
MAX_STEPS = 60
EXPERT_NOISE = 0.004  # std of the expert's horizontal jitter


def render(blocks, colors, ee, gripper_open, view, size, shade) -> np.ndarray:
    """The table seen through ``view = (x0, y0, width)`` as uint8 ``[size, size, 3]``."""
    x0, y0, width = view
    coords = (np.arange(size) + 0.5) / size * width
    xs = x0 + coords[None, :]  # image column -> world x
    ys = y0 + coords[:, None]  # image row -> world y
    image = np.empty((size, size, 3), np.float32)
    image[:] = np.array([170, 160, 140], np.float32) * shade
    for (bx, by), color in zip(blocks, colors, strict=True):
        inside = (np.abs(xs - bx) <= BLOCK_HALF) & (np.abs(ys - by) <= BLOCK_HALF)
        image[inside] = color
    ex, ey, ez = ee
    arm = 0.012 + 0.012 * ez  # the marker grows with height
    cross = ((np.abs(xs - ex) <= arm * 2.5) & (np.abs(ys - ey) <= arm * 0.6)) | (
        (np.abs(ys - ey) <= arm * 2.5) & (np.abs(xs - ex) <= arm * 0.6)
    )
    image[cross] = (250, 250, 250) if gripper_open else (20, 20, 20)
    return np.clip(image, 0, 255).astype(np.uint8)


class DemoEnv:
    """The pick-up task (see the module docstring). Observations use the policy's keys for dataset ``vla_demo``."""

    name = NAME
    dataset = DATASET
    max_steps = MAX_STEPS
    action_dim = 4
    cameras = ("primary", "wrist")

    def __init__(self, image_size: int = IMAGE_SIZE):
        self.image_size = image_size
        self.seed: int | None = None

    # -- the episode ------------------------------------------------------------------------------------------------

    def reset(self, seed: int) -> dict:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise EnvError(f"env {NAME!r}: seed is {seed!r}; expected an int >= 0")
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 0])
        names = rng.choice(list(COLORS), size=3, replace=False)
        blocks: list[np.ndarray] = []
        while len(blocks) < 3:
            candidate = rng.uniform(0.12, 0.88, size=2)
            if all(np.linalg.norm(candidate - b) > 0.25 for b in blocks):
                blocks.append(candidate)
        self.color_names = [str(n) for n in names]
        self.colors = [COLORS[n] for n in self.color_names]
        self.blocks = blocks
        self.block_heights = np.zeros(3)
        self.target = int(rng.integers(3))
        self.instruction = str(rng.choice(TEMPLATES)).format(self.color_names[self.target])
        self.shade = float(rng.uniform(0.85, 1.15))
        self.ee = np.array([*rng.uniform(0.05, 0.95, size=2), 1.0])
        self.gripper = 1.0
        self.held: int | None = None
        self.steps = 0
        self._expert = DemoExpert(self.seed)
        return self.observation()

    def step(self, action) -> tuple[dict, bool, dict]:
        if self.seed is None:
            raise EnvError(f"env {NAME!r}: step() before reset()")
        dx, dy, dz, grip = check_action(action, self.action_dim, NAME)
        self.ee = self.ee + np.array([dx, dy, dz])
        self.ee = np.clip(self.ee, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
        command = 1.0 if grip > 0.5 else 0.0
        if command == 0.0 and self.gripper == 1.0 and self.held is None and self.ee[2] <= GRASP_HEIGHT:
            self.held = self._block_under_gripper()
        if command == 1.0 and self.held is not None:  # opening drops the block where it is
            self.block_heights[self.held] = 0.0
            self.held = None
        self.gripper = command
        if self.held is not None:
            self.blocks[self.held] = self.ee[:2].copy()
            self.block_heights[self.held] = self.ee[2]
        self.steps += 1
        lifted = self.held is not None and self.block_heights[self.held] >= LIFT_HEIGHT
        info = {
            "success": bool(lifted and self.held == self.target),
            "wrong_object": bool(lifted and self.held != self.target),
            "target": self.color_names[self.target],
            "held": self.color_names[self.held] if self.held is not None else "",
        }
        done = lifted or self.steps >= self.max_steps
        return self.observation(), done, info

    def expert_action(self) -> np.ndarray:
        return self._expert.act(self)

    @property
    def task(self) -> str:
        """The named block's colour: episodes are reported per colour."""
        return self.color_names[self.target]

    def close(self) -> None:
        pass

    # -- what the robot sees ----------------------------------------------------------------------------------------

    def _block_under_gripper(self) -> int | None:
        """The block whose footprint holds the gripper's centre (the nearest one), or None."""
        under = [
            (float(np.linalg.norm(b - self.ee[:2])), i)
            for i, b in enumerate(self.blocks)
            if np.all(np.abs(b - self.ee[:2]) <= BLOCK_HALF)
        ]
        return min(under)[1] if under else None

    def frames(self) -> dict[str, np.ndarray]:
        """The two camera images: ``primary`` (the whole table) and ``wrist`` (centred on the gripper)."""
        size, is_open = self.image_size, self.gripper > 0.5
        wrist_view = (self.ee[0] - WRIST_VIEW / 2, self.ee[1] - WRIST_VIEW / 2, WRIST_VIEW)
        return {
            "primary": render(self.blocks, self.colors, self.ee, is_open, (0, 0, 1), size, self.shade),
            "wrist": render(self.blocks, self.colors, self.ee, is_open, wrist_view, size, self.shade),
        }

    def state(self) -> np.ndarray:
        """``[x, y, z, gripper]`` of the end effector."""
        return np.array([*self.ee, self.gripper], np.float32)

    def observation(self) -> dict:
        frames = self.frames()
        return {
            "image/primary": frames["primary"],
            "image/wrist": frames["wrist"],
            "state": self.state(),
            "prompt": self.instruction,
            "dataset": DATASET,
        }


class DemoExpert:
    """The scripted expert: move over the named block, descend, close the gripper, lift.

    Its horizontal moves carry a little seeded jitter, so demonstrations are not
    all on one line; it reads the true scene, not the cameras.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 1])
        self.phase = "move"

    def act(self, env: DemoEnv) -> np.ndarray:
        target = env.blocks[env.target]
        to_target = target - env.ee[:2]
        if self.phase == "move" and np.linalg.norm(to_target) < 0.02:
            self.phase = "descend"
        if self.phase == "descend" and env.ee[2] <= 0.0:
            self.phase = "grasp"
        if self.phase == "grasp" and env.gripper == 0.0:
            self.phase = "lift"
        dxy = to_target if self.phase in ("move", "descend") else np.zeros(2)
        norm = np.linalg.norm(dxy)
        if norm > MAX_XY_STEP:
            dxy = dxy * (MAX_XY_STEP / norm)
        dxy = dxy + self.rng.normal(0.0, EXPERT_NOISE, size=2)
        dz = {"descend": -Z_STEP, "lift": Z_STEP}.get(self.phase, 0.0)
        grip = 0.0 if self.phase in ("grasp", "lift") else 1.0
        return np.array([dxy[0], dxy[1], dz, grip], np.float32)


def expert_episode(seed: int, image_size: int = IMAGE_SIZE) -> dict:
    """The expert's rollout from ``seed``: per-step observations and actions, and how it ended."""
    env = DemoEnv(image_size)
    obs = env.reset(seed)
    steps, done, info = [], False, {}
    while not done:
        action = env.expert_action()
        steps.append({"observation": obs, "action": action})
        obs, done, info = env.step(action)
    return {
        "steps": steps,
        "instruction": env.instruction,
        "target_color": env.color_names[env.target],
        "block_colors": list(env.color_names),
        "success": info["success"],
    }
