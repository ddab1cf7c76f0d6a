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

The run's objective (sft, dpo, sft+dpo) is one such Axolotl run per stage, in the order
worker/training/stages.py plans (a resume in the DPO stage never repeats SFT): SFT into the
checkpoint folder; for sft+dpo its adapter and metrics are kept in sft-adapter/; DPO (`rl: dpo`)
on the preference pairs into dpo/, continuing that adapter, its steps counted after SFT's.
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
from worker.training import stages
from worker.training.backends import axolotl_config
from worker.training.backends.axolotl_helper import EVENTS_ENV
from worker.training.data import count_lines
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
    """Feeds the helper's records to a PipelineCallback: one event vocabulary for all backends.

    `stage` (sft, dpo), `step_offset` and `steps_after` as PipelineCallback takes them; the
    checkpoint events name `checkpoint_dir` (the stage's: dpo/ for DPO)."""

    def __init__(
        self,
        job: TrainJob,
        *,
        stage: str = "sft",
        step_offset: int = 0,
        steps_after: int = 0,
        checkpoint_dir: Path | None = None,
    ) -> None:
        from worker.training.callbacks import PipelineCallback

        self.callback = PipelineCallback(
            job.emitter,
            job.should_cancel,
            str(checkpoint_dir or job.checkpoint_dir),
            stage=stage,
            step_offset=step_offset,
            steps_after=steps_after,
        )
        self.end: dict[str, Any] = {}
        self.step = 0  # the stage's own step; the run's is step_offset more

    @property
    def run_step(self) -> int:
        return self.callback.step_offset + self.step

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


def supervise(
    process: subprocess.Popen, job: TrainJob, events: Path, output: Path, replay: Replay
) -> Replay:
    """Replay progress while Axolotl runs; cancel and heartbeat; return when it has exited."""
    tail = EventTail(events)
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
                job.emitter.emit("heartbeat", step=replay.run_step, total_steps=None)
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


def copy_adapter_files(output_dir: Path, folder: Path) -> None:
    """The adapter files Axolotl saved at the top of output_dir into `folder`: not its
    checkpoints, nor the frozen DPO reference ("ref/", a folder), nor the model's config."""
    if not (output_dir / "adapter_model.safetensors").is_file():
        raise PipelineError(f"Axolotl finished without saving an adapter in {output_dir}")
    folder.mkdir(parents=True, exist_ok=True)
    for item in output_dir.iterdir():
        if item.is_file() and not item.name.startswith(".") and item.name not in NOT_ADAPTER:
            shutil.copy2(item, folder / item.name)


def copy_adapter(output_dir: Path, adapter_dir: Path) -> None:
    """copy_adapter_files into adapter_dir, via a staging copy and a rename."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.axolotl")
    shutil.rmtree(staging, ignore_errors=True)
    copy_adapter_files(output_dir, staging)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.rename(staging, adapter_dir)


def _device() -> tuple[bool, bool]:
    import torch

    cuda = torch.cuda.is_available()
    return cuda, cuda and torch.cuda.is_bf16_supported()


def train(job: TrainJob) -> TrainResult:
    """Train the stages stages.plan(job) leaves, one Axolotl run each; the final adapter in
    job.adapter_dir, the run's metrics through stages.combine."""
    cuda, bf16 = _device()
    check_target_modules(job.model_path, list(job.config.target_modules))
    job.checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
    plan = stages.plan(job)
    sft = plan.sft
    if plan.stages[0] == "sft":
        then_dpo = "dpo" in plan.stages
        result = _train_sft(job, cuda, bf16, steps_after=stages.dpo_steps(job) if then_dpo else 0)
        if not then_dpo:
            copy_adapter(job.checkpoint_dir, job.adapter_dir)
            return _with_objective(result, job)
        sft = stages.SftOutcome(
            result.metrics["total_steps"], result.metrics, result.hyperparameters
        )
        stages.save_sft_outcome(
            job.checkpoint_dir, lambda folder: copy_adapter_files(job.checkpoint_dir, folder), sft
        )
    dpo_resume = plan.resume_from if plan.stages == ("dpo",) else None
    dpo, dpo_cfg = _train_dpo(job, cuda, bf16, sft, dpo_resume)
    copy_adapter(stages.dpo_checkpoint_dir(job.checkpoint_dir), job.adapter_dir)
    hyper = dict(sft.hyperparameters) if sft else dict(dpo.hyperparameters)
    hyper["dpo"] = dpo_cfg  # the DPO stage's YAML, as "axolotl" holds SFT's
    return _with_objective(
        TrainResult(backend=NAME, metrics=stages.combine(sft, dpo.metrics), hyperparameters=hyper),
        job,
    )


def _train_sft(job: TrainJob, cuda: bool, bf16: bool, *, steps_after: int) -> TrainResult:
    """The SFT stage: the export's examples (in messages form for a chat model)."""
    work = job.checkpoint_dir.parent
    chat_files = None
    if axolotl_config.has_chat_template(job.model_path):
        chat_files = (
            axolotl_config.write_chat_file(job.train_path, work / "axolotl-train.jsonl"),
            axolotl_config.write_chat_file(job.val_path, work / "axolotl-val.jsonl"),
        )
    cfg = axolotl_config.generate_config(job, cuda=cuda, bf16=bf16, chat_files=chat_files)
    replay = Replay(job, stage="sft", steps_after=steps_after)
    elapsed = run_stage(job, cfg, replay, "axolotl")
    return TrainResult(
        backend=NAME,
        metrics=_metrics(replay, elapsed),
        hyperparameters=hyperparameters(
            job, NAME, {}, {"axolotl": cfg, "libraries": replay.end.get("libraries") or {}}
        ),
    )


def _train_dpo(
    job: TrainJob,
    cuda: bool,
    bf16: bool,
    sft: stages.SftOutcome | None,
    resume_from: Path | None,
) -> tuple[TrainResult, dict[str, Any]]:
    """The DPO stage (`rl: dpo`): the pairs, continuing the SFT stage's adapter when there
    was one, its steps reported after SFT's. Returns its result and its YAML's settings."""
    work = job.checkpoint_dir.parent
    chat = axolotl_config.has_chat_template(job.model_path)
    train_pairs = axolotl_config.write_pair_file(
        job.train_pairs_path, work / "axolotl-dpo-train.jsonl", chat=chat
    )
    val_pairs = None
    if count_lines(job.val_pairs_path) > 0:  # nothing held out: train without evaluating
        val_pairs = axolotl_config.write_pair_file(
            job.val_pairs_path, work / "axolotl-dpo-val.jsonl", chat=chat
        )
    cfg = axolotl_config.generate_dpo_config(
        job,
        cuda=cuda,
        bf16=bf16,
        pair_files=(train_pairs, val_pairs),
        chat=chat,
        sft_adapter=stages.sft_adapter_dir(job.checkpoint_dir) if sft else job.init_adapter,
        resume_from=resume_from,
    )
    replay = Replay(
        job,
        stage="dpo",
        step_offset=sft.steps if sft else 0,
        checkpoint_dir=stages.dpo_checkpoint_dir(job.checkpoint_dir),
    )
    elapsed = run_stage(job, cfg, replay, "axolotl-dpo")
    metrics = _metrics(replay, elapsed)
    for key, value in replay.callback.last_eval.items():  # the DPO figures, as dpo_loop's
        if key != "eval_loss":
            metrics[f"dpo_{key}"] = value
    hyper = hyperparameters(job, NAME, {}, {"libraries": replay.end.get("libraries") or {}})
    hyper.pop("sft", None)  # no SFT stage's arguments in a DPO stage's record
    return TrainResult(backend=NAME, metrics=metrics, hyperparameters=hyper), cfg


def run_stage(job: TrainJob, cfg: dict[str, Any], replay: Replay, name: str) -> float:
    """Check `cfg`, write it as work/{name}.yaml and run the helper on it, its progress
    replayed through `replay`; the failures mapped (cancel, OOM, Axolotl's errors). Returns the
    seconds it ran. Every stage goes through here: cancel, OOM and heartbeats alike."""
    axolotl_config.check_config(cfg)
    work = job.checkpoint_dir.parent
    cfg_path = axolotl_config.write_config(cfg, work / f"{name}.yaml")
    events, output = work / f"{name}-events.jsonl", work / f"{name}-output.log"
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
        supervise(process, job, events, output, replay)
    except BaseException:
        _terminate(process)
        raise
    elapsed = time.monotonic() - started
    if process.returncode != 0 or not replay.end:
        raise failure(process.returncode, output)
    return elapsed


def _metrics(replay: Replay, elapsed: float) -> dict[str, Any]:
    """Seed §5.1 metrics of one stage, from its replayed events and its end record."""
    end, callback = replay.end, replay.callback
    tokens = int(end.get("num_input_tokens_seen") or 0)
    return {
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


def _with_objective(result: TrainResult, job: TrainJob) -> TrainResult:
    result.hyperparameters["objective"] = job.config.objective
    return result
