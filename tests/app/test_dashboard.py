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
    assert set(assets) == {"/static/style.css", "/static/chart.js", "/static/app.js"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        response.close()
    for element in ("config", "start", "runs", "adapters", "chart", "cancel", "stat-eta"):
        assert f'id="{element}"' in html, element


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
