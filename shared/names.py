"""The names both sides agree on: task names, queues, run statuses, Redis keys, exit codes
and error codes.

One definition of each, so the API, the workers and the CLI can never drift apart.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Literal, get_args

# --- Celery ---------------------------------------------------------------------------------
TASK_EXPORT = "tmde.finetune.export"
TASK_TRAIN = "tmde.finetune.train"
TASK_EVALUATE = "tmde.finetune.evaluate"
TASK_SCHEDULED_CHECK = "tmde.finetune.scheduled_check"
TASK_WATCHDOG = "tmde.finetune.watchdog"
TASK_EXPORT_GGUF = "tmde.adapters.export_gguf"

QUEUE_EXPORT = "export"  # CPU workers: reads the trace database, writes JSONL
QUEUE_TRAIN = "train"  # GPU-pinned workers: training and evaluation (they load the model)
# GGUF exports for the serving stack: a worker with torch and gguf (not the slim image) that
# does not train, so an activation's export never waits behind a run of several hours.
QUEUE_DELIVERY = "delivery"
QUEUES = (QUEUE_EXPORT, QUEUE_TRAIN, QUEUE_DELIVERY)

TASK_QUEUES = {
    TASK_EXPORT: QUEUE_EXPORT,
    TASK_TRAIN: QUEUE_TRAIN,
    TASK_EVALUATE: QUEUE_TRAIN,
    TASK_SCHEDULED_CHECK: QUEUE_EXPORT,  # control tasks run on the CPU workers
    TASK_WATCHDOG: QUEUE_EXPORT,
    TASK_EXPORT_GGUF: QUEUE_DELIVERY,
}

# --- run statuses (seed §3.1 CHECK constraint) ------------------------------------------------
STATUS_PENDING = "pending"
STATUS_RUNNING = "running"
STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"
RunStatus = Literal["pending", "running", "completed", "failed", "cancelled"]  # the API's type
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
ACTIVE_STATUSES = (STATUS_PENDING, STATUS_RUNNING)
TERMINAL_STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED)

Trigger = Literal["manual", "scheduled", "api"]
TRIGGERS: tuple[str, ...] = get_args(Trigger)

# What an active run is doing (finetune_runs.phase). Only working phases must heartbeat.
PHASE_EXPORTING = "exporting"
PHASE_QUEUED = "queued"  # between steps: waiting for a worker of the next queue
PHASE_TRAINING = "training"
PHASE_EVALUATING = "evaluating"
WORKING_PHASES = (PHASE_EXPORTING, PHASE_TRAINING, PHASE_EVALUATING)

# The backend names are the run config's `backend` type: shared.fields.BACKENDS.


# --- Redis keys -----------------------------------------------------------------------------
def progress_channel(run_id: str) -> str:
    """Pub/sub channel that carries every event of one run."""
    return f"finetune:progress:{run_id}"


def latest_event_key(run_id: str) -> str:
    """String key holding the run's latest event, for late joiners (seed §2.3)."""
    return f"finetune:latest:{run_id}"


def cancel_key(run_id: str) -> str:
    """Set while a cancel is requested; the trainer polls it between steps."""
    return f"finetune:cancel:{run_id}"


def worker_stopping_key(host: str, pid: int) -> str:
    """Set while the worker main process `pid` on `host` shuts down (SIGTERM): its training
    task checkpoints at the next step and hands the run over to the next worker."""
    return f"finetune:worker-stopping:{host}:{pid}"


# --- exit codes (seed §5.3) and error codes -------------------------------------------------
class ExitCode(IntEnum):
    SUCCESS = 0
    GENERAL_ERROR = 1
    INSUFFICIENT_DATA = 2
    GPU_ERROR = 3
    MODEL_NOT_FOUND = 4
    CANCELLED = 130
    # 128 + SIGTERM: the run stopped at a checkpoint because its worker is shutting down, and
    # another worker resumes it; not a failure, but not this process's success either.
    HANDED_OVER = 143


class ErrorCode(StrEnum):
    """Machine-readable error codes: stored on failed runs (finetune_runs.error_code), carried
    by `error` events and returned by the registry's API errors.

    A StrEnum so that the stored and sent strings stay exactly the member values: the database,
    the events and the API see the same text as before the codes were an enum.
    """

    GENERAL = "GENERAL"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"
    OOM = "OOM"
    GPU = "GPU"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    CANCELLED = "CANCELLED"
    HUNG = "HUNG"  # the watchdog killed a trainer that stopped heartbeating
    WORKER_LOST = "WORKER_LOST"  # the worker vanished and the run could not be resumed
    HANDED_OVER = "HANDED_OVER"
    # the adapter registry (shared/registry.py) and its CLI
    ADAPTER_INVALID = "ADAPTER_INVALID"
    ADAPTER_NOT_FOUND = "ADAPTER_NOT_FOUND"
    ADAPTER_CONFLICT = "ADAPTER_CONFLICT"
    ADAPTER_INTEGRITY = "ADAPTER_INTEGRITY"
    EXPORT_FAILED = "EXPORT_FAILED"


# Exhaustive (tests/shared/test_error_codes.py): a new ErrorCode needs its exit code here.
EXIT_CODES: dict[ErrorCode, ExitCode] = {
    ErrorCode.GENERAL: ExitCode.GENERAL_ERROR,
    ErrorCode.INSUFFICIENT_DATA: ExitCode.INSUFFICIENT_DATA,
    ErrorCode.OOM: ExitCode.GPU_ERROR,
    ErrorCode.GPU: ExitCode.GPU_ERROR,
    ErrorCode.MODEL_NOT_FOUND: ExitCode.MODEL_NOT_FOUND,
    ErrorCode.BACKEND_UNAVAILABLE: ExitCode.GENERAL_ERROR,
    ErrorCode.CANCELLED: ExitCode.CANCELLED,
    ErrorCode.HUNG: ExitCode.GENERAL_ERROR,
    ErrorCode.WORKER_LOST: ExitCode.GENERAL_ERROR,
    ErrorCode.HANDED_OVER: ExitCode.HANDED_OVER,
    ErrorCode.ADAPTER_INVALID: ExitCode.GENERAL_ERROR,
    ErrorCode.ADAPTER_NOT_FOUND: ExitCode.MODEL_NOT_FOUND,  # `adapters ...` exits 4, as a model
    ErrorCode.ADAPTER_CONFLICT: ExitCode.GENERAL_ERROR,
    ErrorCode.ADAPTER_INTEGRITY: ExitCode.GENERAL_ERROR,
    ErrorCode.EXPORT_FAILED: ExitCode.GENERAL_ERROR,
}


def exit_code_for(code: ErrorCode | str) -> ExitCode:
    """The exit code of an error code; a code this version does not know (a newer worker's,
    read back from the database) is a general error rather than a crash."""
    try:
        return EXIT_CODES[ErrorCode(code)]
    except ValueError:
        return ExitCode.GENERAL_ERROR


def exit_status(status: int | None) -> ExitCode:
    """A command's or a library's status as an ExitCode: None is success, and a status outside
    the table (a third-party tool's) is a general error rather than a crash."""
    try:
        return ExitCode(status or 0)
    except ValueError:
        return ExitCode.GENERAL_ERROR
