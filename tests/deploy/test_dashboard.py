"""The Grafana dashboard: the checked-in JSON is exactly what `deploy/grafana/dashboard.py`
builds, and it holds the rows a reviewer reads. (Every query is run against a real Prometheus in
tests/daemon/test_metrics.py.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GENERATOR = DEPLOY / "grafana" / "dashboard.py"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lifelong.json"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lifelong_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_json_is_what_the_generator_builds(generator: ModuleType) -> None:
    assert DASHBOARD.read_text() == generator.render(), (
        "deploy/grafana/dashboards/lifelong.json is stale: run "
        ".venv/bin/python deploy/grafana/dashboard.py")
    assert generator.main(["dashboard.py", "--check"]) == 0


def test_the_dashboard_has_the_review_rows_and_unique_panel_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "lifelong — adapter promotions"
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == [
        "Promotions: who is champion, and every change",
        "Candidate vs champion: the last decision and why",
        "Canary: is the candidate safe for users?",
        "Live quality by version (outcome feedback)",
        "Feedback volume",
        "Training",
        "Practice (GRPO on verifiable tasks)",
        "Replicas: does every gateway and vLLM server serve the champion?",
        "Serving health",
    ]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    annotations = {a["name"] for a in dashboard["annotations"]["list"]}
    assert annotations == {"promotions", "rollbacks", "rejections", "canary starts",
                           "canary promotions", "automatic rollbacks"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"])


def test_the_canary_row_shows_state_sides_the_bounds_against_the_margin_and_decisions() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    start = next(i for i, p in enumerate(panels) if p["title"].startswith("Canary:"))
    end = next(i for i, p in enumerate(panels) if i > start and p["type"] == "row")
    exprs = {t["expr"] for p in panels[start + 1:end] for t in p["targets"]}
    for metric in ("lifelong_canary_open", "lifelong_canary_share",
                   "lifelong_canary_started_timestamp_seconds", "lifelong_canary_pass_rate",
                   "lifelong_canary_outcomes", "lifelong_canary_pass_rate_difference",
                   "-lifelong_canary_margin", "lifelong_canary_decisions_total"):
        assert any(metric in expr for expr in exprs), metric
    bounds = next(p for p in panels if p["title"].startswith("Pass-rate difference"))
    # the rollback line: a threshold drawn at 0
    assert [s["value"] for s in bounds["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        None, 0]
    assert bounds["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
