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
# TRL's DPO log keys -> ProgressEvent fields; eval logs carry the same keys prefixed "eval_".
DPO_FIGURES = {
    "rewards/margins": "rewards_margins",
    "rewards/accuracies": "rewards_accuracies",
    "logps/chosen": "logps_chosen",
    "logps/rejected": "logps_rejected",
}


class PipelineCallback(TrainerCallback):
    """Turns Trainer logs into seed §5.1 events and stops training when a cancel is requested.

    The cancel check runs after every optimizer step; it must be cheap (a Redis GET or a flag).

    One callback serves one stage of a run (`stage`: "sft" or "dpo"). Its events count steps
    over the whole run: `step_offset` steps were done by earlier stages and `steps_after` are
    still to come in later ones, so step, total_steps and the ETA cover both stages.
    """

    def __init__(
        self,
        emitter: Emitter,
        should_cancel: Callable[[], bool],
        checkpoint_dir: str,
        should_stop: Callable[[], bool] = lambda: False,
        *,
        stage: str = "sft",
        step_offset: int = 0,
        steps_after: int = 0,
    ) -> None:
        self.emitter = emitter
        self.stage = stage
        self.step_offset = step_offset
        self.steps_after = steps_after
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
        self.last_eval: dict[str, float] = {}  # the stage's last eval figures (DPO's included)
        self.oom_hook = oom_hook()

    def _step(self, state: Any) -> int:
        return self.step_offset + state.global_step

    def _total(self, state: Any) -> int | None:
        return self.step_offset + state.max_steps + self.steps_after if state.max_steps else None

    def _eta(self, state: Any) -> int | None:
        done = state.global_step - self.start_step
        if done <= 0 or not state.max_steps:
            return None
        elapsed = time.monotonic() - self.started_at
        left = max(state.max_steps - state.global_step, 0) + self.steps_after
        return int(elapsed / done * left)

    def _tokens_per_second(self, state: Any) -> float | None:
        tokens = _tokens_seen(state) - self.start_tokens
        elapsed = time.monotonic() - self.started_at
        return round(tokens / elapsed, 2) if tokens > 0 and elapsed > 0 else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started_at = time.monotonic()
        self.start_step = state.global_step
        self.start_tokens = _tokens_seen(state)  # a resume starts past zero
        self.emitter.emit(
            "training_start",
            total_steps=self._total(state),
            step=self._step(state),
            stage=self.stage,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # the run-wide step, as the events count it: a fault can be aimed at either stage
        inject_faults(self._step(state), args.per_device_train_batch_size, self.oom_hook)
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
            self.emitter.emit("heartbeat", step=self._step(state), total_steps=self._total(state))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        common = {
            "step": self._step(state),
            "total_steps": self._total(state),
            "eta_seconds": self._eta(state),
            "stage": self.stage,
        }
        if "loss" in logs:
            self.last_train_loss = float(logs["loss"])
            self.emitter.emit(
                "progress",
                loss=self.last_train_loss,
                eval_loss=None,
                learning_rate=_float(logs.get("learning_rate")),
                tokens_per_second=self._tokens_per_second(state),
                **_dpo_figures(logs, ""),
                **common,
            )
        if "eval_loss" in logs:
            eval_loss = float(logs["eval_loss"])
            self.eval_losses.append(eval_loss)
            figures = _dpo_figures(logs, "eval_")
            self.last_eval = {"eval_loss": eval_loss, **figures}
            self.emitter.emit(
                "eval",
                loss=self.last_train_loss,
                eval_loss=eval_loss,
                learning_rate=_float(logs.get("learning_rate")),
                **figures,
                **common,
            )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = f"{self.checkpoint_dir}/checkpoint-{state.global_step}"
        self.emitter.emit("checkpoint", step=self._step(state), path=path, stage=self.stage)


def _tokens_seen(state: Any) -> int:
    # Axolotl's events are replayed with a state that carries only what its plugin wrote
    return int(getattr(state, "num_input_tokens_seen", 0) or 0)


def _dpo_figures(logs: dict[str, Any], prefix: str) -> dict[str, float]:
    """The DPO figures present in one Trainer log (none in an SFT stage's)."""
    return {
        field: float(logs[prefix + key])
        for key, field in DPO_FIGURES.items()
        if logs.get(prefix + key) is not None
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
