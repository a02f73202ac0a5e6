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
    assert annotations == {"promotions", "rollbacks", "rejections"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"])
