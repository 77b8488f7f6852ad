"""An animated GIF grid of recorded episodes, so a person can watch what the policy does.

Each cell shows one episode's cameras side by side, scaled up, with what the
policy was told underneath; its border turns green when the episode succeeds
and red when it fails, and then holds its last frame.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from vla_jax.evaluation.runner import Episode

RUNNING, SUCCESS, FAILURE = (90, 90, 90), (40, 200, 60), (220, 40, 40)
BORDER, CAPTION = 4, 14
HOLD_MS = 1500  # how long the last frame stays before the loop starts again


def _cell(frame: np.ndarray, scale: int, border: tuple[int, int, int], caption: str):
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    cell = Image.new("RGB", (image.width + 2 * BORDER, image.height + 2 * BORDER + CAPTION), border)
    cell.paste(image, (BORDER, BORDER))
    ImageDraw.Draw(cell).text((BORDER, image.height + 2 * BORDER), caption[:48], fill=(255, 255, 255))
    return cell


def write_gif(
    episodes: Sequence[Episode], path: str | pathlib.Path, *, fps: float = 10.0, scale: int = 2, columns: int = 4
) -> pathlib.Path:
    """Writes the grid of ``episodes`` (those with frames) to ``path``; returns it."""
    from PIL import Image

    recorded = [e for e in episodes if e.frames]
    if not recorded:
        raise ValueError("no recorded episodes to make a video of")
    columns = min(columns, len(recorded))
    rows = -(-len(recorded) // columns)
    length = max(len(e.frames) for e in recorded)
    pictures = []
    for t in range(length):
        cells = []
        for episode in recorded:
            ended = t >= len(episode.frames) - 1
            border = (SUCCESS if episode.success else FAILURE) if ended else RUNNING
            frame = episode.frames[min(t, len(episode.frames) - 1)]
            cells.append(_cell(frame, scale, border, episode.prompt))
        width, height = cells[0].size
        canvas = Image.new("RGB", (columns * width, rows * height), (0, 0, 0))
        for i, cell in enumerate(cells):
            canvas.paste(cell, ((i % columns) * width, (i // columns) * height))
        pictures.append(canvas)
    path = pathlib.Path(path)
    durations = [int(1000 / fps)] * (length - 1) + [HOLD_MS]  # the end is held
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path
