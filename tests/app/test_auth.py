"""API_TOKEN, request size limits and CORS."""

from __future__ import annotations

from typing import Any

import pytest

TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/finetune"),
        ("POST", "/api/finetune"),
        ("POST", "/api/finetune/run_abcdef/cancel"),
        ("GET", "/api/finetune/run_abcdef/progress"),
        ("GET", "/api/adapters"),
        ("POST", "/api/adapters/rollback"),
        ("DELETE", "/api/adapters/run_abcdef"),
    ],
)
def test_token_required_when_set(make_app: Any, method: str, path: str) -> None:
    client = make_app(api_token=TOKEN).test_client()
    response = client.open(path, method=method)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.get_json()["hint"]
    wrong = client.open(path, method=method, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.get_json()["error"] == "Invalid token"
    right = client.open(path, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code != 401


def test_query_token_only_for_get(make_app: Any) -> None:
    client = make_app(api_token=TOKEN).test_client()
    assert client.get(f"/api/finetune?access_token={TOKEN}").status_code == 200
    assert client.post(f"/api/adapters/rollback?access_token={TOKEN}").status_code == 401


def test_probes_metrics_contract_and_page_stay_open(make_app: Any) -> None:
    client = make_app(api_token=TOKEN).test_client()
    for path in ("/healthz", "/metrics", "/api/openapi.json", "/"):
        assert client.get(path).status_code in (200, 503), path


def test_no_token_configured_means_open(make_app: Any) -> None:
    assert make_app().test_client().get("/api/finetune").status_code == 200


def test_oversized_body_is_413_json(make_app: Any) -> None:
    client = make_app().test_client()
    response = client.post(
        "/api/finetune", data=b"{" + b" " * 100_000 + b"}", content_type="application/json"
    )
    assert response.status_code == 413 and "error" in response.get_json()


def test_cors_is_off_by_default(make_app: Any) -> None:
    client = make_app().test_client()
    response = client.get("/api/finetune", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_allows_only_listed_origins(make_app: Any) -> None:
    client = make_app(cors_origins=("https://ui.example",)).test_client()
    ok = client.options(
        "/api/finetune",
        headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
    )
    assert (
        ok.status_code == 204 and ok.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    )
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    other = client.get("/api/finetune", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    same = client.get("/api/finetune", headers={"Origin": "https://ui.example"})
    assert same.headers["Access-Control-Allow-Origin"] == "https://ui.example"
