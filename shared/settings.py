"""The one settings object, read from the environment.

Every variable of seed §8.1 is honoured, plus the ones this service adds. A bad value stops
start-up with a message naming the variable, the value and what is allowed:

    >>> from shared.settings import Settings
    >>> Settings.from_env({"FINETUNE_MIN_TRACES": "0"})
    Traceback (most recent call last):
    ...
    shared.settings.SettingsError: FINETUNE_MIN_TRACES='0' is invalid: must be an integer >= 1
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.names import BACKENDS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A variable of the environment holds a value the service cannot use."""


def _env(name: str, default: Any, parse: Callable[[str], Any], doc: str) -> Any:
    return field(default=default, metadata={"env": name, "parse": parse, "doc": doc})


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"must be an integer {bound}")
        return value

    return parse


def _float(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is None or not (low < value if low_open else low <= value) or value > high:
            left = "(" if low_open else "["
            raise ValueError(f"must be a number in {left}{low}, {high}]")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("must be one of true/false, 1/0, yes/no, on/off")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return parse


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _cron(raw: str) -> str:
    from croniter import croniter  # small, but only needed when the variable is set

    if len(raw.split()) != 5 or not croniter.is_valid(raw):
        raise ValueError("must be a 5-field cron expression such as '0 2 * * 0'")
    return raw


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return raw


def _database_url(raw: str) -> str:
    if not raw.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
        raise ValueError("must be a sqlite:/// or postgresql:// URL")
    return raw


def _secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
    return raw


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    if not all(o.startswith(("http://", "https://")) for o in origins):
        raise ValueError("must be a comma-separated list of origins like https://ui.example.com")
    return origins


def _module_list(raw: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not modules or not all(m.isidentifier() for m in modules):
        raise ValueError("must be a comma-separated list of module names")
    return modules


@dataclass(frozen=True)
class Settings:
    """Service configuration. Each field names its environment variable in its metadata."""

    # --- seed §8.1 ---
    min_traces: int = _env("FINETUNE_MIN_TRACES", 50, _int(1), "Minimum traces required")
    min_quality: float = _env("FINETUNE_MIN_QUALITY", 8.0, _float(0, 10), "Minimum quality score")
    schedule: str = _env("FINETUNE_SCHEDULE", "0 2 * * 0", _cron, "Cron schedule")
    enabled: bool = _env("FINETUNE_ENABLED", True, _bool, "Enable/disable scheduler")
    backend: str = _env("FINETUNE_BACKEND", "auto", _choice(*BACKENDS), "Training backend")
    lora_rank: int = _env("LORA_RANK", 16, _int(1, 1024), "LoRA rank")
    lora_alpha: int = _env("LORA_ALPHA", 32, _int(1, 4096), "LoRA alpha")
    lora_output_dir: Path = _env("LORA_OUTPUT_DIR", Path("data/lora-adapters"), Path, "Adapters")
    temp_dir: Path = _env("FINETUNE_TEMP_DIR", Path("data/finetune_temp"), Path, "Export dirs")
    python_path: str = _env("PYTHON_PATH", "python3", _text, "Python for subprocess backends")
    scripts_dir: Path = _env(
        "FINETUNE_SCRIPTS_DIR", Path("worker"), Path, "Superseded: the scripts are `worker` modules"
    )
    max_seq_len: int = _env("FINETUNE_MAX_SEQ_LEN", 4096, _int(16, 1_048_576), "Max sequence len")
    epochs: int = _env("FINETUNE_EPOCHS", 3, _int(1, 1000), "Training epochs")
    learning_rate: float = _env("FINETUNE_LR", 2e-4, _float(0, 1, low_open=True), "Learning rate")
    batch_size: int = _env("FINETUNE_BATCH_SIZE", 4, _int(1, 4096), "Batch size")
    grad_accum: int = _env("FINETUNE_GRAD_ACCUM", 4, _int(1, 4096), "Gradient accumulation")
    # --- added by this service ---
    database_url: str = _env(
        "DATABASE_URL", "sqlite:///data/traces.db", _database_url, "Runs database"
    )
    traces_db_path: Path = _env("TRACES_DB_PATH", Path("data/traces.db"), Path, "Trace store")
    redis_url: str = _env("REDIS_URL", "redis://localhost:6379/0", _redis_url, "Broker + pubsub")
    base_model: str = _env("FINETUNE_BASE_MODEL", "qwen3:32b", _text, "Base model (tag/id/path)")
    lora_dropout: float = _env("LORA_DROPOUT", 0.05, _float(0, 0.9), "LoRA dropout")
    target_modules: tuple[str, ...] = _env(
        "LORA_TARGET_MODULES",
        ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj"),
        _module_list,
        "LoRA target modules (comma-separated)",
    )
    val_split: float = _env("FINETUNE_VAL_SPLIT", 0.1, _float(0, 0.5, low_open=True), "Val share")
    seed: int = _env("FINETUNE_SEED", 42, _int(0, 2**31 - 1), "Random seed (split and training)")
    eval_steps: int = _env("FINETUNE_EVAL_STEPS", 50, _int(1, 10_000_000), "Evaluate every N steps")
    save_steps: int = _env(
        "FINETUNE_SAVE_STEPS", 100, _int(1, 10_000_000), "Checkpoint every N steps"
    )
    save_total_limit: int = _env("FINETUNE_SAVE_TOTAL_LIMIT", 3, _int(1, 1000), "Checkpoints kept")
    logging_steps: int = _env(
        "FINETUNE_LOGGING_STEPS", 1, _int(1, 10_000_000), "Progress event every N steps"
    )
    packing: bool = _env("FINETUNE_PACKING", True, _bool, "Pack short examples into full rows")
    eval_samples: int = _env(
        "FINETUNE_EVAL_SAMPLES", 16, _int(0, 1000), "Held-out answers generated (EM / ROUGE-L)"
    )
    eval_max_new_tokens: int = _env(
        "FINETUNE_EVAL_MAX_NEW_TOKENS", 256, _int(8, 8192), "Answer length cap in generation eval"
    )
    heartbeat_timeout: int = _env("FINETUNE_HEARTBEAT_TIMEOUT", 60, _int(5), "Seconds = hung")
    nproc: int = _env(
        "FINETUNE_NPROC", 1, _int(1, 64), "Processes (GPUs) per run; > 1 launches torchrun DDP"
    )
    oom_retries: int = _env(
        "FINETUNE_OOM_RETRIES", 1, _int(0, 8), "OOM retries with half the micro-batch"
    )
    promote_min_delta: float = _env(
        "FINETUNE_PROMOTE_MIN_DELTA", 0.01, _float(0, 100), "Val-loss gain needed to auto-activate"
    )
    auto_activate: bool = _env(
        "FINETUNE_AUTO_ACTIVATE", True, _bool, "Activate an adapter that passes the gate"
    )
    lora_keep: int = _env("LORA_KEEP", 10, _int(1, 100_000), "Adapters kept (+tagged, active)")
    ollama_export: bool = _env(
        "OLLAMA_EXPORT", False, _bool, "Export GGUF LoRA + Modelfile on activation"
    )
    model_cache_dir: Path = _env("MODEL_CACHE_DIR", Path("data/models"), Path, "Converted models")
    log_dir: Path = _env("FINETUNE_LOG_DIR", Path("data/finetune_logs"), Path, "Run logs")
    api_host: str = _env("API_HOST", "127.0.0.1", _text, "API bind address")
    api_port: int = _env("API_PORT", 8000, _int(1, 65535), "API port")
    api_token: str = _env(
        "API_TOKEN", "", _secret, "Bearer token required on /api when set (empty: no auth)"
    )
    cors_origins: tuple[str, ...] = _env(
        "CORS_ORIGINS", (), _origins, "Origins allowed to call the API from a browser (none)"
    )
    log_format: str = _env("LOG_FORMAT", "text", _choice("text", "json"), "Log lines: text/json")
    torch_threads: int = _env("FINETUNE_TORCH_THREADS", 0, _int(0, 1024), "0 = torch's default")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (default `os.environ`); SettingsError on bad input."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in dataclasses.fields(cls):
            name = spec.metadata["env"]
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                problems.append(f"{name}={raw!r} is invalid: {exc}")
        if problems:
            raise SettingsError("; ".join(problems))
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def data_dir(self) -> Path:
        return self.lora_output_dir.parent

    @property
    def active_adapter_file(self) -> Path:
        return self.lora_output_dir / "active.json"


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README table comes from this."""
    rows = []
    for spec in dataclasses.fields(Settings):
        default = spec.default
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append((spec.metadata["env"], str(default), spec.metadata["doc"]))
    return rows
