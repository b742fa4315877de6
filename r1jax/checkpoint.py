"""Orbax checkpoints of a run: train state, data-iterator state and metadata, atomically.

A checkpoint `run_dir/checkpoints/<step>/` holds three items:
- `state`: `{"params", "opt_state", "step"}` (sharded arrays, restored straight into the
  run's shardings),
- `data`: the prompt iterator's state (JSON), so a resumed run sees exactly the prompts an
  uninterrupted one would,
- `meta`: the config and counters (JSON).

Orbax writes into a temporary directory and renames it when complete, so an interrupted save
never replaces a good checkpoint; saves are asynchronous (the loop continues while arrays are
written) and only the last `keep` checkpoints are kept.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores a run's checkpoints under `directory`."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        """Starts saving (asynchronously); an existing checkpoint of `step` is kept."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data_state, meta) of `step`; arrays land in `abstract_state`'s shardings.

        Args:
          abstract_state: a pytree of jax.ShapeDtypeStruct with `.sharding` set.
        """
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return out["state"], out["data"], out["meta"]

    def meta(self, step: int) -> dict:
        """The metadata of `step` alone (the config it was saved with, counters), read
        before its arrays so that a run can refuse a checkpoint without restoring it."""
        return self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, for `restore`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)
