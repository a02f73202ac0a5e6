"""The gateway's one exception -> HTTP answer mapping: the handlers answer with it, and the serving
metrics label a failed request with the same status (`status_of`)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from lifelong.daemon.catalog import UnknownModel
from lifelong.daemon.gateway import errors
from lifelong.daemon.gateway.rate_limit import RateLimited
from lifelong.daemon.upstream import UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from lifelong.evals.verifiers import InvalidVerifierOptions
from lifelong.feedback_store import errors as store_errors

RAISED = {
    "unknown_model": lambda: UnknownModel("nope"),
    "unknown_interaction": lambda: store_errors.UnknownInteraction("no such interaction"),
    "text_too_long": lambda: store_errors.TextTooLong("too long"),
    "database_unavailable": lambda: store_errors.DatabaseUnavailable("gone\nhost=db"),
    "operational_error": lambda: OperationalError("SELECT 1", {}, Exception("refused db:5432")),
    "verifier_options": lambda: InvalidVerifierOptions("regex", "bad pattern"),
    "upstream_unavailable": lambda: UpstreamUnavailable("http://10.0.0.1:8000 is down"),
    "upstream_timeout": lambda: UpstreamTimeout("slow"),
    "rate_limited": lambda: RateLimited(limit="requests", per_minute=60, retry_after_s=3),
    "upstream_rejected": lambda: UpstreamRejected(400, b'{"error": {"message": "bad"}}'),
    "unexpected": lambda: ValueError("boom"),
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    errors.install(app)

    @app.get("/raise/{name}")
    def raise_(name: str) -> None:
        raise RAISED[name]()

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("name", sorted(RAISED))
def test_metrics_label_a_failed_request_with_the_status_the_client_gets(client, name):
    answered = client.get(f"/raise/{name}")
    assert answered.status_code == errors.status_of(RAISED[name]())
    if name != "upstream_rejected":  # vLLM's own body, passed through
        assert set(answered.json()["error"]) == {"message", "type", "param", "code"}


def test_database_and_upstream_details_go_to_the_log_not_the_client(client, caplog):
    for name in ("database_unavailable", "operational_error", "upstream_unavailable"):
        body = client.get(f"/raise/{name}").text
        assert "db" not in body.replace("database", "") and "10.0.0.1" not in body
    assert "refused db:5432" in caplog.text and "10.0.0.1" in caplog.text
