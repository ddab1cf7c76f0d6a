"""Trainer callbacks shared by every backend built on the HF Trainer: events, cancel, heartbeat.

Imported only inside a training process (it subclasses transformers' TrainerCallback). The
test-only fault hooks it calls after each step are in hooks.py, shared with Axolotl's plugin.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from shared.events import Emitter
from worker.training.hooks import inject_faults, oom_hook

HEARTBEAT_INTERVAL_SECONDS = 10.0


class PipelineCallback(TrainerCallback):
    """Turns Trainer logs into seed §5.1 events and stops training when a cancel is requested.

    The cancel check runs after every optimizer step; it must be cheap (a Redis GET or a flag).
    """

    def __init__(
        self,
        emitter: Emitter,
        should_cancel: Callable[[], bool],
        checkpoint_dir: str,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.emitter = emitter
        self.should_cancel = should_cancel
        self.should_stop = should_stop
        self.checkpoint_dir = checkpoint_dir
        self.cancelled = False
        self.stopped_at: int | None = None  # the step checkpointed for a worker shutdown
        self.started_at = time.monotonic()
        self.start_step = 0
        self.start_tokens = 0
        self.last_heartbeat = 0.0
        self.last_train_loss: float | None = None
        self.eval_losses: list[float] = []
        self.oom_hook = oom_hook()

    def _eta(self, state: Any) -> int | None:
        done = state.global_step - self.start_step
        if done <= 0 or not state.max_steps:
            return None
        elapsed = time.monotonic() - self.started_at
        return int(elapsed / done * max(state.max_steps - state.global_step, 0))

    def _tokens_per_second(self, state: Any) -> float | None:
        tokens = _tokens_seen(state) - self.start_tokens
        elapsed = time.monotonic() - self.started_at
        return round(tokens / elapsed, 2) if tokens > 0 and elapsed > 0 else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started_at = time.monotonic()
        self.start_step = state.global_step
        self.start_tokens = _tokens_seen(state)  # a resume starts past zero
        self.emitter.emit("training_start", total_steps=state.max_steps, step=state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        inject_faults(state.global_step, args.per_device_train_batch_size, self.oom_hook)
        if self.should_cancel():
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        elif self.should_stop():  # the worker shuts down: checkpoint this step for the next one
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = False
        now = time.monotonic()
        if now - self.last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            self.last_heartbeat = now
            self.emitter.emit("heartbeat", step=state.global_step, total_steps=state.max_steps)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        common = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "eta_seconds": self._eta(state),
        }
        if "loss" in logs:
            self.last_train_loss = float(logs["loss"])
            self.emitter.emit(
                "progress",
                loss=self.last_train_loss,
                eval_loss=None,
                learning_rate=_float(logs.get("learning_rate")),
                tokens_per_second=self._tokens_per_second(state),
                **common,
            )
        if "eval_loss" in logs:
            eval_loss = float(logs["eval_loss"])
            self.eval_losses.append(eval_loss)
            self.emitter.emit(
                "eval",
                loss=self.last_train_loss,
                eval_loss=eval_loss,
                learning_rate=_float(logs.get("learning_rate")),
                **common,
            )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = f"{self.checkpoint_dir}/checkpoint-{state.global_step}"
        self.emitter.emit("checkpoint", step=state.global_step, path=path)


def _tokens_seen(state: Any) -> int:
    # Axolotl's events are replayed with a state that carries only what its plugin wrote
    return int(getattr(state, "num_input_tokens_seen", 0) or 0)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
