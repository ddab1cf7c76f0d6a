"""FINETUNE_NPROC > 1: torchrun with two CPU ranks on gloo; each event reaches the run once,
only rank 0 writes the adapter, and cancel stops every rank."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from shared.errors import BackendUnavailableError, CancelledError, PipelineError
from shared.events import ProgressEvent
from shared.settings import Settings
from tests.processes import environ, pids_matching, wait_gone
from tests.worker.conftest import tiny_job
from tests.worker.supervisor import start_wedged
from worker.training import distributed
from worker.training.distributed import (
    RankOutput,
    _failure,
    job_from_dict,
    job_to_dict,
    run_distributed,
    torchrun_command,
)
from worker.training.job import TrainJob

pytestmark = pytest.mark.timeout(300)


def _job(
    settings: Settings, tiny_model: Path, export_dir: Path, events: list, **overrides
) -> TrainJob:  # noqa: ANN003
    return tiny_job(settings, tiny_model, export_dir, events, "run_ddp001", **overrides)


def test_job_round_trips_through_json(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    job = _job(settings, tiny_model, export_dir, [])
    again = job_from_dict(json.loads(json.dumps(job_to_dict(job))), job.emitter)
    assert job_to_dict(again) == job_to_dict(job)


def test_two_ranks_on_gloo_train_once_and_rank_zero_writes(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, maxSteps=4, evalSteps=2, saveSteps=2)
    result = run_distributed(job, nproc=2)

    assert result.metrics["world_size"] == 2 and result.metrics["total_steps"] == 4
    types = [e.type for e in events]
    assert types.count("training_start") == 1
    steps = [e.step for e in events if e.type == "progress"]
    assert steps == [1, 2, 3, 4]  # not [1, 1, 2, 2, ...]: ranks > 0 publish nothing
    assert [e.step for e in events if e.type == "eval"] == [2, 4]
    assert types.count("checkpoint") == 2 and "error" not in types
    assert all(e.run_id == "run_ddp001" for e in events)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, job.adapter_dir)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    checkpoints = sorted(p.name for p in job.checkpoint_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]  # written once, by rank 0


def test_cancel_stops_every_rank(settings: Settings, tiny_model: Path, export_dir: Path) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, maxSteps=500, evalSteps=1000)
    job.should_cancel = lambda: any(e.type == "progress" for e in events)
    with pytest.raises(CancelledError):
        run_distributed(job, nproc=2)
    assert not (job.adapter_dir / "adapter_model.safetensors").exists()


def test_only_trl_runs_distributed(settings: Settings, tiny_model: Path, export_dir: Path) -> None:
    job = _job(settings, tiny_model, export_dir, [], backend="axolotl")
    with pytest.raises(BackendUnavailableError, match="FINETUNE_NPROC=2 runs the trl backend"):
        run_distributed(job, nproc=2)


def test_the_ranks_meet_on_loopback_not_the_hostname(tmp_path: Path) -> None:
    # A hostname the sandbox cannot resolve made the ranks hang (or exit 1) on the rendezvous.
    command = torchrun_command(2, tmp_path / "job.json", tmp_path / "result.json")
    assert "--local-addr=127.0.0.1" in command and "--standalone" in command


def test_a_rank_that_raises_names_the_exception_in_the_failure(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    job = _job(settings, tiny_model, export_dir, [])
    job.train_path.write_text("this is not JSON lines\n")
    with pytest.raises(PipelineError) as failure:
        run_distributed(job, nproc=2)
    assert failure.value.code == "GENERAL"
    # the exception of the first rank that failed (both do here), by type and message
    assert re.match(r"(rank 1: )?\w+Error: ", failure.value.message), failure.value.message


def test_a_rank_killed_by_a_signal_is_named_as_the_cause(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, maxSteps=500, evalSteps=1000)
    killed: list[int] = []

    def kill_rank_zero_once_training() -> bool:
        if not killed and any(e.type == "progress" for e in events):
            killed.append(_rank_pids()[0])
            os.kill(killed[0], signal.SIGKILL)  # as the kernel's OOM killer would: no error event
        return False

    job.should_cancel = kill_rank_zero_once_training
    with pytest.raises(PipelineError) as failure:
        run_distributed(job, nproc=2)
    # the cause, not rank 1's echo of it (a connection reset by its dead peer)
    assert failure.value.message.startswith("rank 0 of the distributed run was killed by SIGKILL")
    assert "OOM killer" in failure.value.message and "batch_size" in failure.value.suggestion


def test_the_ranks_stop_when_their_supervising_worker_is_killed(
    settings: Settings, tiny_model: Path, export_dir: Path, tmp_path: Path
) -> None:
    # The watchdog SIGKILLs a hung task's process; torchrun's group must not hang on orphaned.
    job = _job(settings, tiny_model, export_dir, [], maxSteps=500, evalSteps=1000)
    # wedged at step 1, silent from then on: no broken pipe will stop the ranks
    supervisor = start_wedged(job, tmp_path, hang_at_step=1, nproc=2, until="training_start")
    try:
        time.sleep(2)  # step 1 (a tiny model) ends: the ranks hang silently from here on
        ranks = list(_rank_pids().values())
        assert len(ranks) == 2
        supervisor.kill()
        supervisor.wait()
        assert wait_gone(ranks, 45), "ranks outlived their killed supervisor"
    finally:
        supervisor.kill()
        for pid in _rank_pids().values():
            os.kill(pid, signal.SIGKILL)


def _rank_pids() -> dict[int, int]:
    """{rank: pid} of the running ranks (torchrun's agent has no LOCAL_RANK)."""
    ranks = {}
    for pid in pids_matching("worker.training.distributed"):
        for entry in environ(pid):
            if entry.startswith(b"LOCAL_RANK="):
                ranks[int(entry.split(b"=")[1])] = pid
    return ranks


TORCHRUN_SUMMARY = """worker.training.distributed FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_00:20:01
  host      : vm
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 41) (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 41
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_00:20:00
  host      : vm
  rank      : 0 (local_rank: 0)
  exitcode  : -11 (pid: 40) (SIGSEGV)
  error_file: <N/A>
  traceback : Signal 11 (SIGSEGV) received by PID 40"""


def test_the_root_cause_signal_is_read_from_torchruns_summary() -> None:
    output = RankOutput()
    output.errors.append({"type": "error", "code": "GENERAL", "message": "rank 1: RuntimeError"})
    output.tail.extend(TORCHRUN_SUMMARY.splitlines())
    output.tail.appendleft("terminate called after throwing an instance of 'gloo::IoException'")
    failure = _failure(1, output)
    assert failure.message.startswith("rank 0 of the distributed run was killed by SIGSEGV; ")
    assert "gloo::IoException" in failure.message  # the native library's own words
    output.tail.clear()  # no summary: the first rank's own error
    assert _failure(1, output).message == "rank 1: RuntimeError"


def test_a_rank_that_dies_after_the_result_is_written_does_not_fail_the_run(
    settings: Settings,
    tiny_model: Path,
    export_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Rank 0 writes the result after every rank's last step: a teardown abort comes later.
    result = {"backend": "trl", "metrics": {"world_size": 2}, "hyperparameters": {}}
    teardown_abort = (
        "import json, os, sys; "
        f"open(sys.argv[2], 'w').write(json.dumps({result!r})); "
        "print('terminate called after throwing gloo::IoException', flush=True); os.abort()"
    )

    def torchrun(nproc: int, job_file: Path, result_file: Path) -> list[str]:
        return [sys.executable, "-c", teardown_abort, str(job_file), str(result_file)]

    monkeypatch.setattr(distributed, "torchrun_command", torchrun)
    job = _job(settings, tiny_model, export_dir, [], backend="auto")
    with caplog.at_level("WARNING", logger=distributed.__name__):
        assert run_distributed(job, nproc=2).metrics == {"world_size": 2}
    assert "gloo::IoException" in caplog.text  # logged, not lost
    # the ranks get the backend resolved for several processes, not `auto` to resolve alone
    sent = json.loads((job.checkpoint_dir.parent / "distributed-job.json").read_text())
    assert sent["config"]["backend"] == "trl"


def test_a_rank_that_dies_before_the_result_is_written_fails_the_run(
    settings: Settings, tiny_model: Path, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def torchrun(nproc: int, job_file: Path, result_file: Path) -> list[str]:
        return [sys.executable, "-c", "print('half way', flush=True); raise SystemExit(3)"]

    monkeypatch.setattr(distributed, "torchrun_command", torchrun)
    with pytest.raises(PipelineError) as failure:
        run_distributed(_job(settings, tiny_model, export_dir, []), nproc=2)
    assert "exited with code 3 before finishing" in failure.value.message
    assert failure.value.message.endswith("half way")
