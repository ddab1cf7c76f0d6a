"""One run on several GPUs (FINETUNE_NPROC > 1): the training task launches `torchrun` with N
ranks of the `trl` backend (DDP; NCCL on GPUs, gloo on CPUs) and stays their supervisor.

    parent (the Celery task)                       ranks (torchrun --nproc_per_node N)
    run_distributed(job, N)  ── job.json ──▶        main(): TrainJob from job.json, train
      re-emits rank 0's events (Redis, DB, log) ◀── stdout: rank 0's events as JSON lines
      polls cancel; SIGTERM to the whole group      ranks > 0 print only their error
      reads result.json                     ◀──     rank 0 writes it (metrics, arguments)

Only rank 0 publishes events and writes artifacts: Trainer saves checkpoints on the main
process, and the backend saves the adapter only there. Data is sharded by Trainer's
distributed sampler, so each optimizer step covers N micro-batches.

    python -m torch.distributed.run --standalone --local-addr 127.0.0.1 --nproc_per_node 2 \\
        -m worker.training.distributed JOB.json RESULT.json
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.errors import (
    BackendUnavailableError,
    CancelledError,
    ModelNotFoundError,
    OutOfMemoryError,
    PipelineError,
)
from shared.events import Emitter, ProgressEvent, stdout_sink
from shared.fsutil import write_json_atomic
from shared.names import ErrorCode
from shared.run_config import FineTuneConfig
from worker.training.backends import BACKENDS, resolve_backend
from worker.training.job import TrainJob, TrainResult
from worker.training.lifeline import child_env

log = logging.getLogger(__name__)

ERRORS: dict[str, type[PipelineError]] = {
    ErrorCode.OOM: OutOfMemoryError,
    ErrorCode.MODEL_NOT_FOUND: ModelNotFoundError,
    ErrorCode.BACKEND_UNAVAILABLE: BackendUnavailableError,
}
POLL_SECONDS = 0.5
LOOPBACK = "127.0.0.1"
TAIL_LINES = 40
TAIL_CHARS = 2000
# torchrun's failure summary: "rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 42)"
ROOT_CAUSE = "Root Cause (first observed failure):"
KILLED_RANK = re.compile(
    r"rank\s*:\s*(?P<rank>\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*-(?P<signal>\d+)"
)
STOP_GRACE_SECONDS = 30
PATH_FIELDS = ("model_path", "train_path", "val_path", "adapter_dir", "checkpoint_dir")
OPTIONAL_PATHS = ("train_pairs_path", "val_pairs_path", "init_adapter")


def job_to_dict(job: TrainJob) -> dict[str, Any]:
    data = {name: str(getattr(job, name)) for name in PATH_FIELDS}
    return {
        **data,
        "run_id": job.run_id,
        "config": job.config.to_dict(),
        "torch_threads": job.torch_threads,
        "resume_from": str(job.resume_from) if job.resume_from else None,
        **{name: str(getattr(job, name) or "") for name in OPTIONAL_PATHS},
    }


def job_from_dict(data: dict[str, Any], emitter: Emitter) -> TrainJob:
    paths = {name: Path(data[name]) for name in PATH_FIELDS}
    resume = Path(data["resume_from"]) if data.get("resume_from") else None
    optional = {name: Path(data[name]) if data.get(name) else None for name in OPTIONAL_PATHS}
    return TrainJob(
        run_id=data["run_id"],
        config=FineTuneConfig.model_validate(data["config"]),
        emitter=emitter,
        torch_threads=data["torch_threads"],
        resume_from=resume,
        **paths,
        **optional,
    )


def run_distributed(job: TrainJob, nproc: int) -> TrainResult:
    """Train `job` on `nproc` ranks; events reach `job.emitter` once, from rank 0."""
    backend = resolve_backend(job.config.backend, nproc=nproc)
    _require_distributed(backend, nproc)
    work = job.checkpoint_dir.parent
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file = work / "distributed-job.json", work / "distributed-result.json"
    result_file.unlink(missing_ok=True)
    # the ranks must not resolve `auto` alone (each would see one process)
    resolved = job.config.model_copy(update={"backend": backend})
    write_json_atomic(job_file, job_to_dict(replace(job, config=resolved)))
    command = torchrun_command(nproc, job_file, result_file)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # gloo's own sockets on loopback too (one machine), unless the operator chose one.
        env=child_env({"GLOO_SOCKET_IFNAME": "lo", **os.environ}),
        start_new_session=True,  # one process group: a cancel stops every rank
    )
    output = RankOutput()
    reader = threading.Thread(
        target=_relay, args=(process.stdout, job.emitter, output), daemon=True
    )
    reader.start()
    try:
        while process.poll() is None:
            if job.should_cancel():
                _stop(process)
                raise CancelledError("Cancelled during training")
            time.sleep(POLL_SECONDS)
    except BaseException:
        _stop(process)
        raise
    reader.join(timeout=10)
    if not result_file.is_file():
        raise _failure(process.returncode, output)
    if process.returncode != 0:  # rank 0 writes the result once every rank's last step is done
        log.warning(
            "a rank failed after the run completed (torchrun exit code %s); the adapter "
            "and the result are complete. Its last lines:\n%s",
            process.returncode,
            _last_lines(output),
        )
    result = json.loads(result_file.read_text())
    return TrainResult(result["backend"], result["metrics"], result["hyperparameters"])


def _require_distributed(backend: str, nproc: int) -> None:
    """BackendUnavailableError unless the registry marks `backend` as one torchrun can run."""
    able = [name for name, entry in BACKENDS.items() if entry.distributed]
    if backend not in able:
        raise BackendUnavailableError(
            f"FINETUNE_NPROC={nproc} runs the {' or '.join(able)} backend only (this run uses "
            f"{backend!r}); set FINETUNE_BACKEND={able[0]}, or FINETUNE_NPROC=1 for a "
            "single-device run"
        )


def torchrun_command(nproc: int, job_file: Path, result_file: Path) -> list[str]:
    return [
        # torchrun bound to this process: SIGTERM (it stops its ranks) if this worker dies.
        sys.executable, "-m", "worker.training.lifeline", "torch.distributed.run", "--standalone",
        # One machine: the ranks meet on loopback. Else the store address is the host's FQDN,
        # which a sandbox or container may not resolve (the ranks then hang or exit 1).
        f"--local-addr={LOOPBACK}", f"--nproc_per_node={nproc}",
        "-m", "worker.training.distributed", str(job_file), str(result_file),
    ]  # fmt: skip


@dataclass
class RankOutput:
    """What the ranks printed besides events: their error events, and the last log lines for
    the failure message when a rank dies without one (a traceback, a signal)."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


def _relay(stream: Any, emitter: Emitter, output: RankOutput) -> None:
    """Rank 0's JSON events to the parent's sinks; anything else is log output."""
    for line in stream:
        text = line.rstrip("\n")
        try:
            data = json.loads(text) if text.startswith("{") else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or "type" not in data:
            if text:
                log.info("[ranks] %s", text)
                output.tail.append(text)
            continue
        if data["type"] == "error":
            output.errors.append(data)
            continue  # the parent raises it; the pipeline emits the one error event
        event = ProgressEvent.from_dict(data)
        fields = {k: v for k, v in event.to_dict().items() if k not in ("type", "run_id")}
        emitter.emit(event.type, **{k: v for k, v in fields.items() if k != "timestamp"})


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _failure(returncode: int, output: RankOutput) -> PipelineError:
    killed = _killed_rank(output)
    if killed:  # the root cause: the other ranks' errors are only its echo
        rank, name = killed
        if name != "SIGKILL":  # SIGABRT, SIGSEGV: the native library's message is in the log
            return PipelineError(
                f"rank {rank} of the distributed run was killed by {name}; "
                f"the last lines of the ranks' output:\n{_last_lines(output)}"
            )
        return PipelineError(
            f"rank {rank} of the distributed run was killed by SIGKILL "
            "(without a cause in the log: most often the kernel's OOM killer)",
            suggestion="Reduce batch_size or maxSeqLen, or give the worker more memory",
        )
    if output.errors:
        error = output.errors[0]
        kind = ERRORS.get(error.get("code", ""), PipelineError)
        if kind is OutOfMemoryError:
            return OutOfMemoryError(error.get("message", "out of memory"))
        return kind(error.get("message", "distributed training failed"))
    return PipelineError(
        f"distributed training exited with code {returncode} before finishing; "
        f"the run log has every rank's output. Its last lines:\n{_last_lines(output)}"
    )


def _last_lines(output: RankOutput) -> str:
    return "\n".join(output.tail)[-TAIL_CHARS:]


def _killed_rank(output: RankOutput) -> tuple[int, str] | None:
    """(rank, signal name) from torchrun's failure summary, when a rank died of a signal."""
    text = "\n".join(output.tail)
    # Only the root cause: the ranks torchrun stopped after it are listed too (SIGTERM).
    found = KILLED_RANK.search(text, text.rfind(ROOT_CAUSE) if ROOT_CAUSE in text else len(text))
    if not found:
        return None
    number = int(found["signal"])
    try:
        return int(found["rank"]), signal.Signals(number).name
    except ValueError:
        return int(found["rank"]), f"signal {number}"


def main(argv: list[str] | None = None) -> int:
    """One rank: train, and on rank 0 report events on stdout and write the result."""
    from worker.training.backends import run_backend

    job_file, result_file = (argv or sys.argv[1:])[:2]
    rank = int(os.environ.get("RANK", "0"))
    emitter = Emitter(None, [stdout_sink()] if rank == 0 else [])
    job = job_from_dict(json.loads(Path(job_file).read_text()), emitter)
    emitter.run_id = job.run_id
    # Every rank reports its own failure: the first one printed is the cause (the others'
    # are its echo, a peer's closed connection), and the parent raises it.
    errors = Emitter(job.run_id, [stdout_sink()])
    where = f"rank {rank}: " if rank else ""
    try:
        result = run_backend(job)
    except PipelineError as exc:
        errors.emit("error", code=exc.code, message=where + exc.message, suggestion=exc.suggestion)
        return int(exc.exit_code)
    except Exception as exc:  # the traceback stays in the run log
        errors.emit("error", code=PipelineError.code, message=f"{where}{type(exc).__name__}: {exc}")
        raise
    # Rank 0 finished training only after every rank's last step (each step is collective):
    # from here the adapter and the result are complete whatever a peer does on its way out.
    if rank == 0:
        write_json_atomic(
            Path(result_file),
            {
                "backend": result.backend,
                "metrics": {**result.metrics, "world_size": int(os.environ["WORLD_SIZE"])},
                "hyperparameters": result.hyperparameters,
            },
        )
    _leave_together()
    return 0


def _leave_together() -> None:
    """Wait for every rank, then close the process group. A rank that exits with the group
    open races its peers' gloo threads: one sees "Connection closed by peer", throws, and
    its process aborts (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
