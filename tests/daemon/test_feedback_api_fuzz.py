"""Property-based run of the feedback/task endpoints against the gateway's own OpenAPI schema:
whatever the body, never a 5xx, and every 4xx carries the one JSON error body."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def feedback_schema(daemon):
    schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
    return schema.include(path_regex=r"^/v1/(feedback|tasks|interactions)")


schema = schemathesis.pytest.from_fixture("feedback_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_feedback_endpoints_never_fail_on_any_input(case, daemon):
    response = case.call(headers=daemon.headers("alice"))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error)
        assert error["message"]
