"""LOG_FORMAT=json: one JSON object per line, with the run id inside run_context."""

from __future__ import annotations

import io
import json
import logging

from shared.logs import JsonFormatter, RunIdFilter, formatter, run_context


def _logger(fmt: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler.addFilter(RunIdFilter())
    logger = logging.getLogger(f"tmde.test.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_json_lines_carry_the_run_id() -> None:
    logger, stream = _logger(JsonFormatter())
    logger.info("outside")
    with run_context("run_ab12cd"):
        logger.warning("inside %d", 42)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["run_id"] for line in lines] == ["-", "run_ab12cd", "run_ab12cd"]
    assert lines[1]["message"] == "inside 42" and lines[1]["level"] == "WARNING"
    assert lines[1]["ts"].endswith("Z") and "ValueError: boom" in lines[2]["exception"]


def test_text_format_shows_the_run_id() -> None:
    logger, stream = _logger(formatter("text"))
    with run_context("run_ffffff"):
        logger.info("hello")
    assert "[run_ffffff]: hello" in stream.getvalue()
