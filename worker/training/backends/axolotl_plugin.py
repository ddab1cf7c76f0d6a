"""The Axolotl plugin named in every generated YAML (`plugins:`); loaded by Axolotl only.

Its trainer callback appends one JSON line per trainer event (begin, step, log, save, end) to
the file named by TMDE_AXOLOTL_EVENTS; the worker tails that file while Axolotl runs and replays
the lines through the same PipelineCallback the in-process backends use.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from worker.training.backends.axolotl_helper import EVENTS_ENV
from worker.training.hooks import inject_faults, oom_hook


class EventFileCallback(TrainerCallback):
    """Appends the trainer's progress to a JSON-lines file, flushed at every line."""

    def __init__(self, path: str) -> None:
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the trainer
        self.oom = oom_hook()

    def _write(self, kind: str, state: Any, **fields: Any) -> None:
        record = {
            "event": kind,
            "step": state.global_step,
            "max_steps": state.max_steps,
            "num_input_tokens_seen": int(getattr(state, "num_input_tokens_seen", 0) or 0),
            **fields,
        }
        self.handle.write(json.dumps(record, default=float) + "\n")
        self.handle.flush()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Count trained tokens as the trl backend does (the loop reads this flag every step).
        args.include_num_input_tokens_seen = "non_padding"
        self._write("begin", state, batch_size=args.per_device_train_batch_size)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the same test hooks as the in-process backends' callback (a hang, a real OOM)
        inject_faults(state.global_step, args.per_device_train_batch_size, self.oom)
        self._write("step", state)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        self._write("log", state, logs=logs or {})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._write("save", state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        from worker.provenance import library_versions

        cuda = torch.cuda.is_available()
        self._write(
            "end",
            state,
            peak_vram_gb=round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
            peak_ram_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
            device="cuda" if cuda else "cpu",
            libraries=library_versions(),  # Axolotl's environment's, not the worker's
        )


class ProgressPlugin(BasePlugin):
    """Axolotl plugin: adds EventFileCallback to the trainer Axolotl builds."""

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        # Axolotl always evaluates before the first step when eval_steps is set; the other
        # backends evaluate every eval_steps only, and their event sequences must match.
        trainer.args.eval_on_start = False

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list:
        path = os.environ.get(EVENTS_ENV)
        return [EventFileCallback(path)] if path else []
