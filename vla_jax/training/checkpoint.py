"""Orbax checkpoints of the train state, config and dataset statistics.

Each step directory holds composite items: ``state`` (params as plain dicts,
optimizer state, step), ``config`` (the resolved config), ``dataset_statistics``
(with their normalization mode) and ``meta`` (package version, data seed).
Orbax writes a step into a temporary directory and renames it when complete,
so a save interrupted by a crash or kill is never listed; restore tries the
newest step first; an unreadable one is moved aside (``<step>.unreadable``)
and the one before is tried.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp

import vla_jax
from vla_jax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores train states in ``directory`` (async, keep last N)."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int, save_interval_steps: int):
        self.directory = pathlib.Path(directory).absolute()
        self.save_interval_steps = save_interval_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=True,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self, state: dict, *, step: int, config: dict, statistics: dict, data_seed: int, force: bool = False
    ) -> bool:
        """Starts an async save at multiples of the interval, or at any step with ``force``."""
        if not force and step % self.save_interval_steps:
            return False
        meta = {"vla_jax_version": vla_jax.__version__, "step": int(step), "data_seed": int(data_seed)}
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(config),
                dataset_statistics=ocp.args.JsonSave(statistics),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: dict) -> dict:
        """All items of ``step``; arrays are placed on the shardings of ``abstract_state``."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                config=ocp.args.JsonRestore(),
                dataset_statistics=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return dict(restored)

    def saved_config(self, step: int) -> dict:
        """The resolved config stored with ``step``."""
        return dict(self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

    def restore_latest(self, abstract_state: dict, check_config: Callable[[dict], None] | None = None) -> dict | None:
        """The newest readable checkpoint, or None if there is none at all.

        An unreadable newest step is reported and moved aside to
        ``<step>.unreadable`` (kept for inspection, and out of the way of the
        run's next save at that step), and the one before is tried; if steps
        exist but none can be read, that is an error, not a fresh start.
        ``check_config`` sees each step's saved config before its arrays are read
        and raises if the checkpoint cannot serve this run (that is not damage,
        so it is not skipped).
        """
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            try:
                saved = self.saved_config(step) if check_config else None
            except Exception as e:  # a damaged step: say so and try the previous one
                failures.append(self._report_unreadable(step, e))
                continue
            if check_config:
                check_config(saved)
            try:
                restored = self.restore(step, abstract_state)
            except Exception as e:
                failures.append(self._report_unreadable(step, e))
                continue
            if failures:
                self.manager.reload()
            return restored
        if steps:
            raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(failures))
        return None

    def _report_unreadable(self, step: int, error: Exception) -> str:
        """Warns, moves the step aside (process 0) and returns a line for the final error."""
        aside = self.directory / f"{step}.unreadable"
        if jax.process_index() == 0:
            suffix = 1
            while aside.exists():
                aside, suffix = self.directory / f"{step}.unreadable{suffix}", suffix + 1
            (self.directory / str(step)).rename(aside)
            print(
                f"WARNING: checkpoint step {step} is unreadable; moved to {aside}, falling back to an older one",
                flush=True,
            )
        log.warning("checkpoint step %d in %s is unreadable (%s); trying an older one", step, self.directory, error)
        return f"step {step}: {type(error).__name__}: {str(error)[:200]}"

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
