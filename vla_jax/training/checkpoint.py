"""Orbax checkpoints of the train state, config, dataset statistics and tokenizers.

Each step directory holds composite items: ``params`` (plain nested dicts),
``opt_state``, ``ema`` (when EMA is on), ``config`` (the resolved config),
``dataset_statistics`` (with their normalization mode), ``tokenizers`` (the
run's tokenizer files, base64), ``policy`` (the model's input shapes and each
dataset's embodiment: what inference needs besides the config) and ``meta`` (package version, step, seed of
the step randomness and of the data stream, frames consumed). A fine-tune can
read ``params`` alone.

Orbax writes a step into a temporary directory and renames it when complete,
so a save interrupted by a crash, a kill or a full disk is never listed; a
failed save is reported and training goes on (the previous checkpoint stays
the latest). Restore tries the newest step first; an unreadable one is moved
aside (``<step>.unreadable``) and the one before is tried.
"""

from __future__ import annotations

import base64
import logging
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import vla_jax
from vla_jax.errors import CheckpointError

log = logging.getLogger(__name__)


ARRAY_ITEMS = ("params", "opt_state", "ema")


def array_leaves(tree) -> list[tuple[str, tuple[int, ...], str]]:
    """``(path, shape, dtype)`` of every array leaf (arrays, abstract arrays or Orbax array metadata), in order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    leaves = []
    for path, leaf in flat:
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            continue
        name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        leaves.append((name, tuple(leaf.shape), str(np.dtype(leaf.dtype))))
    return leaves


class Checkpointer:
    """Saves and restores train states in ``directory`` (async, keep last N)."""

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        max_to_keep: int,
        save_interval_steps: int,
        keep_period: int = 0,
        read_only: bool = False,
    ):
        """``read_only`` (a policy reading a live run's workdir) never deletes, cleans up or writes anything."""
        self.directory = pathlib.Path(directory).absolute()
        self.save_interval_steps = save_interval_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            keep_period=keep_period or None,
            enable_async_checkpointing=not read_only,
            create=not read_only,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending = -1  # the step of the last save started

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(
        self,
        state: dict,
        *,
        step: int,
        config: dict,
        statistics: dict,
        data_seed: int,
        tokenizers: dict[str, bytes] | None = None,
        policy: dict | None = None,
        frames_consumed: int = 0,
        force: bool = False,
    ) -> bool:
        """Starts an async save at multiples of the interval, or at any step with ``force``.

        A save that fails (disk full, lost mount) is reported as a warning and
        returns False; the step's temporary directory is never taken for a checkpoint.
        """
        if not force and step % self.save_interval_steps:
            return False
        meta = {
            "vla_jax_version": vla_jax.__version__,
            "step": int(step),
            "data_seed": int(data_seed),
            "rng_seed": int(data_seed),
            "frames_consumed": int(frames_consumed),
        }
        items = {
            "params": ocp.args.StandardSave(state["params"]),
            "opt_state": ocp.args.StandardSave(state["opt_state"]),
            "config": ocp.args.JsonSave(config),
            "dataset_statistics": ocp.args.JsonSave(statistics),
            "tokenizers": ocp.args.JsonSave({k: base64.b64encode(v).decode() for k, v in (tokenizers or {}).items()}),
            "meta": ocp.args.JsonSave(meta),
        }
        if policy is not None:
            items["policy"] = ocp.args.JsonSave(policy)
        if "ema" in state:
            items["ema"] = ocp.args.StandardSave(state["ema"])
        self.wait()  # the previous async save must be done (Orbax would wait anyway); its failure is its own
        self._pending = step
        try:
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 - any storage failure: report, keep training
            self._report_failed_save(step, e)
            return False

    def _report_failed_save(self, step: int, error: Exception) -> None:
        good = [s for s in self.all_steps() if s != step]
        latest = f"step {good[-1]}" if good else "none yet"
        message = (
            f"WARNING: the checkpoint save of step {step} failed ({type(error).__name__}: {str(error)[:200]}); "
            f"the latest complete checkpoint is {latest}; training continues"
        )
        if jax.process_index() == 0:
            print(message, flush=True)
        log.warning(message)

    def restore(self, step: int, abstract_state: dict) -> dict:
        """All items of ``step``: ``state`` (arrays placed on the shardings of ``abstract_state``) and the JSON items.

        A run that turned EMA on after this step was saved starts its EMA from the params.
        """
        present = set(self.item_names(step))
        items = {
            "params": ocp.args.StandardRestore(abstract_state["params"]),
            "opt_state": ocp.args.StandardRestore(abstract_state["opt_state"]),
            "config": ocp.args.JsonRestore(),
            "dataset_statistics": ocp.args.JsonRestore(),
            "meta": ocp.args.JsonRestore(),
        }
        if "tokenizers" in present:
            items["tokenizers"] = ocp.args.JsonRestore()
        if "ema" in abstract_state and "ema" in present:
            items["ema"] = ocp.args.StandardRestore(abstract_state["ema"])
        restored = dict(self.manager.restore(step, args=ocp.args.Composite(**items)))
        state = {"params": restored.pop("params"), "opt_state": restored.pop("opt_state")}
        step_value = np.int32(restored["meta"]["step"])
        state["step"] = jax.make_array_from_callback((), abstract_state["step"].sharding, lambda _: step_value)
        if "ema" in abstract_state:
            state["ema"] = restored.pop("ema") if "ema" in restored else jax.tree.map(jnp.copy, state["params"])
        files = restored.pop("tokenizers", None) or {}
        return dict(restored, state=state, tokenizers={k: base64.b64decode(v) for k, v in files.items()})

    def item_names(self, step: int) -> list[str]:
        """The items a step directory holds."""
        return sorted(p.name for p in (self.directory / str(step)).iterdir() if p.is_dir())

    def saved_arrays(self, step: int) -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
        """``item -> [(path, shape, dtype)]`` of the array items of ``step``, from their Orbax metadata (no array read).

        Read per item directory with the handler that wrote it, so it works in a
        process that has not saved anything itself.
        """
        handler = ocp.StandardCheckpointHandler()
        found = {}
        for item in ARRAY_ITEMS:
            path = self.directory / str(step) / item
            if path.is_dir():
                metadata = handler.metadata(path)
                found[item] = array_leaves(getattr(metadata, "tree", metadata))
        return found

    def saved_config(self, step: int) -> dict:
        """The resolved config stored with ``step``."""
        return self.saved_json(step, ["config"])["config"]

    def saved_json(self, step: int, names: list[str]) -> dict:
        """The JSON items ``names`` of ``step`` that it holds (no array is read); tokenizers decoded to bytes."""
        present = set(self.item_names(step))
        wanted = [name for name in names if name in present]
        restored = self.manager.restore(step, args=ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in wanted}))
        found = {name: dict(restored[name]) for name in wanted}
        if "tokenizers" in found:
            found["tokenizers"] = {k: base64.b64decode(v) for k, v in found["tokenizers"].items()}
        return found

    def restore_params(self, step: int, abstract_params: dict, *, ema: bool = True) -> tuple[dict, str]:
        """The EMA parameters of ``step`` when it holds them (and ``ema``), else its parameters; and which item."""
        item = "ema" if ema and "ema" in self.item_names(step) else "params"
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract_params)})
        )
        return restored[item], item

    def restore_latest(
        self, abstract_state: dict, check_config: Callable[[int, Checkpointer], None] | None = None
    ) -> dict | None:
        """The newest readable checkpoint, or None if there is none at all.

        An unreadable newest step is reported and moved aside to
        ``<step>.unreadable`` (kept for inspection, and out of the way of the
        run's next save at that step), and the one before is tried; if steps
        exist but none can be read, that is an error, not a fresh start.
        ``check_config(step, checkpointer)`` sees each step before its arrays
        are read and raises if the checkpoint cannot serve this run (that is not
        damage, so it is not skipped).
        """
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            try:
                self.saved_config(step)
                self.saved_arrays(step)
            except Exception as e:  # a damaged step: say so and try the previous one
                failures.append(self._report_unreadable(step, e))
                continue
            if check_config:
                check_config(step, self)
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
        """Waits for the pending save; a failure is reported, not raised."""
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            self._report_failed_save(self._pending, e)

    def close(self) -> None:
        self.manager.close()
