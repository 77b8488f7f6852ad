"""``vla-jax data show``: draws a few episodes to one PNG, as the model sees them.

Per episode: a header with the instruction, one row of evenly spaced frames per
camera role (decoded and resized in ``pad`` mode after standardization; a
role the spec leaves out is a labelled grey box, as the model gets it masked),
then small line plots of every action dim (grippers as 1=open, 0=closed) and
every state dim over the episode. Drawn with Pillow only.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from vla_jax.data import check
from vla_jax.data.frame_transforms import decode_image
from vla_jax.data.specs import CAMERA_ROLES, DatasetSpec, get_spec
from vla_jax.data.standardize import standardize
from vla_jax.data.trajectory import from_rlds, open_builder
from vla_jax.errors import DataError

MARGIN = 8
GAP = 4
LABEL_W = 64
HEADER_H = 34
PLOT_W = 130
MIN_PLOT_COLS = 4
PLOT_H = 64
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MISSING = (160, 160, 160)
BROKEN = (200, 40, 40)
AXIS = (120, 120, 120)
ACTION_LINE = (30, 90, 200)
STATE_LINE = (20, 140, 60)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Pixel positions of everything in the picture; episodes are stacked blocks of equal height."""

    num_episodes: int
    frames: int
    image_size: int
    action_dims: int
    state_dims: int

    @property
    def width(self) -> int:
        frames_w = LABEL_W + self.frames * (self.image_size + GAP) - GAP
        return 2 * MARGIN + max(frames_w, MIN_PLOT_COLS * (PLOT_W + GAP) - GAP)

    @property
    def plot_cols(self) -> int:
        return max(1, (self.width - 2 * MARGIN + GAP) // (PLOT_W + GAP))

    def _plot_rows(self, dims: int) -> int:
        return math.ceil(dims / self.plot_cols)

    @property
    def block_height(self) -> int:
        cameras = len(CAMERA_ROLES) * (self.image_size + GAP)
        plots = (self._plot_rows(self.action_dims) + self._plot_rows(self.state_dims)) * (PLOT_H + GAP)
        return HEADER_H + cameras + plots + MARGIN

    @property
    def height(self) -> int:
        return MARGIN + self.num_episodes * self.block_height

    def frame_box(self, episode: int, row: int, col: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of frame ``col`` of camera row ``row`` (``CAMERA_ROLES`` order)."""
        x0 = MARGIN + LABEL_W + col * (self.image_size + GAP)
        y0 = MARGIN + episode * self.block_height + HEADER_H + row * (self.image_size + GAP)
        return x0, y0, x0 + self.image_size, y0 + self.image_size

    def plot_box(self, episode: int, index: int) -> tuple[int, int, int, int]:
        """Box of plot ``index``: action dims first, state dims from the next full row."""
        if index >= self.action_dims:
            index = self._plot_rows(self.action_dims) * self.plot_cols + (index - self.action_dims)
        row, col = divmod(index, self.plot_cols)
        x0 = MARGIN + col * (PLOT_W + GAP)
        y0 = self.frame_box(episode, len(CAMERA_ROLES), 0)[1] + row * (PLOT_H + GAP)
        return x0, y0, x0 + PLOT_W, y0 + PLOT_H


def _read_episodes(spec: DatasetSpec, data_dir: str, num_episodes: int) -> list[dict]:
    """The first ``num_episodes`` standardized episodes of the train split, as NumPy."""
    builder = open_builder(check.builder_dir(spec, data_dir), spec.name)
    split = spec.train_split
    try:
        ds = from_rlds(builder, split).take(num_episodes).map(lambda traj: standardize(traj, spec))
        return list(ds.as_numpy_iterator())
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"dataset {spec.name!r}: cannot read the first {num_episodes} episodes of split {split!r}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}; "
            f"run `vla-jax data check {spec.name} --data-dir {data_dir}`"
        ) from None


def _frame_indices(length: int, count: int) -> list[int]:
    return sorted({int(round(i)) for i in np.linspace(0, length - 1, count)}) if length else []


def _decoded(encoded: bytes, size: int) -> Image.Image | None:
    try:
        return Image.fromarray(decode_image(tf.constant(encoded), size, "pad").numpy())
    except Exception:  # an undecodable frame is drawn as a red box
        return None


def _box(draw: ImageDraw.ImageDraw, box, fill, label: str, font) -> None:
    draw.rectangle(box, fill=fill)
    draw.text((box[0] + 3, box[1] + 3), _fit(draw, label, box[2] - box[0] - 6, font), fill=(255, 255, 255), font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _draw_cameras(canvas: Image.Image, draw, layout: Layout, index: int, traj: dict, spec: DatasetSpec, font) -> None:
    obs = traj["observation"]
    frames = _frame_indices(len(traj["action"]), layout.frames)
    for row, role in enumerate(CAMERA_ROLES):
        y = layout.frame_box(index, row, 0)[1]
        draw.text((MARGIN, y + 2), role, fill=TEXT, font=font)
        for col in range(layout.frames):
            box = layout.frame_box(index, row, col)
            if role not in spec.cameras:
                _box(draw, box, MISSING, "missing", font)
            elif col >= len(frames):
                continue
            elif (image := _decoded(obs[f"image_{role}"][frames[col]], layout.image_size)) is None:
                _box(draw, box, BROKEN, f"bad image t={frames[col]}", font)
            else:
                canvas.paste(image, box[:2])
                draw.text((box[0] + 2, box[1] + 1), f"t={frames[col]}", fill=(255, 255, 0), font=font)


def _draw_plot(draw, box, values: np.ndarray, title: str, color, marks: list[int], font) -> None:
    """A line plot of ``values [T]`` in ``box`` with its title and value range."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(220, 220, 220))
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    draw.text((x0 + 3, y0 + 1), _fit(draw, f"{title} [{low:.3g}, {high:.3g}]", x1 - x0 - 6, font), fill=TEXT, font=font)
    left, top, right, bottom = x0 + 4, y0 + 16, x1 - 4, y1 - 4
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS)
    count = len(values)
    if count == 0:
        return

    def x_of(t: float) -> float:
        return left + (right - left) * (t / max(count - 1, 1))

    for t in marks:
        draw.line([(x_of(t), bottom - 3), (x_of(t), bottom)], fill=AXIS)
    span = high - low or 1.0
    points = [
        (x_of(t), bottom - (bottom - top) * ((v - low) / span if high > low else 0.5))
        for t, v in enumerate(values)
        if np.isfinite(v)
    ]
    if len(points) > 1:
        draw.line(points, fill=color, width=1)
    elif points:
        draw.point(points, fill=color)


def render(
    name: str,
    data_dir: str,
    out: str,
    *,
    num_episodes: int = 3,
    frames_per_episode: int = 6,
    image_size: int = 128,
) -> pathlib.Path:
    """Draws the first ``num_episodes`` train episodes of dataset ``name`` to the PNG ``out``."""
    if num_episodes < 1 or frames_per_episode < 1 or image_size < 8:
        raise DataError(
            f"dataset {name!r}: show needs num_episodes >= 1, frames_per_episode >= 1 and image_size >= 8, "
            f"got {num_episodes}, {frames_per_episode}, {image_size}"
        )
    spec = get_spec(name)
    episodes = _read_episodes(spec, data_dir, num_episodes)
    if not episodes:
        raise DataError(f"dataset {name!r}: split {spec.train_split!r} has no episodes to show")
    state_dims = episodes[0]["observation"]["proprio"].shape[-1]
    layout = Layout(len(episodes), frames_per_episode, image_size, spec.action_dim, state_dims)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, traj in enumerate(episodes):
        length = len(traj["action"])
        instruction = traj["language_instruction"][0].decode("utf-8", "replace") if length else ""
        y = MARGIN + index * layout.block_height
        header = f"{spec.name} | {spec.train_split} episode {index} | {length} steps | {spec.action_space}"
        draw.text((MARGIN, y), _fit(draw, header, layout.width - 2 * MARGIN, font), fill=TEXT, font=font)
        text = f'"{instruction}"' if instruction else "(no instruction)"
        draw.text((MARGIN, y + 15), _fit(draw, text, layout.width - 2 * MARGIN, font), fill=TEXT, font=font)
        _draw_cameras(canvas, draw, layout, index, traj, spec, font)
        marks = _frame_indices(length, frames_per_episode)
        for dim, dim_name in enumerate(spec.action_dims):
            values = traj["action"][:, dim]
            _draw_plot(draw, layout.plot_box(index, dim), values, dim_name, ACTION_LINE, marks, font)
        for dim in range(state_dims):
            values = traj["observation"]["proprio"][:, dim]
            box = layout.plot_box(index, spec.action_dim + dim)
            _draw_plot(draw, box, values, f"state[{dim}]", STATE_LINE, marks, font)
    path = pathlib.Path(out).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
