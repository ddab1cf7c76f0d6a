"""The `axolotl` backend (seed §2.6): Axolotl run as a subprocess of its own environment.

1. generate the run's YAML (axolotl_config) and check it here (what Axolotl's validator lets
   through: names, sizes, target modules);
2. run `python -m worker.training.backends.axolotl_helper train run.yaml` with PYTHON_PATH,
   offline: in Axolotl's environment it runs Axolotl's own validator plus an unknown-key check,
   then (only when valid) `axolotl.cli.train` on the YAML, in the same process;
3. while it runs, tail the JSON lines its ProgressPlugin writes and replay them through the
   same PipelineCallback the in-process backends use (the same events, at the same steps);
   heartbeat; on cancel terminate it (CancelledError);
4. map its failures: out of memory -> OutOfMemoryError (exit code 3), anything else ->
   PipelineError with Axolotl's last error line;
5. copy the adapter it saved into job.adapter_dir: the same files as the trl backend.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

from shared.errors import CancelledError, OutOfMemoryError, PipelineError
from worker.training.backends import axolotl_config
from worker.training.backends.axolotl_helper import EVENTS_ENV
from worker.training.job import TrainJob, TrainResult
from worker.training.lifeline import child_env
from worker.training.sft_loop import hyperparameters

NAME = "axolotl"  # the registry's name for this backend (worker/training/backends/__init__.py)

log = logging.getLogger(__name__)

HELPER = "worker.training.backends.axolotl_helper"  # validates, then runs axolotl.cli.train
POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 10.0
TERMINATE_GRACE_SECONDS = 15
# Axolotl's output folder also holds the base model's config and its own log: not the adapter.
NOT_ADAPTER = {"config.json", "debug.log", "trainer_state.json", "training_args.bin"}
OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory")


def _python(job: TrainJob) -> str:
    if job.python_path:
        return job.python_path
    from shared.settings import Settings

    return Settings.from_env().python_path


def subprocess_env(python: str, events: Path) -> dict[str, str]:
    """Offline, no telemetry, and the environment's bin/ first (Axolotl calls `accelerate`)."""
    bin_dir = str(Path(shutil.which(python) or python).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "DO_NOT_TRACK": "1",
        "WANDB_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
        EVENTS_ENV: str(events),
    }


def check_target_modules(model_path: Path, wanted: list[str]) -> None:
    """The in-process backends' check, on a weightless (meta-device) copy of the model: Axolotl
    would only fail after loading the weights, with a less helpful message."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from worker.training.sft_loop import check_target_modules as check

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    check(model, wanted)


def verdict(output: Path) -> dict[str, Any] | None:
    """The helper's validation line ({"ok": ..., "errors": [...]}) from Axolotl's output."""
    if not output.exists():
        return None
    for line in output.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith('{"ok": '):
            return json.loads(line)
    return None


class EventTail:
    """Reads the complete JSON lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


class Replay:
    """Feeds the helper's records to a PipelineCallback: one event vocabulary for all backends."""

    def __init__(self, job: TrainJob) -> None:
        from worker.training.callbacks import PipelineCallback

        self.callback = PipelineCallback(job.emitter, job.should_cancel, str(job.checkpoint_dir))
        self.end: dict[str, Any] = {}
        self.step = 0

    def feed(self, record: dict[str, Any]) -> None:
        state = SimpleNamespace(
            global_step=record["step"],
            max_steps=record["max_steps"],
            num_input_tokens_seen=record.get("num_input_tokens_seen", 0),
        )
        kind = record["event"]
        self.step = record["step"]
        if kind == "begin":
            self.callback.on_train_begin(None, state, None)
        elif kind == "log":
            self.callback.on_log(None, state, None, logs=record["logs"])
        elif kind == "save":
            self.callback.on_save(None, state, None)
        elif kind == "end":
            self.end = record


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM the whole process group (accelerate starts a child), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_SECONDS), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _copy_log(handle: IO[str]) -> None:
    for line in handle.readlines():
        log.info("axolotl: %s", line.rstrip())


def supervise(process: subprocess.Popen, job: TrainJob, events: Path, output: Path) -> Replay:
    """Replay progress while Axolotl runs; cancel and heartbeat; return when it has exited."""
    replay, tail = Replay(job), EventTail(events)
    last_beat = 0.0
    with output.open(encoding="utf-8", errors="replace") as log_handle:
        while True:
            for record in tail.read():
                replay.feed(record)
            _copy_log(log_handle)
            if process.poll() is not None:
                for record in tail.read():
                    replay.feed(record)
                _copy_log(log_handle)
                return replay
            if job.should_cancel():
                _terminate(process)
                raise CancelledError("Cancelled during training")
            if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.monotonic()
                job.emitter.emit("heartbeat", step=replay.step, total_steps=None)
            time.sleep(POLL_SECONDS)


def failure(returncode: int, output: Path) -> PipelineError:
    checked = verdict(output)
    if checked is not None and not checked["ok"]:
        return PipelineError(
            f"Axolotl refused the configuration: {'; '.join(checked['errors'])}",
            suggestion=f"Fix {axolotl_config.DEFAULT_CONFIG} or the run's config",
        )
    suggestion = f"See its full output in {output}"
    if checked is None:  # it stopped before validating: most often the helper is missing there
        suggestion += "; is the project installed in Axolotl's environment (`make venv-axolotl`)?"
    lines = output.read_text(encoding="utf-8", errors="replace").splitlines()
    if any(marker in line for line in lines[-200:] for marker in OOM_MARKERS):
        return OutOfMemoryError(f"Out of memory during training (Axolotl exit {returncode})")
    errors = [line.strip() for line in lines if "Error" in line or "error:" in line]
    last = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
    return PipelineError(f"Axolotl failed (exit {returncode}): {last}", suggestion=suggestion)


def copy_adapter(output_dir: Path, adapter_dir: Path) -> None:
    """The files Axolotl saved at the top of output_dir (not checkpoints), via a staging copy."""
    if not (output_dir / "adapter_model.safetensors").is_file():
        raise PipelineError(f"Axolotl finished without saving an adapter in {output_dir}")
    staging = adapter_dir.with_name(f".{adapter_dir.name}.axolotl")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in output_dir.iterdir():
        if item.is_file() and not item.name.startswith(".") and item.name not in NOT_ADAPTER:
            shutil.copy2(item, staging / item.name)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.rename(staging, adapter_dir)


def train(job: TrainJob) -> TrainResult:
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    check_target_modules(job.model_path, list(job.config.target_modules))
    work = job.checkpoint_dir.parent
    work.mkdir(parents=True, exist_ok=True)
    chat_files = None
    if axolotl_config.has_chat_template(job.model_path):
        chat_files = (
            axolotl_config.write_chat_file(job.train_path, work / "axolotl-train.jsonl"),
            axolotl_config.write_chat_file(job.val_path, work / "axolotl-val.jsonl"),
        )
    cfg = axolotl_config.generate_config(job, cuda=cuda, bf16=bf16, chat_files=chat_files)
    axolotl_config.check_config(cfg)
    cfg_path = axolotl_config.write_config(cfg, work / "axolotl.yaml")
    events, output = work / "axolotl-events.jsonl", work / "axolotl-output.log"
    events.unlink(missing_ok=True)
    python = _python(job)
    env = subprocess_env(python, events)
    started = time.monotonic()
    with output.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            [python, "-m", HELPER, "train", str(cfg_path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),  # the helper exits if this worker process is killed
            cwd=work,
            start_new_session=True,  # its own process group: cancel reaches accelerate's child
        )
    try:
        replay = supervise(process, job, events, output)
    except BaseException:
        _terminate(process)
        raise
    elapsed = time.monotonic() - started
    if process.returncode != 0 or not replay.end:
        raise failure(process.returncode, output)
    copy_adapter(job.checkpoint_dir, job.adapter_dir)
    return _result(job, replay, cfg, elapsed)


def _result(job: TrainJob, replay: Replay, cfg: dict[str, Any], elapsed: float) -> TrainResult:
    end, callback = replay.end, replay.callback
    tokens = int(end.get("num_input_tokens_seen") or 0)
    metrics = {
        "final_train_loss": callback.last_train_loss,
        "best_val_loss": min(callback.eval_losses) if callback.eval_losses else None,
        "total_steps": end["step"],
        "training_time_seconds": round(elapsed, 2),
        "peak_vram_gb": end.get("peak_vram_gb"),
        "peak_ram_gb": end.get("peak_ram_gb"),
        "train_tokens": tokens,
        "tokens_per_second": round(tokens / elapsed, 2) if elapsed > 0 and tokens else None,
        "device": end.get("device", "cpu"),
    }
    return TrainResult(
        backend=NAME,
        metrics=metrics,
        hyperparameters=hyperparameters(
            job, NAME, {}, {"axolotl": cfg, "libraries": end.get("libraries") or {}}
        ),
    )
