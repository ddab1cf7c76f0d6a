"""Test helpers, as a plain module: fixtures live in the conftest files and use these, and
tests import them from here (never from a conftest, which pytest loads by itself).

tests/conftest.py imports this module, and the backend suite runs it in Axolotl's environment,
which has only shared/'s lowest layer (settings): database imports stay inside the functions."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]

if TYPE_CHECKING:
    from shared.runs import FineTuneManager


def make_settings(root: Path, **overrides: object) -> Settings:
    """Settings with every path and database under `root` (and a low trace minimum)."""
    base = Settings(
        database_url=f"sqlite:///{root / 'runs.db'}",
        traces_db_path=root / "traces.db",
        lora_output_dir=root / "lora-adapters",
        temp_dir=root / "finetune_temp",
        log_dir=root / "finetune_logs",
        model_cache_dir=root / "models",
        min_traces=10,
        # a short forgetting probe: a tiny model's answers, generated once per test's cache
        probe_prompts=8,
        probe_max_new_tokens=16,
    )
    return base.replace(**overrides)


def drain(app, queue: str) -> list:  # type: ignore[no-untyped-def]
    """Every message waiting on `queue` of the (process-global) memory broker, acknowledged."""
    messages = []
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        try:
            while simple.qsize():
                message = simple.get(block=False)
                message.ack()
                messages.append(message)
        finally:
            simple.close()
    return messages


def memory_celery(settings: Settings):  # type: ignore[no-untyped-def]
    """The project's Celery app on the in-memory broker (fast unit tests, no worker)."""
    from shared.queue import make_celery

    app = make_celery(settings)
    app.conf.update(broker_url="memory://", result_backend="cache+memory://")
    return app


def insert_run(manager: FineTuneManager, status: str, **values: Any) -> str:
    from shared.models import FineTuneRun
    from shared.runs import new_run_id

    run_id = new_run_id()
    with manager.db.session() as session:
        session.add(FineTuneRun(id=run_id, status=status, base_model="m", config="{}", **values))
    return run_id


def next_message(pubsub: Any, timeout: float = 2.0) -> dict | None:
    """The next published message (redis-py answers None for an ignored subscribe reply)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    return None


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`tmde-finetune ARGS` in a child process (as the console script runs it), from the repo."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pipeline_run(rt: Any, config: dict, run_id: str = "run_abc123", **columns: Any) -> str:
    """A running-to-be run row for the pipeline steps (as FineTuneManager.start records it)."""
    from shared.models import FineTuneRun

    with rt.db.session() as session:
        session.add(
            FineTuneRun(
                id=run_id,
                base_model=config["baseModel"],
                config=json.dumps(config),
                active_slot=1,
                log_path=str(rt.settings.log_dir / f"{run_id}.log"),
                **columns,
            )
        )
    return run_id
