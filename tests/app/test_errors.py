"""app/errors.py: one table from exceptions to HTTP answers, every body an ErrorOut."""

from __future__ import annotations

import pytest

from app.apidoc import QueryError
from app.errors import ERROR_STATUS, answer
from shared.errors import InsufficientDataError
from shared.registry import (
    AdapterConflictError,
    AdapterError,
    AdapterIntegrityError,
    AdapterNotFoundError,
)
from shared.run_config import ConfigError
from shared.runs import RunConflictError, RunInProgressError, RunNotFoundError
from shared.schemas import ErrorOut

EXAMPLES = [
    (ConfigError({"loraRank": "must be an integer between 1 and 1024"}), 400),
    (QueryError({"limit": "must be an integer between 1 and 200"}), 400),
    (RunNotFoundError("run_0123456789ab"), 404),
    (RunConflictError("Run run_0123456789ab is already cancelled", "run_0123456789ab"), 409),
    (RunInProgressError("A fine-tune run is already in progress", "run_0123456789ab"), 409),
    (InsufficientDataError("Insufficient traces", current=3, required=50), 422),
    (AdapterError("bad body"), 400),
    (AdapterNotFoundError("Adapter not found: run_x"), 404),
    (AdapterConflictError("active"), 409),
    (AdapterIntegrityError("tampered"), 409),
]


@pytest.mark.parametrize(("exc", "status"), EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_exception_answers_its_status_with_an_error_body(exc: Exception, status: int) -> None:
    got, body = answer(exc)
    assert got == status
    ErrorOut.model_validate(body)  # the documented error body, nothing else
    assert body["error"]


def test_the_examples_cover_the_table() -> None:
    covered = {type(exc) for exc, _ in EXAMPLES}
    assert set(ERROR_STATUS) == covered


def test_only_the_single_flight_conflict_names_the_active_run() -> None:
    assert answer(RunInProgressError("busy", "run_0123456789ab"))[1]["activeRunId"]
    assert "activeRunId" not in answer(RunConflictError("already cancelled", "run_1"))[1]


def test_an_exception_outside_the_table_is_not_answered_here() -> None:
    with pytest.raises(LookupError):
        answer(KeyError("x"))
