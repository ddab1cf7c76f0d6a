"""Every route's real answers match /api/openapi.json, with no field left undocumented.

The document's objects are closed (`additionalProperties: false`, from the models'
extra="forbid"), so a field a route sends without a model declaring it fails here; and the
run config's documented bounds are the validator's: one past any of them is a 400 naming the
field, the bound itself is accepted.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator

from shared.settings import Settings
from tests.adapters import make_adapter
from tests.app.feeds import FeedEnv

ADAPTERS = ("run_aaaaaa", "run_bbbbbb")


class Checker:
    """Sends requests and validates each answer against the document's schema for it."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.document = client.get("/api/openapi.json").get_json()
        self.seen: set[tuple[str, str]] = set()

    def _operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        # literal paths first: /api/finetune/feeds is not /api/finetune/{runId}
        for template, operations in sorted(
            self.document["paths"].items(), key=lambda item: item[0].count("{")
        ):
            pattern = "^" + re.sub(r"\{\w+\}", "[^/]+", template) + "$"
            if re.match(pattern, path.split("?")[0]) and method in operations:
                return template, operations[method]
        raise AssertionError(f"{method.upper()} {path} is not in the document")

    def __call__(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        response = getattr(self.client, method)(path, **kwargs)
        assert response.status_code == status, (path, response.get_data(as_text=True)[:300])
        template, operation = self._operation(method, path)
        self.seen.add((template, method))
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{method.upper()} {template} answers undocumented {status}"
        content = documented.get("content", {})
        if "application/json" in content and response.mimetype == "application/json":
            schema = {**content["application/json"]["schema"], **self._components()}
            body = response.get_json()
            errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
            assert not errors, f"{method.upper()} {path} {status}: {errors[0].message}"
            return body
        assert response.mimetype in content or not content, (path, response.mimetype)
        return response.get_data(as_text=True)

    def _components(self) -> dict[str, Any]:
        return {"components": self.document["components"]}


@pytest.fixture
def check(feed_env: FeedEnv, trace_store: Any, settings: Settings) -> Checker:
    for adapter_id in ADAPTERS:
        make_adapter(settings.lora_output_dir, adapter_id, tags=["t"])
    return Checker(feed_env.app.test_client())


def test_every_route_answers_as_documented(check: Checker, feed_env: FeedEnv) -> None:
    started = check("post", "/api/finetune", 202, json={"config": {"maxSteps": 3}})
    run_id = started["runId"]
    check("post", "/api/finetune", 409, json={})
    check("post", "/api/finetune", 400, json={"config": {"loraRank": 0, "nope": 1}})
    check("post", "/api/finetune", 400, json={"configs": {}})
    check("get", "/api/finetune", 200)
    check("get", "/api/finetune?limit=0", 400)
    check("get", "/api/finetune/config/default", 200)
    check("get", "/api/finetune/schedule", 200)
    check("get", "/api/finetune/feeds", 200)
    runs = feed_env.app.extensions["tmde.manager"].runs
    emitter = feed_env.emitter(run_id)
    runs.record_event(emitter.emit("progress", step=1, total_steps=3, loss=1.5, eta_seconds=9))
    runs.record_event(emitter.emit("eval", step=2, eval_loss=1.2))
    check("get", f"/api/finetune/{run_id}", 200)
    check("get", "/api/finetune/run_0123456789ab", 404)
    check("get", f"/api/finetune/{run_id}/events", 200)
    check("get", f"/api/finetune/{run_id}/events?after=-1", 400)
    check("post", f"/api/finetune/{run_id}/cancel", 202)
    check("post", f"/api/finetune/{run_id}/cancel", 409)
    check("get", f"/api/finetune/{run_id}/progress", 200)  # a cancelled run: its terminal event
    check("get", f"/api/finetune/{run_id}/ws", 400)  # not an upgrade request

    check("get", "/api/adapters", 200)
    check("get", f"/api/adapters/{ADAPTERS[0]}", 200)
    check("get", "/api/adapters/run_zzzzzz", 404)
    check("get", "/api/adapters/active", 200)
    check("post", "/api/adapters/rollback", 409)
    check("post", f"/api/adapters/{ADAPTERS[0]}/activate", 200, json={"reason": "first"})
    check("post", f"/api/adapters/{ADAPTERS[1]}/activate", 200)
    check("get", "/api/adapters/active", 200)
    check("post", f"/api/adapters/{ADAPTERS[1]}/activate", 400, json={"why": "x"})
    check("post", "/api/adapters/rollback", 200, json={"reason": "undo"})
    check("patch", f"/api/adapters/{ADAPTERS[1]}", 200, json={"tags": ["stable"]})
    check("patch", f"/api/adapters/{ADAPTERS[1]}", 400, json={})
    check("post", f"/api/adapters/{ADAPTERS[1]}/export-gguf", 202)
    check("delete", f"/api/adapters/{ADAPTERS[0]}", 409)  # the active one
    check("delete", f"/api/adapters/{ADAPTERS[1]}", 204)

    check("get", "/healthz", 200)
    check("get", "/readyz", 503)  # no worker answers here
    check("get", "/metrics", 200)
    check("get", "/", 200)
    check("get", "/api/openapi.json", 200)

    documented = {(p, m) for p, ops in check.document["paths"].items() for m in ops}
    assert documented - check.seen == set(), "routes this test does not call"


def test_401_is_documented_for_every_protected_route(make_app: Any) -> None:
    check = Checker(make_app(api_token="a-token-of-sixteen-chars").test_client())
    for path, operations in check.document["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == [{}] or not path.startswith("/api/"):
                continue
            concrete = re.sub(r"\{\w+\}", "run_0123456789ab", path)
            check(method, concrete, 401)


def _bounds(document: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(field, bound keyword, bound, one past it) for every numeric bound of the config."""
    properties = document["components"]["schemas"]["FineTuneConfig"]["properties"]
    found = []
    for name, prop in properties.items():
        schema = next((o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"), prop)
        step = 1 if schema.get("type") == "integer" else 1e-6
        for keyword, sign in (("maximum", 1), ("minimum", -1), ("exclusiveMinimum", 0)):
            if keyword in schema:
                bound = schema[keyword]
                found.append((name, keyword, bound, bound + sign * step if sign else bound))
    return found


def test_one_past_each_documented_bound_is_refused(check: Checker) -> None:
    bounds = _bounds(check.document)
    assert {name for name, *_ in bounds} >= {"loraRank", "maxSteps", "evalSteps", "learningRate"}
    for name, keyword, bound, past in bounds:
        body = check("post", "/api/finetune", 400, json={"config": {name: past}})
        assert name in body["fields"], (name, keyword, past)
        if keyword != "exclusiveMinimum":  # another bad field keeps the run from starting
            other = {"epochs": 0} if name != "epochs" else {"seed": -1}
            body = check("post", "/api/finetune", 400, json={"config": {name: bound, **other}})
            assert name not in body["fields"], (name, keyword, bound)
