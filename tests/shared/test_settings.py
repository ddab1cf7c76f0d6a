"""Settings.from_env: every variable parses; bad values name the variable, value and rule."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.run_config import build_config
from shared.settings import Settings, SettingsError, describe, markdown_table

# One valid, non-default value for every variable, and what it must parse to.
VALID: dict[str, tuple[str, str, object]] = {
    "FINETUNE_MIN_TRACES": ("min_traces", "7", 7),
    "FINETUNE_MIN_QUALITY": ("min_quality", "6.5", 6.5),
    "FINETUNE_SCHEDULE": ("schedule", "30 3 * * 1-5", "30 3 * * 1-5"),
    "FINETUNE_ENABLED": ("enabled", "false", False),
    "FINETUNE_BACKEND": ("backend", "trl", "trl"),
    "LORA_RANK": ("lora_rank", "8", 8),
    "LORA_ALPHA": ("lora_alpha", "64", 64),
    "LORA_OUTPUT_DIR": ("lora_output_dir", "/srv/adapters", Path("/srv/adapters")),
    "FINETUNE_TEMP_DIR": ("temp_dir", "/srv/tmp", Path("/srv/tmp")),
    "PYTHON_PATH": ("python_path", " /usr/bin/python3.11 ", "/usr/bin/python3.11"),
    "FINETUNE_SCRIPTS_DIR": ("scripts_dir", "scripts", Path("scripts")),
    "FINETUNE_MAX_SEQ_LEN": ("max_seq_len", "2048", 2048),
    "FINETUNE_EPOCHS": ("epochs", "5", 5),
    "FINETUNE_LR": ("learning_rate", "1e-4", 1e-4),
    "FINETUNE_BATCH_SIZE": ("batch_size", "8", 8),
    "FINETUNE_GRAD_ACCUM": ("grad_accum", "2", 2),
    "DATABASE_URL": (
        "database_url",
        "postgresql://u@db:5432/runs",
        "postgresql://u@db:5432/runs",
    ),
    "TRACES_DB_PATH": ("traces_db_path", "/data/t.db", Path("/data/t.db")),
    "REDIS_URL": ("redis_url", "rediss://cache:6380/2", "rediss://cache:6380/2"),
    "FINETUNE_BASE_MODEL": ("base_model", "llama3.1:8b", "llama3.1:8b"),
    "LORA_DROPOUT": ("lora_dropout", "0.1", 0.1),
    "LORA_TARGET_MODULES": ("target_modules", "q_proj, v_proj,", ("q_proj", "v_proj")),
    "FINETUNE_VAL_SPLIT": ("val_split", "0.2", 0.2),
    "FINETUNE_SEED": ("seed", "1234", 1234),
    "FINETUNE_EVAL_STEPS": ("eval_steps", "25", 25),
    "FINETUNE_SAVE_STEPS": ("save_steps", "200", 200),
    "FINETUNE_SAVE_TOTAL_LIMIT": ("save_total_limit", "5", 5),
    "FINETUNE_LOGGING_STEPS": ("logging_steps", "10", 10),
    "FINETUNE_PACKING": ("packing", "off", False),
    "FINETUNE_OBJECTIVE": ("objective", "dpo", "dpo"),
    "FINETUNE_DPO_BETA": ("dpo_beta", "0.5", 0.5),
    "FINETUNE_DPO_EPOCHS": ("dpo_epochs", "2", 2),
    "FINETUNE_DPO_LR": ("dpo_learning_rate", "1e-5", 1e-5),
    "FINETUNE_EVAL_SAMPLES": ("eval_samples", "0", 0),
    "FINETUNE_HEARTBEAT_TIMEOUT": ("heartbeat_timeout", "120", 120),
    "FINETUNE_OOM_RETRIES": ("oom_retries", "2", 2),
    "FINETUNE_PROMOTE_MIN_DELTA": ("promote_min_delta", "0.05", 0.05),
    "FINETUNE_PROMOTE_CONFIDENCE": ("promote_confidence", "0.9", 0.9),
    "FINETUNE_PROMOTE_RESAMPLES": ("promote_resamples", "500", 500),
    "FINETUNE_PROMOTE_MAX_EM_DROP": ("promote_max_em_drop", "0", 0.0),
    "FINETUNE_PROMOTE_MAX_DRIFT": ("promote_max_drift", "0.25", 0.25),
    "FINETUNE_PROBE_PROMPTS": ("probe_prompts", "0", 0),
    "FINETUNE_PROBE_MAX_NEW_TOKENS": ("probe_max_new_tokens", "64", 64),
    "FINETUNE_INIT_FROM": ("scheduled_init_from", "base", "base"),
    "FINETUNE_REPLAY_RATIO": ("replay_ratio", "1.5", 1.5),
    "FINETUNE_EVAL_MAX_NEW_TOKENS": ("eval_max_new_tokens", "128", 128),
    "FINETUNE_NPROC": ("nproc", "2", 2),
    "FINETUNE_AUTO_ACTIVATE": ("auto_activate", "false", False),
    "LORA_KEEP": ("lora_keep", "3", 3),
    "OLLAMA_EXPORT": ("ollama_export", "yes", True),
    "MODEL_CACHE_DIR": ("model_cache_dir", "/cache/models", Path("/cache/models")),
    "FINETUNE_LOG_DIR": ("log_dir", "/var/log/ft", Path("/var/log/ft")),
    "API_HOST": ("api_host", "0.0.0.0", "0.0.0.0"),
    "API_PORT": ("api_port", "9000", 9000),
    "FINETUNE_TORCH_THREADS": ("torch_threads", "4", 4),
    "API_TOKEN": ("api_token", "s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret"),
    "CORS_ORIGINS": (
        "cors_origins",
        "https://a.example, http://b:3000/",
        ("https://a.example", "http://b:3000"),
    ),
    "LOG_FORMAT": ("log_format", "json", "json"),
}

SEED_VARIABLES = [
    "FINETUNE_MIN_TRACES",
    "FINETUNE_MIN_QUALITY",
    "FINETUNE_SCHEDULE",
    "FINETUNE_ENABLED",
    "FINETUNE_BACKEND",
    "LORA_RANK",
    "LORA_ALPHA",
    "LORA_OUTPUT_DIR",
    "FINETUNE_TEMP_DIR",
    "PYTHON_PATH",
    "FINETUNE_SCRIPTS_DIR",
    "FINETUNE_MAX_SEQ_LEN",
    "FINETUNE_EPOCHS",
    "FINETUNE_LR",
    "FINETUNE_BATCH_SIZE",
    "FINETUNE_GRAD_ACCUM",
]


def _env_names() -> list[str]:
    return [str(info.validation_alias) for info in Settings.model_fields.values()]


def test_valid_table_covers_every_variable() -> None:
    assert sorted(VALID) == sorted(_env_names())
    assert len(set(_env_names())) == len(_env_names()), "two fields share a variable"


def test_every_seed_variable_is_honoured() -> None:
    assert set(SEED_VARIABLES) <= set(_env_names())


def test_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.min_traces == 50
    assert settings.min_quality == 8.0
    assert settings.schedule == "0 2 * * 0"
    assert settings.enabled is True
    assert settings.lora_rank == 16 and settings.lora_alpha == 32
    assert settings.max_seq_len == 4096
    assert settings.epochs == 3 and settings.learning_rate == 2e-4
    assert settings.batch_size == 4 and settings.grad_accum == 4


def test_empty_string_means_default() -> None:
    assert Settings.from_env({"FINETUNE_EPOCHS": "", "REDIS_URL": ""}) == Settings()


@pytest.mark.parametrize("variable", sorted(VALID))
def test_each_variable_parses(variable: str) -> None:
    attribute, raw, expected = VALID[variable]
    settings = Settings.from_env({variable: raw})
    assert getattr(settings, attribute) == expected
    assert getattr(Settings(), attribute) != expected, "pick a non-default value"
    # nothing else moved
    others = set(Settings.model_fields) - {attribute}
    assert all(getattr(settings, name) == getattr(Settings(), name) for name in others)


def test_all_variables_at_once() -> None:
    settings = Settings.from_env({name: raw for name, (_, raw, _) in VALID.items()})
    for _name, (attribute, _raw, expected) in VALID.items():
        assert getattr(settings, attribute) == expected


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_MIN_TRACES", "3")
    assert Settings.from_env().min_traces == 3


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " on "])
def test_bool_true(raw: str) -> None:
    assert Settings.from_env({"FINETUNE_PACKING": "false", "FINETUNE_ENABLED": raw}).enabled


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF"])
def test_bool_false(raw: str) -> None:
    assert Settings.from_env({"FINETUNE_ENABLED": raw}).enabled is False


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    [
        # wrong type
        ("FINETUNE_MIN_TRACES", "many", "must be an integer >= 1"),
        ("FINETUNE_EPOCHS", "2.5", "must be an integer between 1 and 1000"),
        ("LORA_RANK", "sixteen", "must be an integer between 1 and 1024"),
        ("FINETUNE_LR", "fast", "must be a number in (0, 1]"),
        ("FINETUNE_MIN_QUALITY", "high", "must be a number in [0, 10]"),
        ("FINETUNE_ENABLED", "maybe", "must be one of true/false, 1/0, yes/no, on/off"),
        ("FINETUNE_PACKING", "2", "must be one of true/false"),
        # out of range
        ("FINETUNE_MIN_TRACES", "0", "must be an integer >= 1"),
        ("FINETUNE_EPOCHS", "0", "must be an integer between 1 and 1000"),
        ("FINETUNE_EPOCHS", "1001", "must be an integer between 1 and 1000"),
        ("LORA_RANK", "2048", "must be an integer between 1 and 1024"),
        ("LORA_ALPHA", "-1", "must be an integer between 1 and 4096"),
        ("FINETUNE_MAX_SEQ_LEN", "8", "must be an integer between 16 and 1048576"),
        ("FINETUNE_BATCH_SIZE", "0", "must be an integer between 1 and 4096"),
        ("FINETUNE_GRAD_ACCUM", "5000", "must be an integer between 1 and 4096"),
        ("API_PORT", "70000", "must be an integer between 1 and 65535"),
        ("FINETUNE_OOM_RETRIES", "9", "must be an integer between 0 and 8"),
        ("FINETUNE_HEARTBEAT_TIMEOUT", "1", "must be an integer >= 5"),
        ("FINETUNE_TORCH_THREADS", "-1", "must be an integer between 0 and 1024"),
        ("FINETUNE_LR", "0", "must be a number in (0, 1]"),
        ("FINETUNE_LR", "1.5", "must be a number in (0, 1]"),
        ("FINETUNE_LR", "nan", "must be a number in (0, 1]"),
        ("FINETUNE_MIN_QUALITY", "10.5", "must be a number in [0, 10]"),
        ("FINETUNE_MIN_QUALITY", "-0.1", "must be a number in [0, 10]"),
        ("FINETUNE_MIN_QUALITY", "inf", "must be a number in [0, 10]"),
        ("LORA_DROPOUT", "0.95", "must be a number in [0, 0.9]"),
        ("FINETUNE_VAL_SPLIT", "0", "must be a number in (0, 0.5]"),
        ("FINETUNE_VAL_SPLIT", "0.6", "must be a number in (0, 0.5]"),
        ("FINETUNE_EVAL_SAMPLES", "1001", "must be an integer between 0 and 1000"),
        ("FINETUNE_PROMOTE_MIN_DELTA", "-0.1", "must be a number in [0, 100]"),
        ("FINETUNE_PROMOTE_CONFIDENCE", "1", "must be a number in [0.5, 1)"),
        ("FINETUNE_PROBE_PROMPTS", "241", "must be an integer between 0 and 240"),
        ("FINETUNE_INIT_FROM", "latest", "must be one of base, active"),
        ("LORA_KEEP", "0", "must be an integer between 1 and 100000"),
        ("FINETUNE_AUTO_ACTIVATE", "maybe", "must be one of true/false"),
        ("API_TOKEN", "short", "must be at least 16 characters"),
        ("CORS_ORIGINS", "*", "must be a comma-separated list of origins"),
        ("LOG_FORMAT", "xml", "must be one of text, json"),
        # bad cron
        ("FINETUNE_SCHEDULE", "every sunday", "must be a 5-field cron expression"),
        ("FINETUNE_SCHEDULE", "0 2 * *", "must be a 5-field cron expression"),
        ("FINETUNE_SCHEDULE", "0 2 * * 0 0", "must be a 5-field cron expression"),
        ("FINETUNE_SCHEDULE", "61 2 * * 0", "must be a 5-field cron expression"),
        ("FINETUNE_SCHEDULE", "0 25 * * 0", "must be a 5-field cron expression"),
        # bad URLs
        ("REDIS_URL", "http://localhost:6379", "must be a redis://, rediss:// or unix:// URL"),
        ("REDIS_URL", "localhost:6379", "must be a redis://, rediss:// or unix:// URL"),
        ("DATABASE_URL", "mysql://db/runs", "must be a sqlite:/// or postgresql:// URL"),
        ("DATABASE_URL", "runs.db", "must be a sqlite:/// or postgresql:// URL"),
        # bad backend
        ("FINETUNE_BACKEND", "pytorch", "must be one of auto, trl, unsloth, axolotl"),
        ("FINETUNE_BACKEND", "TRL", "must be one of auto, trl, unsloth, axolotl"),
        # empty text and lists
        ("FINETUNE_BASE_MODEL", "   ", "must be a non-empty string"),
        ("PYTHON_PATH", " ", "must be a non-empty string"),
        ("LORA_TARGET_MODULES", " , ,", "must be a comma-separated list of module names"),
        ("LORA_TARGET_MODULES", "q_proj,v-proj", "must be a comma-separated list of module names"),
    ],
)
def test_bad_value_names_variable_value_and_rule(variable: str, raw: str, allowed: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: raw})
    message = str(info.value)
    assert message.startswith(f"{variable}={raw!r} is invalid: ")
    assert allowed in message


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_documented_example_message() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FINETUNE_EPOCHS": "0"})
    assert str(info.value) == (
        "FINETUNE_EPOCHS='0' is invalid: must be an integer between 1 and 1000"
    )
    # the example in the module docstring holds too
    import shared.settings

    assert doctest.testmod(shared.settings).failed == 0


def test_several_problems_are_reported_together() -> None:
    env = {
        "FINETUNE_EPOCHS": "zero",
        "REDIS_URL": "http://nope",
        "FINETUNE_BACKEND": "gpu",
        "FINETUNE_SCHEDULE": "sometimes",
        "LORA_RANK": "8",  # a good one among them is not reported
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    problems = str(info.value).split("; ")
    assert len(problems) == 4
    for name in ("FINETUNE_EPOCHS", "REDIS_URL", "FINETUNE_BACKEND", "FINETUNE_SCHEDULE"):
        assert sum(p.startswith(f"{name}=") for p in problems) == 1
    assert "LORA_RANK" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("FINETUNE_SEED", "2147483647"),
        ("FINETUNE_EVAL_STEPS", "10000000"),
        ("FINETUNE_SAVE_STEPS", "10000000"),
        ("FINETUNE_SAVE_TOTAL_LIMIT", "1000"),
        ("FINETUNE_LOGGING_STEPS", "10000000"),
        ("FINETUNE_MAX_SEQ_LEN", "1048576"),
        ("LORA_ALPHA", "4096"),
        ("LORA_DROPOUT", "0.9"),
        ("FINETUNE_VAL_SPLIT", "0.5"),
        ("FINETUNE_LR", "1"),
        ("FINETUNE_MIN_QUALITY", "10"),
        ("LORA_TARGET_MODULES", "q_proj"),
    ],
)
def test_upper_bounds_accepted_and_still_a_valid_default_config(variable: str, raw: str) -> None:
    """What the environment accepts must also be a valid run config (else every start fails)."""
    build_config(Settings.from_env({variable: raw}))


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("FINETUNE_SEED", "2147483648"),
        ("FINETUNE_EVAL_STEPS", "10000001"),
        ("FINETUNE_SAVE_STEPS", "10000001"),
        ("FINETUNE_SAVE_TOTAL_LIMIT", "1001"),
        ("FINETUNE_LOGGING_STEPS", "10000001"),
    ],
)
def test_values_the_run_config_would_refuse_are_refused_at_start_up(
    variable: str, raw: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: raw})


def test_replace_and_derived_paths(tmp_path: Path) -> None:
    settings = Settings().replace(lora_output_dir=tmp_path / "data" / "lora-adapters")
    assert settings.data_dir == tmp_path / "data"
    assert settings.active_adapter_file == tmp_path / "data" / "lora-adapters" / "active.json"
    with pytest.raises(ValidationError, match="frozen"):
        settings.epochs = 9  # type: ignore[misc]


def test_describe_lists_every_variable_with_its_default() -> None:
    rows = {name: (default, allowed, doc) for name, default, allowed, doc in describe()}
    assert list(rows) == _env_names()
    assert rows["FINETUNE_MIN_TRACES"][:2] == ("50", "an integer >= 1")
    assert rows["LORA_RANK"][1] == "an integer between 1 and 1024"
    assert rows["LORA_TARGET_MODULES"][0].split(",")[:2] == ["q_proj", "v_proj"]
    assert all(doc for _, _, doc in rows.values())


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() + "\n" in readme, (
        "README.md's settings table differs from the settings model: "
        "regenerate it with `python -m shared.settings`"
    )
