"""Follow a run from a terminal through the API's SSE feed (`tmde-finetune follow`, the demo).

Why through the API and not Redis: the terminal may be anywhere the API is reachable, and
the API's feed already gives a gapless, resumable stream (event ids = `seq`). A dropped
connection is resumed with `Last-Event-ID` a bounded number of times.

The exit code is the run's outcome (seed §5.3): 0 completed, 130 cancelled, and for a failed
run the code mapped from its `errorCode` (shared/names.py EXIT_CODES).
Standard library only: the CLI must not need more than the API client side.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from shared.names import ErrorCode, ExitCode, exit_code_for

TERMINAL_TYPES = ("complete", "error", "cancelled")
BAR_WIDTH = 30
MAX_RECONNECTS = 5


class FollowError(RuntimeError):
    """The feed could not be followed (unknown run, API unreachable after retries)."""


def format_eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds < 0:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def render(event: dict[str, Any]) -> str | None:
    """One human line for an event (None for heartbeats and unknown types)."""
    kind = event.get("type")
    if kind == "export_complete":
        pairs = ""
        if event.get("train_pairs") is not None:
            pairs = f", {event['train_pairs']} / {event.get('val_pairs')} preference pairs"
        return (
            f"exported {event.get('train_count')} train / {event.get('val_count')} val "
            f"examples{pairs}"
        )
    if kind == "training_start":
        stage = f" ({event['stage']} stage)" if event.get("stage") else ""
        return f"training started{stage}: {event.get('total_steps')} steps"
    if kind == "progress":
        total, step = event.get("total_steps") or 0, event.get("step") or 0
        filled = min(int(BAR_WIDTH * step / total), BAR_WIDTH) if total else 0
        loss = event.get("loss")
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {_stage(event)}step {step}/{total} "
            f"loss {loss if loss is None else format(loss, '.4f')}{_margin(event)} "
            f"lr {event.get('learning_rate') or 0:.2e} eta {format_eta(event.get('eta_seconds'))}"
        )
    if kind == "eval":
        eval_loss = event.get("eval_loss")
        shown = "?" if eval_loss is None else f"{eval_loss:.4f}"
        return (
            f"  {_stage(event)}eval at step {event.get('step')}: eval_loss {shown}{_margin(event)}"
        )
    if kind == "checkpoint":
        return f"  checkpoint saved at step {event.get('step')}"
    if kind in TERMINAL_TYPES:
        detail = event.get("message") or event.get("adapter_path") or ""
        code = f" [{event['code']}]" if event.get("code") else ""
        return f"{kind}{code}: {detail}"
    return None


class ProgressView:
    """Shows events: on a terminal the progress bar is redrawn in place, elsewhere (a log, a
    pipe) every event is one line, so the output stays readable in both."""

    def __init__(self, out: TextIO, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self._bar_open = False

    def show(self, event: dict[str, Any]) -> None:
        line = render(event)
        if line is None:
            return
        if self.tty and event.get("type") == "progress":
            self.out.write("\r" + line + "\x1b[K")
            self._bar_open = True
        else:
            self._end_bar()
            self.out.write(line + "\n")
        self.out.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.out.write("\n")
            self._bar_open = False

    def close(self) -> None:
        self._end_bar()
        self.out.flush()


def iter_sse(lines: Iterable[bytes]) -> Iterator[tuple[str | None, str]]:
    """(id, data) for each SSE event in a byte-line stream; comments and retry are skipped."""
    event_id: str | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event_id, "\n".join(data)
            event_id, data = None, []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


def auth_headers() -> dict[str, str]:
    """The bearer header when API_TOKEN is set in this environment (as on the server)."""
    token = os.environ.get("API_TOKEN", "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def stream_events(
    base_url: str,
    run_id: str,
    *,
    timeout: float = 60.0,
    max_reconnects: int = MAX_RECONNECTS,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """The run's events until its terminal one, resuming with Last-Event-ID after a drop.

    `timeout` bounds each read; the API sends a heartbeat every 15 s, so silence longer than
    that means the connection is gone.
    """
    url = f"{base_url.rstrip('/')}/api/finetune/{run_id}/progress"
    last_id: str | None = None
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream", **auth_headers()}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            ) as response:
                if response.status == 204:  # nothing more will come
                    return
                for event_id, data in iter_sse(response):
                    failures = 0
                    if event_id is not None:
                        last_id = event_id
                    event = json.loads(data)
                    yield event
                    if event.get("type") in TERMINAL_TYPES:
                        return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise FollowError(f"Run not found: {run_id} (at {base_url})") from exc
            if exc.code == 401:
                raise FollowError(
                    f"{base_url} refused the token (HTTP 401): set API_TOKEN to the API's token"
                ) from exc
            failure: Exception = exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failure = exc
        else:
            failure = ConnectionError("the feed ended before the run did")
        failures += 1
        if failures > max_reconnects:
            raise FollowError(f"cannot follow {run_id} at {base_url}: {failure}")
        sleep(min(0.25 * 2**failures, 5.0))


def get_run(base_url: str, run_id: str, timeout: float = 10.0) -> dict[str, Any] | None:
    try:
        request = urllib.request.Request(
            f"{base_url.rstrip('/')}/api/finetune/{run_id}", headers=auth_headers()
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def exit_code(terminal: dict[str, Any] | None, run: dict[str, Any] | None) -> ExitCode:
    """Seed §5.3 code of the outcome; the run row's errorCode wins over the event's code."""
    kind = terminal.get("type") if terminal else None
    status = (run or {}).get("status")
    if kind == "complete" or (kind is None and status == "completed"):
        return ExitCode.SUCCESS
    if kind == "cancelled" or (kind is None and status == "cancelled"):
        return ExitCode.CANCELLED
    code = (run or {}).get("errorCode") or (terminal or {}).get("code") or ErrorCode.GENERAL
    return exit_code_for(code)


def _stage(event: dict[str, Any]) -> str:
    """The DPO stage is named on its lines; SFT (and runs before stages) are left plain."""
    return "dpo " if event.get("stage") == "dpo" else ""


def _margin(event: dict[str, Any]) -> str:
    margin = event.get("rewards_margins")
    return "" if margin is None else f" margin {margin:.3f}"


def preference_line(metrics: dict[str, Any]) -> str | None:
    """`preference accuracy base -> adapter` on the held-out pairs, when there were any."""
    if metrics.get("adapter_preference_accuracy") is None:
        return None
    reference = metrics.get("reference_preference_accuracy")
    active = "" if reference is None else f" (active adapter {reference})"
    return (
        f"preference accuracy {metrics.get('base_preference_accuracy')} (base) -> "
        f"{metrics['adapter_preference_accuracy']}{active} on "
        f"{metrics.get('preference_pairs_evaluated')} held-out pairs"
    )


def summary(run: dict[str, Any]) -> str:
    if run.get("status") == "completed":
        metrics = run.get("metrics") or {}
        preference = preference_line(metrics)
        return (
            f"run {run['id']} completed: adapter {run.get('loraPath')}; val loss "
            f"{metrics.get('base_val_loss')} (base) -> {metrics.get('adapter_val_loss')}"
            + (f"; {preference}" if preference else "")
        )
    if run.get("status") == "failed":
        return f"run {run['id']} failed [{run.get('errorCode')}]: {run.get('errorMessage')}"
    return f"run {run['id']} {run.get('status')}"


def follow(
    base_url: str,
    run_id: str,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    timeout: float = 60.0,
    tty: bool | None = None,
) -> ExitCode:
    """Show the run's progress until it ends; return its exit code. Ctrl-C only detaches."""
    out, err = out or sys.stdout, err or sys.stderr
    view = ProgressView(out, tty=tty)
    terminal: dict[str, Any] | None = None
    try:
        for event in stream_events(base_url, run_id, timeout=timeout):
            view.show(event)
            if event.get("type") in TERMINAL_TYPES:
                terminal = event
    except FollowError as exc:
        view.close()
        print(f"ERROR: {exc}", file=err)
        return ExitCode.GENERAL_ERROR
    except KeyboardInterrupt:
        view.close()
        print(f"stopped following; {run_id} goes on (cancel: POST .../cancel)", file=err)
        return ExitCode.CANCELLED
    view.close()
    run = get_run(base_url, run_id)
    if run is not None:
        print(summary(run), file=out)
    return exit_code(terminal, run)
