"""The API's bodies as pydantic models: what each route answers, and its query parameters.

snake_case attributes, camelCase on the wire (the seed's TypeScript types) through the aliases.
The OpenAPI document (app/openapi.py) is generated from these models, so what is documented
is what the routes validate and send. Runs and progress points are built through their
models (`RunOut.from_run`, `ProgressPoint`); the other bodies are checked against the
document by tests/app/test_responses_documented.py with `additionalProperties: false`, so a
field a route sends without documenting it fails there.

The run config is shared/run_config.py's FineTuneConfig; manifest metrics are
shared/manifest.py's ManifestMetrics.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.manifest import ManifestMetrics
from shared.names import RunStatus, Trigger
from shared.run_config import FineTuneConfig

MAX_PAGE = 200
MAX_SQL_INT = 2**63 - 1  # larger numbers overflow the database's integer type
MAX_EVENTS_PAGE = 5000

Json = dict[str, Any]


class Body(BaseModel):
    """A JSON body of this API: camelCase keys, no key that is not declared here."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, extra="forbid"
    )


# --- errors ---------------------------------------------------------------------------------
class ErrorOut(Body):
    """Every 4xx answer: `error` says what is wrong and what to do."""

    error: str = Field(description="What is wrong, and what to do")
    fields: dict[str, str] | None = Field(None, description="400: field -> why it is refused")
    code: str | None = Field(None, description="Adapter errors: the machine-readable code")
    hint: str | None = Field(None, description="401: how to authenticate")
    active_run_id: str | None = Field(None, description="409 on start: the run in progress")
    current: int | None = Field(None, description="422: qualifying traces now")
    required: int | None = Field(None, description="422: qualifying traces needed")


# --- runs -----------------------------------------------------------------------------------
class StartBody(Body):
    config: FineTuneConfig | None = Field(None, description="Overrides of the default config")


class StartOut(Body):
    run_id: str
    status: RunStatus
    progress_url: str


class RunOut(Body):
    """One run, as the seed's FineTuneRun type (plus what this service records)."""

    id: str
    status: RunStatus
    triggered_by: Trigger
    base_model: str
    backend: str | None = Field(description="The backend that trains it (after `auto`)")
    started_at: str | None
    completed_at: str | None
    traces_used: int | None
    train_examples: int | None
    val_examples: int | None
    train_pairs: int | None = Field(description="Preference pairs exported for training (DPO)")
    val_pairs: int | None = Field(description="Preference pairs held out (preference accuracy)")
    parent_adapter: str | None = Field(
        None, description="The adapter this run continues training (initFrom active)"
    )
    lora_path: str | None
    config: Json = Field(description="The run's FineTuneConfig, as stored when it started")
    metrics: Json | None = Field(description="Seed §5.1 metrics (snake_case) once trained")
    promotion: Json | None = Field(
        description="The promotion gate's decision, each criterion with its numbers"
    )
    error_message: str | None
    error_code: str | None
    cancel_requested: bool
    log_path: str | None
    export_dir: str | None
    progress_url: str


class RunDetail(RunOut):
    latest_event: Json | None = Field(description="The run's latest event (seed §5.1)")


class RunPage(Body):
    runs: list[RunOut]
    total: int
    limit: int
    offset: int


class RunListQuery(Body):
    limit: int = Field(20, ge=1, le=MAX_PAGE, description="Runs per page")
    offset: int = Field(0, ge=0, le=MAX_SQL_INT, description="Runs skipped, newest first")
    status: RunStatus | None = Field(None, description="Only runs in this status")


class ProgressPoint(Body):
    """One stored progress or eval event (finetune_progress)."""

    id: int
    type: str
    step: int
    total_steps: int | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    eta_seconds: int | None
    stage: str | None = Field(description="sft or dpo (null: recorded before stages existed)")
    rewards_margins: float | None = Field(description="DPO: chosen minus rejected reward")
    rewards_accuracies: float | None = Field(description="DPO: share of pairs ranked right")
    logps_chosen: float | None
    logps_rejected: float | None
    timestamp: str | None


class EventsPage(Body):
    events: list[ProgressPoint]
    next: int = Field(description="Pass as `after` for the next page")


class EventsQuery(Body):
    after: int = Field(0, ge=0, le=MAX_SQL_INT, description="Events after this id")
    limit: int = Field(1000, ge=1, description=f"Events per page (at most {MAX_EVENTS_PAGE})")


class WebsocketQuery(Body):
    after: int | None = Field(None, description="Replay events after this seq")


class ScheduleOut(Body):
    enabled: bool
    schedule: str
    next_fire_time: str | None
    min_traces: int
    min_quality: float
    last_decision: Json | None


class FeedsOut(Body):
    listening: bool
    runs: int
    clients: int
    relayed: int
    dropped_clients: int
    reconnects: int
    fanout_seconds: float
    fanout_max_ms: float


# --- adapters -------------------------------------------------------------------------------
class AdapterOut(Body):
    """A published adapter: its manifest.json (seed §6.1) with its place in the registry."""

    id: str
    created_at: str | None = None
    base_model: str | None = None
    backend: str | None = None
    traces_used: int | None = None
    train_examples: int | None = None
    val_examples: int | None = None
    objective: str | None = Field(None, description="sft, dpo or sft+dpo (null: before DPO)")
    train_pairs: int | None = None
    val_pairs: int | None = None
    parent_adapter: str | None = Field(None, description="The adapter it continued (warm start)")
    is_active: bool
    tags: list[str] = []
    size_bytes: int | None = None
    sha256: str | None = None
    config: Json | None = Field(None, description="The training part of the run config")
    metrics: ManifestMetrics | None = None
    promotion: Json | None = None
    provenance: Json | None = None
    exports: Json | None = Field(None, description="Derived files (GGUF) and their sha256")
    path: str
    error: str | None = Field(None, description="Set when manifest.json cannot be read")


class LineageEntry(Body):
    id: str
    created_at: str | None
    missing: bool = Field(description="Deleted since: the chain ends here")


class AdapterDetail(AdapterOut):
    samples: list[Json] = Field(
        description="Held-out answers of base, adapter and the adapter active then"
    )
    lineage: list[LineageEntry] = Field(
        description="The adapters it continued (warm start), parent first"
    )


class AdapterPage(Body):
    adapters: list[AdapterOut]
    active_id: str | None
    total: int


class ActiveState(Body):
    """active.json: which adapter the Proposer uses, and how it came to be."""

    adapter_id: str | None
    activated_at: str | None
    path: str | None = None
    base_model: str | None = None
    sha256: str | None = None
    history: list[Json]
    export_task_id: str | None = Field(None, description="OLLAMA_EXPORT: the queued export")


class ActiveDetail(ActiveState):
    adapter: AdapterOut | None


class ReasonBody(Body):
    reason: str = Field("", max_length=500, description="Why, for the history")


class TagsBody(Body):
    tags: list[str]


class ExportOut(Body):
    adapter_id: str
    task_id: str


# --- health ---------------------------------------------------------------------------------
class HealthOut(Body):
    status: Literal["ok", "degraded"]
    checks: dict[str, str]
