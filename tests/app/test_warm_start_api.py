"""initFrom "active": a run that continues the active adapter, refused with 400 when it cannot."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from shared.registry import AdapterRegistry
from shared.run_config import build_config
from shared.settings import Settings
from shared.warm_start import scheduled_overrides
from tests.adapters import make_adapter


def _active(settings: Settings, adapter_id: str = "run_parent", **config: Any) -> None:
    shape = {"loraRank": 16, "loraAlpha": 32, "targetModules": ["q_proj", "v_proj"], **config}
    make_adapter(settings.lora_output_dir, adapter_id, base_model=settings.base_model, config=shape)
    AdapterRegistry(settings.lora_output_dir).activate(adapter_id)


def _start(client: FlaskClient, **config: Any) -> Any:
    shape = {"loraRank": 16, "loraAlpha": 32, "targetModules": ["v_proj", "q_proj"]}
    return client.post("/api/finetune", json={"config": {**shape, **config}})


def test_without_an_active_adapter_there_is_nothing_to_continue(client: FlaskClient) -> None:
    response = _start(client, initFrom="active")
    assert response.status_code == 400
    errors = response.get_json()["fields"]
    assert "no adapter is active" in errors["initFrom"] and '"base"' in errors["initFrom"]


def test_a_mismatched_rank_is_refused_naming_it(client: FlaskClient, settings: Settings) -> None:
    _active(settings)
    response = _start(client, initFrom="active", loraRank=8)
    assert response.status_code == 400
    reason = response.get_json()["fields"]["initFrom"]
    assert "loraRank is 8 here but 16 in run_parent" in reason
    assert "loraAlpha" not in reason and "targetModules" not in reason


def test_other_target_modules_or_base_model_are_refused(
    client: FlaskClient, settings: Settings
) -> None:
    _active(settings, targetModules=["q_proj"])
    response = _start(client, initFrom="active", baseModel="another:7b")
    reason = response.get_json()["fields"]["initFrom"]
    assert response.status_code == 400 and "targetModules" in reason and "baseModel" in reason


def test_a_fitting_run_records_its_parent(
    client: FlaskClient, app: Flask, settings: Settings
) -> None:
    _active(settings)
    response = _start(client, initFrom="active")
    assert response.status_code == 202, response.get_json()
    run = client.get(f"/api/finetune/{response.get_json()['runId']}").get_json()
    assert run["parentAdapter"] == "run_parent" and run["config"]["initFrom"] == "active"


def test_a_fresh_run_has_no_parent(client: FlaskClient, settings: Settings) -> None:
    _active(settings)
    response = _start(client)
    run = client.get(f"/api/finetune/{response.get_json()['runId']}").get_json()
    assert run["parentAdapter"] is None and run["config"]["initFrom"] == "base"


def test_scheduled_runs_continue_the_active_adapter_where_it_fits(settings: Settings) -> None:
    defaults = build_config(settings, {"loraRank": 16, "loraAlpha": 32,
                                       "targetModules": ["q_proj", "v_proj"]})  # fmt: skip
    assert scheduled_overrides(settings, defaults) == {}  # none active yet: from the base model
    _active(settings)
    assert scheduled_overrides(settings, defaults) == {"initFrom": "active"}
    base = settings.replace(scheduled_init_from="base")
    assert scheduled_overrides(base, defaults) == {}
    other_rank = defaults.model_copy(update={"lora_rank": 4})
    assert scheduled_overrides(settings, other_rank) == {}
