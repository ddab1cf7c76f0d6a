"""FineTuneConfig: defaults from settings, one error per bad field, strict types."""

from __future__ import annotations

import doctest
import json

import pytest
from pydantic import ValidationError

from shared.run_config import (
    FIELDS,
    UNKNOWN_FIELD,
    ConfigError,
    FineTuneConfig,
    build_config,
    default_config,
)
from shared.settings import Settings


@pytest.fixture
def base() -> Settings:
    return Settings()


def test_defaults_come_from_settings() -> None:
    settings = Settings(
        base_model="llama3.1:8b",
        backend="trl",
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=("q_proj",),
        epochs=2,
        learning_rate=1e-3,
        batch_size=2,
        grad_accum=8,
        max_seq_len=512,
        min_quality=7.5,
        val_split=0.2,
        seed=3,
        eval_steps=5,
        save_steps=10,
        save_total_limit=2,
        logging_steps=2,
        packing=False,
        eval_samples=0,
        objective="dpo",
        dpo_beta=0.2,
        dpo_epochs=2,
        dpo_learning_rate=1e-5,
    )
    config = build_config(settings).to_dict()
    assert config == {
        "baseModel": "llama3.1:8b",
        "backend": "trl",
        "loraRank": 8,
        "loraAlpha": 16,
        "loraDropout": 0.1,
        "targetModules": ["q_proj"],
        "epochs": 2,
        "maxSteps": None,
        "learningRate": 1e-3,
        "batchSize": 2,
        "gradAccum": 8,
        "maxSeqLen": 512,
        "minQualityScore": 7.5,
        "valSplit": 0.2,
        "seed": 3,
        "evalSteps": 5,
        "saveSteps": 10,
        "saveTotalLimit": 2,
        "loggingSteps": 2,
        "packing": False,
        "evalSamples": 0,
        "objective": "dpo",
        "dpoBeta": 0.2,
        "dpoEpochs": 2,
        "dpoLearningRate": 1e-5,
        "dpoMaxSteps": None,
        "maxPairsPerPrompt": None,
        "initFrom": "base",  # no setting: FINETUNE_INIT_FROM is for scheduled runs
    }


def test_default_config_has_exactly_the_checked_fields_in_order(base: Settings) -> None:
    aliases = [info.alias for info in FIELDS.values()]
    assert list(default_config(base)) == aliases
    assert list(build_config(base).to_dict()) == aliases


def test_none_and_empty_overrides_give_defaults(base: Settings) -> None:
    assert build_config(base, None).to_dict() == default_config(base)
    assert build_config(base, {}).to_dict() == default_config(base)


def test_overrides_replace_only_their_fields(base: Settings) -> None:
    config = build_config(base, {"loraRank": 64, "maxSteps": 20, "learningRate": 1})
    assert isinstance(config, FineTuneConfig)
    assert config.lora_rank == 64
    assert config.max_steps == 20
    assert config.learning_rate == 1
    assert config.epochs == base.epochs
    assert config.base_model == base.base_model


def test_to_dict_is_a_copy(base: Settings) -> None:
    config = build_config(base)
    data = config.to_dict()
    data["loraRank"] = 999
    assert config.lora_rank == base.lora_rank


def test_unknown_keys_are_each_named(base: Settings) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(base, {"lora_rank": 8, "foo": 1, "epochs": 2})
    assert info.value.errors == {"lora_rank": UNKNOWN_FIELD, "foo": UNKNOWN_FIELD}


def test_one_entry_per_bad_field(base: Settings) -> None:
    overrides = {
        "loraRank": 0,
        "loraAlpha": 5000,
        "learningRate": 0,
        "valSplit": 0.75,
        "backend": "tensorflow",
        "bogus": True,
        "epochs": 3,  # fine
    }
    with pytest.raises(ConfigError) as info:
        build_config(base, overrides)
    errors = info.value.errors
    assert set(errors) == {"loraRank", "loraAlpha", "learningRate", "valSplit", "backend", "bogus"}
    assert errors["loraRank"] == "must be an integer between 1 and 1024"
    assert errors["loraAlpha"] == "must be an integer between 1 and 4096"
    assert errors["learningRate"] == "must be a number in (0, 1]"
    assert errors["valSplit"] == "must be a number in (0, 0.5]"
    assert errors["backend"] == "must be one of auto, trl, unsloth, axolotl"
    # the message joins them all
    message = str(info.value)
    for key in errors:
        assert f"{key}: " in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loraRank", 1025),
        ("loraRank", -1),
        ("loraRank", 8.0),
        ("loraRank", "8"),
        ("loraDropout", 0.91),
        ("loraDropout", -0.01),
        ("epochs", 0),
        ("epochs", 1001),
        ("maxSteps", 0),
        ("maxSteps", 1.5),
        ("learningRate", -1e-4),
        ("learningRate", 1.01),
        ("learningRate", "2e-4"),
        ("batchSize", 0),
        ("gradAccum", 4097),
        ("maxSeqLen", 15),
        ("minQualityScore", 10.1),
        ("minQualityScore", -1),
        ("valSplit", 0),
        ("seed", -1),
        ("seed", 2**31),
        ("evalSteps", 0),
        ("saveSteps", 0),
        ("saveTotalLimit", 1001),
        ("loggingSteps", 0),
        ("evalSamples", 1001),
        ("evalSamples", -1),
        ("baseModel", ""),
        ("baseModel", "   "),
        ("baseModel", 7),
        ("backend", None),
        ("packing", 1),
        ("packing", "true"),
    ],
)
def test_out_of_range_or_wrong_type(base: Settings, field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(base, {field: value})
    assert list(info.value.errors) == [field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loraRank", 1),
        ("loraRank", 1024),
        ("loraDropout", 0),
        ("loraDropout", 0.9),
        ("learningRate", 1),
        ("learningRate", 1e-6),
        ("minQualityScore", 0),
        ("minQualityScore", 10),
        ("valSplit", 0.5),
        ("maxSteps", None),
        ("maxSteps", 1),
        ("seed", 0),
        ("seed", 2**31 - 1),
        ("evalSamples", 0),
        ("packing", False),
        ("backend", "axolotl"),
        ("baseModel", "/models/local-folder"),
    ],
)
def test_boundaries_accepted(base: Settings, field: str, value: object) -> None:
    assert build_config(base, {field: value}).to_dict()[field] == value


@pytest.mark.parametrize(
    "field", ["loraRank", "loraAlpha", "epochs", "maxSteps", "batchSize", "seed", "evalSamples"]
)
@pytest.mark.parametrize("value", [True, False])
def test_bools_are_not_ints(base: Settings, field: str, value: bool) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(base, {field: value})
    assert "integer" in info.value.errors[field]


@pytest.mark.parametrize("field", ["loraDropout", "learningRate", "minQualityScore", "valSplit"])
def test_bools_are_not_numbers(base: Settings, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(base, {field: True})
    assert list(info.value.errors) == [field]
    assert info.value.errors[field].startswith("must be a number in ")


def test_ints_are_numbers(base: Settings) -> None:
    assert build_config(base, {"minQualityScore": 9}).min_quality_score == 9


@pytest.mark.parametrize(
    "modules",
    [
        [],
        "q_proj",
        ("q_proj",),
        ["q_proj", 3],
        ["q-proj"],
        ["model.layers.0.q_proj"],
        [""],
        None,
    ],
)
def test_target_modules_rejected(base: Settings, modules: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(base, {"targetModules": modules})
    assert info.value.errors == {
        "targetModules": "must be a non-empty list of module names such as ['q_proj', 'v_proj']"
    }


def test_target_modules_accepted(base: Settings) -> None:
    config = build_config(base, {"targetModules": ["q_proj", "v_proj", "lm_head"]})
    assert config.target_modules == ["q_proj", "v_proj", "lm_head"]


@pytest.mark.parametrize("overrides", [[1, 2], "loraRank=8", 3])
def test_overrides_must_be_an_object(base: Settings, overrides: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(base, overrides)  # type: ignore[arg-type]
    assert info.value.errors == {"config": "must be a JSON object"}


def test_config_error_is_a_value_error() -> None:
    error = ConfigError({"a": "bad", "b": "worse"})
    assert isinstance(error, ValueError)
    assert str(error) == "a: bad; b: worse"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", ["loraDropout", "learningRate", "minQualityScore", "valSplit"])
def test_non_finite_numbers_are_refused(base: Settings, field: str, value: float) -> None:
    # a NaN stored in a run would make every later JSON answer invalid (bare `NaN`)
    with pytest.raises(ConfigError) as info:
        build_config(base, {field: value})
    assert list(info.value.errors) == [field]


def test_the_model_is_frozen_and_derived_with_model_copy(base: Settings) -> None:
    config = build_config(base, {"batchSize": 4, "gradAccum": 2})
    with pytest.raises(ValidationError, match="frozen"):
        config.batch_size = 2  # type: ignore[misc]
    halved = config.model_copy(update={"batch_size": 2, "grad_accum": 4})
    assert (halved.batch_size, halved.grad_accum, config.batch_size) == (2, 4, 4)
    assert FineTuneConfig.model_validate(halved.to_dict()) == halved


def test_stored_form_round_trips(base: Settings) -> None:
    config = build_config(base, {"maxSteps": 7, "targetModules": ["q_proj"]})
    assert FineTuneConfig.model_validate_json(json.dumps(config.to_dict())) == config


def test_module_doctest() -> None:
    import shared.run_config

    assert doctest.testmod(shared.run_config).failed == 0


def test_readme_run_config_table_is_the_generated_one() -> None:
    from pathlib import Path

    from shared.run_config import markdown_table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert markdown_table() + "\n" in readme, (
        "README.md's run-config table differs from FineTuneConfig: "
        "regenerate it with `python -m shared.run_config`"
    )
