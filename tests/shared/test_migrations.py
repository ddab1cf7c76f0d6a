"""Alembic migrations on SQLite and PostgreSQL: round trip, schema, constraints, WAL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shared import migrate
from shared.db import Database, make_engine, normalise_url

RUN_COLUMNS = {
    # seed §3.1
    "id",
    "started_at",
    "completed_at",
    "status",
    "triggered_by",
    "base_model",
    "traces_used",
    "train_examples",
    "val_examples",
    "lora_path",
    "config",
    "metrics",
    "error_message",
    "log_path",
    "export_dir",
    # added by this service
    "active_slot",
    "backend",
    "error_code",
    "cancel_requested",
    "task_ids",
    "updated_at",
    # 0002: liveness
    "heartbeat_at",
    "phase",
    "attempts",
    "current_task_id",
    # 0003: promotion gate
    "promotion",
    # 0004: preference training
    "train_pairs",
    "val_pairs",
    # 0005: warm start
    "parent_adapter",
}
PROGRESS_COLUMNS = {
    "id",
    "run_id",
    "timestamp",
    "step",
    "total_steps",
    "loss",
    "eval_loss",
    "learning_rate",
    "eta_seconds",
    "event_type",
    # 0004: preference training
    "stage",
    "rewards_margins",
    "rewards_accuracies",
    "logps_chosen",
    "logps_rejected",
}


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _insert_run(connection: sa.Connection, run_id: str, **values: object) -> None:
    row = {"id": run_id, "base_model": "m", "config": "{}", **values}
    columns = ", ".join(row)
    params = ", ".join(f":{k}" for k in row)
    connection.execute(sa.text(f"INSERT INTO finetune_runs ({columns}) VALUES ({params})"), row)


def test_upgrade_downgrade_round_trip(database_url: str, engine: sa.Engine) -> None:
    assert migrate.current_revision(database_url) is None
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == migrate.head_revision() == "0005"
    assert {"finetune_runs", "finetune_progress", "alembic_version"} <= _tables(engine)

    migrate.downgrade(database_url)
    assert migrate.current_revision(database_url) is None
    assert _tables(engine) & {"finetune_runs", "finetune_progress"} == set()

    migrate.upgrade(database_url)  # and up again, cleanly
    assert migrate.current_revision(database_url) == "0005"
    assert {"finetune_runs", "finetune_progress"} <= _tables(engine)


def test_upgrade_is_idempotent(database_url: str) -> None:
    migrate.upgrade(database_url)
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == "0005"


def test_columns_and_indexes(migrated_url: str, engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    assert {c["name"] for c in inspector.get_columns("finetune_runs")} == RUN_COLUMNS
    assert {c["name"] for c in inspector.get_columns("finetune_progress")} == PROGRESS_COLUMNS
    nullable = {c["name"]: c["nullable"] for c in inspector.get_columns("finetune_runs")}
    for column in ("status", "triggered_by", "base_model", "config", "cancel_requested"):
        assert nullable[column] is False, column
    assert inspector.get_pk_constraint("finetune_runs")["constrained_columns"] == ["id"]

    run_indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("finetune_runs")}
    assert run_indexes["idx_finetune_status"] == ["status"]
    assert run_indexes["idx_finetune_started"] == ["started_at"]
    progress_indexes = {
        i["name"]: i["column_names"] for i in inspector.get_indexes("finetune_progress")
    }
    assert progress_indexes["idx_progress_run"] == ["run_id"]

    (fk,) = inspector.get_foreign_keys("finetune_progress")
    assert fk["referred_table"] == "finetune_runs"
    assert fk["constrained_columns"] == ["run_id"] and fk["referred_columns"] == ["id"]

    uniques = [u["column_names"] for u in inspector.get_unique_constraints("finetune_runs")]
    unique_indexes = [
        i["column_names"] for i in inspector.get_indexes("finetune_runs") if i["unique"]
    ]
    assert ["active_slot"] in uniques + unique_indexes


def test_check_constraints_exist(migrated_url: str, engine: sa.Engine) -> None:
    checks = {
        c["name"]: c["sqltext"] for c in sa.inspect(engine).get_check_constraints("finetune_runs")
    }
    assert set(checks) >= {"ck_finetune_runs_status", "ck_finetune_runs_triggered_by"}
    for status in ("pending", "running", "completed", "failed", "cancelled"):
        assert f"'{status}'" in checks["ck_finetune_runs_status"]
    for trigger in ("manual", "scheduled", "api"):
        assert f"'{trigger}'" in checks["ck_finetune_runs_triggered_by"]


@pytest.mark.parametrize(
    ("column", "value"), [("status", "paused"), ("status", "PENDING"), ("triggered_by", "cron")]
)
def test_check_constraint_rejects_bad_values(
    migrated_url: str, engine: sa.Engine, column: str, value: str
) -> None:
    with pytest.raises(IntegrityError), engine.begin() as connection:
        _insert_run(connection, "run_bad", **{column: value})
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM finetune_runs")).scalar() == 0


def test_server_defaults(migrated_url: str, engine: sa.Engine) -> None:
    with engine.begin() as connection:
        _insert_run(connection, "run_1")
        row = connection.execute(sa.text("SELECT * FROM finetune_runs")).mappings().one()
    assert row["status"] == "pending"
    assert row["triggered_by"] == "manual"
    assert row["traces_used"] == row["train_examples"] == row["val_examples"] == 0
    assert row["started_at"] is not None
    assert not row["cancel_requested"]
    assert row["active_slot"] is None


def test_progress_rows_need_an_existing_run(migrated_url: str) -> None:
    db = Database(migrated_url)
    try:
        with pytest.raises(IntegrityError), db.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO finetune_progress (run_id, step, total_steps)"
                    " VALUES ('run_missing', 1, 2)"
                )
            )
    finally:
        db.dispose()


def test_sqlite_uses_wal(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "runs.db"
    migrate.upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()
    # WAL is a property of the file: a plain connection sees it too
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_folder_is_created(tmp_path) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'runs.db'}"
    migrate.upgrade(url)
    assert (tmp_path / "a" / "b" / "runs.db").exists()
    assert migrate.current_revision(url) == "0005"


def test_normalise_url() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


def test_session_rolls_back_on_error(migrated_url: str) -> None:
    db = Database(migrated_url)
    try:
        with pytest.raises(RuntimeError), db.session() as session:
            session.execute(
                sa.text(
                    "INSERT INTO finetune_runs (id, base_model, config) VALUES ('r', 'm', '{}')"
                )
            )
            raise RuntimeError("boom")
        with db.session() as session:
            assert session.execute(sa.text("SELECT COUNT(*) FROM finetune_runs")).scalar() == 0
    finally:
        db.dispose()
