"""The names both sides agree on: task names, queues, run statuses, Redis keys and exit codes.

One definition of each, so the API, the workers and the CLI can never drift apart.
"""

from __future__ import annotations

from enum import IntEnum

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
RUN_STATUSES = (STATUS_PENDING, STATUS_RUNNING, STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED)
ACTIVE_STATUSES = (STATUS_PENDING, STATUS_RUNNING)
TERMINAL_STATUSES = (STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED)

TRIGGERS = ("manual", "scheduled", "api")

# What an active run is doing (finetune_runs.phase). Only working phases must heartbeat.
PHASE_EXPORTING = "exporting"
PHASE_QUEUED = "queued"  # between steps: waiting for a worker of the next queue
PHASE_TRAINING = "training"
PHASE_EVALUATING = "evaluating"
WORKING_PHASES = (PHASE_EXPORTING, PHASE_TRAINING, PHASE_EVALUATING)

BACKENDS = ("auto", "trl", "unsloth", "axolotl")


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


# --- exit codes (seed §5.3) -----------------------------------------------------------------
class ExitCode(IntEnum):
    SUCCESS = 0
    GENERAL_ERROR = 1
    INSUFFICIENT_DATA = 2
    GPU_ERROR = 3
    MODEL_NOT_FOUND = 4
    CANCELLED = 130


# Machine-readable error codes stored on failed runs, and the exit code each maps to.
ERROR_EXIT_CODES = {
    "GENERAL": ExitCode.GENERAL_ERROR,
    "INSUFFICIENT_DATA": ExitCode.INSUFFICIENT_DATA,
    "OOM": ExitCode.GPU_ERROR,
    "GPU": ExitCode.GPU_ERROR,
    "MODEL_NOT_FOUND": ExitCode.MODEL_NOT_FOUND,
    "BACKEND_UNAVAILABLE": ExitCode.GENERAL_ERROR,
    "CANCELLED": ExitCode.CANCELLED,
    "HUNG": ExitCode.GENERAL_ERROR,
    "WORKER_LOST": ExitCode.GENERAL_ERROR,
}
