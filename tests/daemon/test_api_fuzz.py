"""Property-based run of the feedback/task endpoints against the gateway's own OpenAPI schema:
whatever the body, never a 5xx, and every 4xx carries the one JSON error body. The schema comes
from the app object (nothing starts at import); the calls go to the real daemon over HTTP."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from lifelong.daemon.gateway.app import create_app
from lifelong.daemon.settings import load_settings

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi()).include(
    path_regex=r"^/v1/(feedback|tasks|interactions)"
)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_feedback_endpoints_never_fail_on_any_input(case, daemon):
    response = case.call(base_url=daemon.url, headers=daemon.headers("alice"))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error)
        assert error["message"]
