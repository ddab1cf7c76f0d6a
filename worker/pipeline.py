"""The three steps of a run: export -> train -> evaluate (and publish). Celery tasks call these.

Each step reads the run from the database, does nothing unless the run is still active, and
records its outcome there. An expected failure (PipelineError) fails the run with its code and
message and emits an `error` event; a cancel discards the work folder and emits `cancelled`.
Later steps of a failed or cancelled run see its status and return at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.errors import CancelledError, HandedOverError, OutOfMemoryError, PipelineError
from shared.events import Emitter
from shared.fsutil import write_json_atomic
from shared.logs import run_context
from shared.models import FineTuneRun, utcnow
from shared.names import (
    PHASE_EVALUATING,
    PHASE_EXPORTING,
    PHASE_QUEUED,
    PHASE_TRAINING,
    STATUS_CANCELLED,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    ErrorCode,
)
from shared.registry import SAMPLES_FILE
from shared.runs import RunNotFoundError
from shared.traces import TraceStore
from worker.parent import parent_dir, parent_keys, trained_sets
from worker.runtime import Runtime, runtime
from worker.training.artifacts import RunPaths

log = logging.getLogger(__name__)
STEP_HANDED_OVER = "handed_over"  # train_step's status when its worker shut down mid-run


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy this process's log records into the run's log file while a step runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from shared.logs import RunIdFilter, formatter

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(formatter(runtime().settings.log_format))
    handler.addFilter(RunIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _fail(rt: Runtime, run: FineTuneRun, emitter: Emitter, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, CancelledError):
        RunPaths(rt.settings.lora_output_dir, run.id).discard()
        rt.runs.finish(run.id, STATUS_CANCELLED, error_code=exc.code, error_message=exc.message)
        emitter.emit("cancelled", status=STATUS_CANCELLED, message=exc.message)
        return {"status": STATUS_CANCELLED}
    if isinstance(exc, PipelineError):
        code, message, suggestion = exc.code, exc.message, exc.suggestion
    else:
        log.error("run %s failed unexpectedly:\n%s", run.id, traceback.format_exc())
        code, message, suggestion = ErrorCode.GENERAL, f"{type(exc).__name__}: {exc}", None
    rt.runs.finish(run.id, STATUS_FAILED, error_code=code, error_message=message)
    emitter.emit("error", code=code, message=message, suggestion=suggestion, status=STATUS_FAILED)
    return {"status": STATUS_FAILED, "code": code}


def _current_task_id() -> str | None:
    from celery import current_task

    request = getattr(current_task, "request", None)
    return getattr(request, "id", None)


def _step(
    run_id: str,
    phase: str,
    body: Callable[[Runtime, FineTuneRun, Emitter], dict[str, Any]],
    *,
    claim: bool = False,
) -> dict[str, Any]:
    """Run one step of an active run: mark its phase and heartbeat (the watchdog reads them),
    then `body`; a step that returns normally leaves the run `queued` for the next one."""
    rt = runtime()
    try:
        run = rt.runs.get(run_id)
    except RunNotFoundError:  # e.g. a message left in the broker by another deployment
        log.warning("skipping a task for unknown run %s", run_id)
        return {"status": "skipped", "reason": "unknown run"}
    if claim and not rt.runs.claim(run_id):
        return {"status": "skipped", "reason": "run is not pending"}
    run = rt.runs.get(run_id)
    if run.status != STATUS_RUNNING:
        return {"status": "skipped", "reason": f"run is {run.status}"}
    rt.runs.update(run_id, phase=phase, heartbeat_at=utcnow(), current_task_id=_current_task_id())
    log_path = Path(run.log_path or rt.settings.log_dir / f"{run_id}.log")
    emitter = rt.emitter(run_id, log_path=log_path)
    with run_context(run_id), run_log(log_path):
        try:
            if run.cancel_requested or rt.cancel_requested(run_id):
                raise CancelledError()
            result = body(rt, run, emitter)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the run
            return _fail(rt, run, emitter, exc)
    rt.runs.update(run_id, phase=PHASE_QUEUED)
    return result


def export_step(run_id: str) -> dict[str, Any]:
    def body(rt: Runtime, run: FineTuneRun, emitter: Emitter) -> dict[str, Any]:
        from worker.export import export_traces

        config = run.run_config()
        output_dir = rt.settings.temp_dir / run.id
        parent = run.parent_adapter
        result = export_traces(
            TraceStore(rt.settings.traces_db_path),
            min_quality=config.min_quality_score,
            output_dir=output_dir,
            val_split=config.val_split,
            seed=config.seed,
            max_pairs_per_prompt=config.max_pairs_per_prompt,
            parent_adapter=parent,
            parent_keys=parent_keys(rt.settings, parent) if parent else None,
            replay_ratio=rt.settings.replay_ratio,
        )
        rt.runs.update(
            run.id,
            traces_used=result.traces_used,
            train_examples=result.train_count,
            val_examples=result.val_count,
            train_pairs=result.train_pairs,
            val_pairs=result.val_pairs,
            export_dir=str(output_dir),
        )
        emitter.emit(
            "export_complete",
            train_count=result.train_count,
            val_count=result.val_count,
            train_pairs=result.train_pairs,
            val_pairs=result.val_pairs,
            path=str(output_dir),
        )
        return {"status": "exported", "train_count": result.train_count}

    return _step(run_id, PHASE_EXPORTING, body, claim=True)


def train_step(run_id: str) -> dict[str, Any]:
    def body(rt: Runtime, run: FineTuneRun, emitter: Emitter) -> dict[str, Any]:
        from worker.training.backends import require_backend, resolve_backend
        from worker.training.job import TrainJob
        from worker.training.models import resolve_model
        from worker.training.stages import require_pairs, resume_point

        config = run.run_config()
        paths = RunPaths(rt.settings.lora_output_dir, run.id)
        # A checkpoint here means a re-queued run: its worker was lost (watchdog) or stopped
        # (SIGTERM). A failed attempt never comes back, and an OOM retry discards its own.
        resume = resume_point(paths.checkpoint_dir)
        if resume is None:
            paths.discard()  # a fresh attempt starts clean
        else:
            rt.runs.forget_progress_after(run.id, resume.step)
        export_dir = Path(run.export_dir or "")
        backend = resolve_backend(config.backend, nproc=rt.settings.nproc)
        rt.runs.update(run.id, backend=backend)
        # before the model is resolved
        require_backend(backend, rt.settings.python_path, config.objective)
        job = TrainJob(
            run_id=run.id,
            config=config,
            model_path=resolve_model(config.base_model, rt.settings.model_cache_dir, backend),
            train_path=export_dir / "train.jsonl",
            val_path=export_dir / "val.jsonl",
            train_pairs_path=export_dir / "train_pairs.jsonl",
            val_pairs_path=export_dir / "val_pairs.jsonl",
            adapter_dir=paths.staging_dir,
            checkpoint_dir=paths.checkpoint_dir,
            emitter=emitter,
            should_cancel=lambda: rt.cancel_requested(run.id),
            should_stop=rt.worker_stopping,
            torch_threads=rt.settings.torch_threads,
            resume_from=resume.checkpoint if resume else None,
            python_path=rt.settings.python_path,
            init_adapter=parent_dir(rt.settings, run.parent_adapter)
            if run.parent_adapter
            else None,
        )
        if config.needs_pairs:
            require_pairs(job)  # INSUFFICIENT_DATA before a model loads
        try:
            result = _train_with_oom_retries(rt, run.id, job, emitter)
        except HandedOverError as exc:  # the task re-queues the run (worker/tasks.py)
            log.warning("run %s: %s", run.id, exc.message)
            emitter.emit("heartbeat", message=exc.message)
            return {"status": STEP_HANDED_OVER, "message": exc.message}
        from worker.training.artifacts import write_training_files

        write_training_files(paths.staging_dir, result.hyperparameters, result.metrics)
        rt.runs.update(run.id, backend=result.backend, metrics=json.dumps(result.metrics))
        return {"status": "trained", "total_steps": result.metrics["total_steps"]}

    return _step(run_id, PHASE_TRAINING, body)


def _train_with_oom_retries(rt: Runtime, run_id: str, job: Any, emitter: Emitter) -> Any:
    """Seed §9.2 plus retries: on OOM, halve the micro-batch and double the accumulation (the
    same effective batch) up to FINETUNE_OOM_RETRIES times, then fail with code OOM."""
    from worker.training.backends import run_backend

    nproc = rt.settings.nproc
    retries = 0
    while True:
        try:
            if nproc > 1:
                from worker.training.distributed import run_distributed

                result = run_distributed(job, nproc)
            else:
                result = run_backend(job)
            result.metrics["oom_retries"] = retries
            return result
        except OutOfMemoryError:
            batch = job.config.batch_size
            if retries >= rt.settings.oom_retries or batch == 1:
                raise
            retries += 1
            job.config = job.config.model_copy(
                update={"batch_size": batch // 2, "grad_accum": job.config.grad_accum * 2}
            )
            rt.runs.update(run_id, config=json.dumps(job.config.to_dict()))
            log.warning(
                "run %s: out of memory at batch %d; retrying with batch %d x accum %d",
                run_id,
                batch,
                batch // 2,
                job.config.grad_accum,
            )
            _free_accelerator_memory()
            from worker.training.stages import discard_for_retry

            discard_for_retry(job.checkpoint_dir)
            shutil.rmtree(job.adapter_dir, ignore_errors=True)
            job.resume_from = None
            emitter.emit("heartbeat", message=f"OOM at batch {batch}; retrying with {batch // 2}")


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_step(run_id: str) -> dict[str, Any]:
    def body(rt: Runtime, run: FineTuneRun, emitter: Emitter) -> dict[str, Any]:
        from shared.registry import AdapterRegistry
        from worker.evaluate import evaluate_adapter
        from worker.probe.drift import ProbeSpec
        from worker.promote import evidence, gate_and_deliver, reference_adapter
        from worker.provenance import provenance
        from worker.training.models import resolve_model

        config = run.run_config()
        settings = rt.settings
        paths = RunPaths(settings.lora_output_dir, run.id)
        export_dir = Path(run.export_dir or "")
        # the same copy training used (Unsloth's pre-quantized repository where it trained)
        model_path = resolve_model(
            config.base_model, settings.model_cache_dir, run.backend or "trl"
        )
        registry = AdapterRegistry(settings.lora_output_dir)
        active_before = registry.active_id()
        reference_id, reference_dir = reference_adapter(registry, run.base_model)
        trained, exclude, reference_known = trained_sets(settings, run, export_dir, reference_dir)
        probe = ProbeSpec(
            settings.probe_prompts, settings.probe_max_new_tokens, settings.model_cache_dir
        )
        evaluation = evaluate_adapter(
            model_path,
            paths.staging_dir,
            export_dir / "val.jsonl",
            max_len=config.max_seq_len,
            batch_size=config.batch_size,
            samples=config.eval_samples,
            torch_threads=settings.torch_threads,
            reference_adapter_dir=reference_dir,
            max_new_tokens=settings.eval_max_new_tokens,
            val_pairs_path=export_dir / "val_pairs.jsonl",
            exclude=exclude,
            probe=probe if settings.probe_prompts else None,
        )
        if rt.cancel_requested(run.id):
            raise CancelledError()
        per_example = evaluation.pop("per_example")
        trained_args = json.loads((paths.staging_dir / "training_args.json").read_text())
        source = provenance(
            export_dir=export_dir,
            model_path=model_path,
            seed=config.seed,
            training_libraries=trained_args.get("libraries"),
        )
        final, metrics = _publish(rt, run, paths, evaluation, source, trained)
        promotion = gate_and_deliver(
            settings,
            run.id,
            evidence(metrics, per_example, reference_trained_set_known=reference_known),
            reference_id=reference_id,
            active_before=active_before,
            seed=config.seed,
        )
        rt.runs.finish(
            run.id,
            STATUS_COMPLETED,
            lora_path=str(final),
            metrics=json.dumps(metrics),
            promotion=json.dumps(promotion),
        )
        emitter.emit(
            "complete",
            metrics=metrics,
            adapter_path=str(final),
            promotion=promotion,
            status=STATUS_COMPLETED,
        )
        return {"status": STATUS_COMPLETED, "adapter_path": str(final), "promotion": promotion}

    return _step(run_id, PHASE_EVALUATING, body)


def _publish(
    rt: Runtime,
    run: FineTuneRun,
    paths: RunPaths,
    evaluation: dict[str, Any],
    source: dict[str, Any],
    trained: set[bytes],
) -> tuple[Path, dict[str, Any]]:
    """Write the evaluation and what the adapter trained on into the staging folder, seal it
    and rename it into place."""
    from worker import trained_set
    from worker.training import artifacts

    samples = evaluation.pop("samples")
    metrics = {**(run.metrics_dict() or {}), **evaluation}
    metrics["final_val_loss"] = evaluation["adapter_val_loss"]
    best = [v for v in (metrics.get("best_val_loss"), metrics["final_val_loss"]) if v]
    metrics["best_val_loss"] = min(best) if best else None
    training_args = json.loads((paths.staging_dir / "training_args.json").read_text())
    artifacts.write_training_files(paths.staging_dir, training_args, metrics)
    write_json_atomic(paths.staging_dir / SAMPLES_FILE, samples)
    trained_set.write(paths.staging_dir, trained)
    manifest = artifacts.build_manifest(
        run_id=run.id,
        base_model=run.base_model,
        backend=run.backend or "trl",
        config=run.run_config(),
        metrics=metrics,
        traces_used=run.traces_used or 0,
        train_examples=run.train_examples or 0,
        val_examples=run.val_examples or 0,
        train_pairs=run.train_pairs or 0,
        val_pairs=run.val_pairs or 0,
        provenance=source,
        parent_adapter=run.parent_adapter,
    )
    final = artifacts.publish(paths.staging_dir, paths.final_dir, manifest)
    paths.discard()
    return final, metrics
