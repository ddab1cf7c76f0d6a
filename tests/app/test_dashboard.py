"""GET / serves the dashboard: static files only, nothing fetched from outside the API."""

from __future__ import annotations

import re
from pathlib import Path

from tests.app.feeds import FeedEnv

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"


def test_index_and_its_assets_are_served(feed_env: FeedEnv) -> None:
    client = feed_env.app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Cache-Control"] == "no-cache"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert set(assets) == {
        "/static/style.css",
        "/static/chart.js",
        "/static/gate.js",
        "/static/app.js",
    }
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        response.close()
    for element in ("config", "start", "runs", "adapters", "chart", "cancel", "stat-eta"):
        assert f'id="{element}"' in html, element
    # the run page's gate card, lineage and samples (filled by gate.js)
    for element in ("gate", "gate-decision", "gate-criteria", "gate-drift", "samples"):
        assert f'id="{element}"' in html, element
    assert 'id="run-lineage"' in html and 'id="samples-card"' in html


def test_no_asset_reaches_outside_the_api() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} references an external URL"


def test_the_api_it_uses_exists(feed_env: FeedEnv) -> None:
    """Every endpoint app.js calls answers (the paths are not typos)."""
    script = (STATIC / "app.js").read_text()
    for path in ("/api/finetune/config/default", "/api/finetune?limit=50", "/events?after="):
        assert path in script, path
    client = feed_env.app.test_client()
    run_id = feed_env.make_run()
    assert client.get("/api/finetune/config/default").status_code == 200
    assert client.get("/api/finetune?limit=50").status_code == 200
    assert client.get(f"/api/finetune/{run_id}/events?after=0&limit=1000").status_code == 200
    assert "/ws${after}" in script and "/cancel" in script


def test_gate_js_sets_text_only_and_fetches_the_adapter(feed_env: FeedEnv) -> None:
    """Samples are model output from debate traces: gate.js never parses data as HTML, and
    the adapter endpoint it reads (samples, lineage) answers 404 JSON for an unknown id."""
    script = (STATIC / "gate.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script and "/api/adapters/${" in script
    app = (STATIC / "app.js").read_text()
    assert "Gate.show(run)" in app and "Gate.clear()" in app and "Gate.title(" in app
    response = feed_env.app.test_client().get("/api/adapters/run_nothere001")
    assert response.status_code == 404 and response.is_json
