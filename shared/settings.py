"""The one settings object, read from the environment (pydantic-settings).

Every variable of seed §8.1 is honoured, plus the ones this service adds. Each field names its
variable (`validation_alias`), its default and a one-line description; the README's settings
table is generated from them (`python -m shared.settings`) and a test fails when it drifts. The
ranges are the run config's own types (shared/fields.py), so `LORA_RANK=2000` and
`{"loraRank": 2000}` are refused with the same words. A bad value stops start-up with a message
naming the variable, the value and what is allowed:

    >>> from shared.settings import Settings
    >>> Settings.from_env({"FINETUNE_MIN_TRACES": "0"})
    Traceback (most recent call last):
    ...
    shared.settings.SettingsError: FINETUNE_MIN_TRACES='0' is invalid: must be an integer >= 1

`Settings()` reads `os.environ` as any pydantic-settings class does; `Settings.from_env(mapping)`
validates an explicit environment instead (tests, child processes), with the same messages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared import fields as f

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A variable of the environment holds a value the service cannot use."""


def _env_bool(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    lowered = raw.strip().lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise ValueError("must be one of true/false, 1/0, yes/no, on/off")


def _comma_list(raw: Any) -> Any:
    return tuple(p.strip() for p in raw.split(",") if p.strip()) if isinstance(raw, str) else raw


def _cron(raw: str) -> str:
    from croniter import croniter  # small, but only needed when the variable is set

    if len(raw.split()) != 5 or not croniter.is_valid(raw):
        raise ValueError("must be a 5-field cron expression such as '0 2 * * 0'")
    return raw


def _prefixed(*prefixes: str, message: str) -> AfterValidator:
    def check(raw: str) -> str:
        if not raw.startswith(prefixes):
            raise ValueError(message)
        return raw

    return AfterValidator(check)


def _secret(raw: str) -> str:
    if raw and len(raw) < 16:
        raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
    return raw


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    origins = tuple(o.rstrip("/") for o in origins)
    if not all(o.startswith(("http://", "https://")) for o in origins):
        raise ValueError("must be a comma-separated list of origins like https://ui.example.com")
    return origins


def _module_tuple(modules: tuple[str, ...]) -> tuple[str, ...]:
    if not modules or not all(m.isidentifier() for m in modules):
        raise ValueError("must be a comma-separated list of module names")
    return modules


EnvBool = Annotated[bool, BeforeValidator(_env_bool)]
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
Cron = Annotated[str, AfterValidator(_cron)]
RedisUrl = Annotated[
    str,
    _prefixed(
        "redis://", "rediss://", "unix://", message="must be a redis://, rediss:// or unix:// URL"
    ),
]
DatabaseUrl = Annotated[
    str,
    _prefixed(
        "sqlite://",
        "postgresql://",
        "postgresql+psycopg://",
        message="must be a sqlite:/// or postgresql:// URL",
    ),
]
Secret = Annotated[str, AfterValidator(_secret)]
Origins = Annotated[CommaList, AfterValidator(_origins)]
Modules = Annotated[CommaList, AfterValidator(_module_tuple)]
AtLeast1 = Annotated[int, Field(ge=1)]


def _env(name: str, default: Any, description: str) -> Any:
    return Field(default=default, validation_alias=name, description=description)


class Settings(BaseSettings):
    """Service configuration. Each field's `validation_alias` is its environment variable."""

    model_config = SettingsConfigDict(
        frozen=True,
        validate_by_name=True,  # Settings(lora_rank=8) in code, LORA_RANK=8 in the environment
        extra="ignore",
        case_sensitive=True,
        env_ignore_empty=True,
        # the defaults are this file's own; validating them would import croniter in every
        # process, Axolotl's environment included, for a value that cannot be wrong
        validate_default=False,
    )

    # --- seed §8.1 ---
    min_traces: AtLeast1 = _env(
        "FINETUNE_MIN_TRACES", 50, "minimum qualifying traces to start a run (422 below it)"
    )
    min_quality: f.QualityScore = _env(
        "FINETUNE_MIN_QUALITY", 8.0, "minimum quality score (0-10) of exported traces"
    )
    schedule: Cron = _env(
        "FINETUNE_SCHEDULE", "0 2 * * 0", "cron schedule for scheduled retraining (`beat`)"
    )
    enabled: EnvBool = _env("FINETUNE_ENABLED", True, "enable the scheduler")
    backend: f.Backend = _env("FINETUNE_BACKEND", "auto", "training backend")
    lora_rank: f.LoraRank = _env("LORA_RANK", 16, "LoRA rank")
    lora_alpha: f.LoraAlpha = _env("LORA_ALPHA", 32, "LoRA alpha")
    lora_output_dir: Path = _env("LORA_OUTPUT_DIR", Path("data/lora-adapters"), "adapter registry")
    temp_dir: Path = _env("FINETUNE_TEMP_DIR", Path("data/finetune_temp"), "export folders")
    python_path: f.NonEmptyText = _env(
        "PYTHON_PATH", "python3", "interpreter for subprocess-based backends (Axolotl)"
    )
    scripts_dir: Path = _env(
        "FINETUNE_SCRIPTS_DIR", Path("worker"), "accepted for compatibility; now `worker` modules"
    )
    max_seq_len: f.SeqLen = _env("FINETUNE_MAX_SEQ_LEN", 4096, "max tokens per row")
    epochs: f.Epochs = _env("FINETUNE_EPOCHS", 3, "training epochs")
    learning_rate: f.LearningRate = _env("FINETUNE_LR", 2e-4, "learning rate")
    batch_size: f.BatchSize = _env("FINETUNE_BATCH_SIZE", 4, "micro-batch (rows per step)")
    grad_accum: f.BatchSize = _env("FINETUNE_GRAD_ACCUM", 4, "gradient accumulation steps")
    # --- added by this service ---
    database_url: DatabaseUrl = _env(
        "DATABASE_URL", "sqlite:///data/traces.db", "runs database (SQLite WAL or postgresql://)"
    )
    traces_db_path: Path = _env("TRACES_DB_PATH", Path("data/traces.db"), "trace store")
    redis_url: RedisUrl = _env("REDIS_URL", "redis://localhost:6379/0", "broker, results, pub/sub")
    base_model: f.NonEmptyText = _env(
        "FINETUNE_BASE_MODEL", "qwen3:32b", "default base model (Ollama tag, HF id or path)"
    )
    lora_dropout: f.LoraDropout = _env("LORA_DROPOUT", 0.05, "LoRA dropout")
    target_modules: Modules = _env(
        "LORA_TARGET_MODULES",
        ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj"),
        "LoRA target modules (comma-separated)",
    )
    val_split: f.ValSplit = _env("FINETUNE_VAL_SPLIT", 0.1, "share of questions held out")
    seed: f.Seed = _env("FINETUNE_SEED", 42, "random seed (split and training)")
    eval_steps: f.Steps = _env("FINETUNE_EVAL_STEPS", 50, "evaluate every N optimizer steps")
    save_steps: f.Steps = _env("FINETUNE_SAVE_STEPS", 100, "checkpoint every N optimizer steps")
    save_total_limit: f.CheckpointsKept = _env("FINETUNE_SAVE_TOTAL_LIMIT", 3, "checkpoints kept")
    logging_steps: f.Steps = _env(
        "FINETUNE_LOGGING_STEPS", 1, "a progress event every N optimizer steps"
    )
    packing: EnvBool = _env("FINETUNE_PACKING", True, "pack short examples into full rows")
    objective: f.Objective = _env(
        "FINETUNE_OBJECTIVE", "sft", "sft, dpo or sft+dpo (SFT, then DPO on the same adapter)"
    )
    dpo_beta: f.DpoBeta = _env("FINETUNE_DPO_BETA", 0.1, "DPO beta (how far from the reference)")
    dpo_epochs: f.Epochs = _env("FINETUNE_DPO_EPOCHS", 1, "passes over the preference pairs")
    dpo_learning_rate: f.LearningRate = _env("FINETUNE_DPO_LR", 5e-5, "DPO stage learning rate")
    eval_samples: f.EvalSamples = _env(
        "FINETUNE_EVAL_SAMPLES", 16, "held-out questions answered by base and adapter (EM/ROUGE-L)"
    )
    eval_max_new_tokens: Annotated[int, Field(ge=8, le=8192)] = _env(
        "FINETUNE_EVAL_MAX_NEW_TOKENS", 256, "answer length cap in the generation check"
    )
    heartbeat_timeout: Annotated[int, Field(ge=5)] = _env(
        "FINETUNE_HEARTBEAT_TIMEOUT", 60, "seconds without a heartbeat before the watchdog acts"
    )
    nproc: Annotated[int, Field(ge=1, le=64)] = _env(
        "FINETUNE_NPROC", 1, "processes (GPUs) per run; > 1 launches torchrun DDP (trl)"
    )
    oom_retries: Annotated[int, Field(ge=0, le=8)] = _env(
        "FINETUNE_OOM_RETRIES", 1, "OOM retries with half the micro-batch, double accumulation"
    )
    promote_min_delta: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = _env(
        "FINETUNE_PROMOTE_MIN_DELTA", 0.01, "validation-loss gain an adapter needs to activate"
    )
    promote_confidence: Annotated[float, Field(ge=0.5, lt=1, allow_inf_nan=False)] = _env(
        "FINETUNE_PROMOTE_CONFIDENCE", 0.95, "confidence of the gate's paired bootstrap interval"
    )
    promote_resamples: Annotated[int, Field(ge=100, le=1_000_000)] = _env(
        "FINETUNE_PROMOTE_RESAMPLES", 2000, "bootstrap resamples behind that interval"
    )
    promote_max_em_drop: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = _env(
        "FINETUNE_PROMOTE_MAX_EM_DROP", 0.1, "exact match (or ROUGE-L) the gate lets fall"
    )
    promote_max_drift: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = _env(
        "FINETUNE_PROMOTE_MAX_DRIFT", 0.5, "forgetting-probe loss rise (nats/token) allowed"
    )
    probe_prompts: Annotated[int, Field(ge=0, le=240)] = _env(
        "FINETUNE_PROBE_PROMPTS", 120, "general prompts in the forgetting probe, of 240 (0: off)"
    )
    probe_max_new_tokens: Annotated[int, Field(ge=8, le=1024)] = _env(
        "FINETUNE_PROBE_MAX_NEW_TOKENS", 48, "length of the base model's probe answers"
    )
    scheduled_init_from: f.InitFrom = _env(
        "FINETUNE_INIT_FROM", "active", "scheduled runs: continue the active adapter, or base"
    )
    replay_ratio: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = _env(
        "FINETUNE_REPLAY_RATIO", 0.5, "warm start: older examples replayed per new one"
    )
    auto_activate: EnvBool = _env(
        "FINETUNE_AUTO_ACTIVATE", True, "activate an adapter that passes the gate"
    )
    lora_keep: Annotated[int, Field(ge=1, le=100_000)] = _env(
        "LORA_KEEP", 10, "adapters kept by retention (plus tagged, active, rollback target)"
    )
    ollama_export: EnvBool = _env(
        "OLLAMA_EXPORT", False, "on activation, also write a GGUF LoRA + Ollama Modelfile"
    )
    model_cache_dir: Path = _env("MODEL_CACHE_DIR", Path("data/models"), "converted models")
    log_dir: Path = _env("FINETUNE_LOG_DIR", Path("data/finetune_logs"), "run logs")
    api_host: f.NonEmptyText = _env("API_HOST", "127.0.0.1", "API bind address")
    api_port: Annotated[int, Field(ge=1, le=65535)] = _env("API_PORT", 8000, "API port")
    api_token: Secret = _env(
        "API_TOKEN", "", "bearer token required on /api (empty: no auth); >= 16 characters"
    )
    cors_origins: Origins = _env(
        "CORS_ORIGINS", (), "comma-separated origins allowed to call the API from a browser"
    )
    log_format: Literal["text", "json"] = _env(
        "LOG_FORMAT", "text", "`json`: one JSON object per line with run_id"
    )
    torch_threads: Annotated[int, Field(ge=0, le=1024)] = _env(
        "FINETUNE_TORCH_THREADS", 0, "CPU threads for torch in a task (0 = torch's default)"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default `os.environ`); SettingsError on bad input."""
        environ = os.environ if environ is None else environ
        names = {info.validation_alias for info in cls.model_fields.values()}
        values = {k: v for k, v in environ.items() if k in names and v != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_problems(exc, values)) from None

    def replace(self, **changes: Any) -> Settings:
        return self.model_copy(update=changes)

    @property
    def data_dir(self) -> Path:
        return self.lora_output_dir.parent

    @property
    def active_adapter_file(self) -> Path:
        return self.lora_output_dir / "active.json"


def _problems(exc: ValidationError, values: Mapping[str, str]) -> str:
    by_env = {str(info.validation_alias): info for info in Settings.model_fields.values()}
    reasons = f.field_errors(exc, by_env, by_alias=False)
    return "; ".join(
        f"{name}={values.get(name)!r} is invalid: {why}" for name, why in reasons.items()
    )


def describe() -> list[tuple[str, str, str, str]]:
    """(variable, default, allowed values, description) for every setting: the README table."""
    rows = []
    for info in Settings.model_fields.values():
        default = info.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()
        rows.append((str(info.validation_alias), str(default), _allowed(info), info.description))
    return rows


def _allowed(info: Any) -> str:
    """`an integer between 1 and 1024`, for typed fields; empty where the text says it."""
    if info.annotation in (str, Path, tuple[str, ...]):
        return ""
    if info.annotation is bool:
        return "true/false, 1/0, yes/no, on/off"
    return f.allowed(info).removeprefix("must be ")


def markdown_table() -> str:
    """The README's settings table, generated: `python -m shared.settings` prints it."""
    lines = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for name, default, allowed, doc in describe():
        shown = f"`{default}`" if default else "empty"
        lines.append(f"| `{name}` | {shown} | {allowed} | {doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
