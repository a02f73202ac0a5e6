"""Property-based run of the whole API against the gateway's own OpenAPI schema, with a key of
each scope and with none: whatever the body, never a 5xx, and every 4xx carries the one JSON
error body. The schema comes from the app object (nothing starts at import); the calls go to the
real daemon (real vLLM on the tiny model) over HTTP.

The admin routes that start or change something (train, eval, promote, rollback, cancel) get only
bodies that break their schema: the daemon is shared, and a valid body would really train or swap
its champion. Their valid paths are covered by their own tests."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from lifelong.daemon.gateway.app import create_app
from lifelong.daemon.settings import load_settings

pytestmark = pytest.mark.integration

ACTIONS = r"^/admin/(train|eval|promote|rollback|training-runs/[^/]+/cancel)$"
PRINCIPALS = ["alice", "reader", "rater", "ops", None]  # None: no key at all


def _schema():
    return schemathesis.openapi.from_dict(create_app(load_settings()).openapi())


reads_and_writes = _schema().exclude(path_regex=ACTIONS)
actions = _schema().include(path_regex=ACTIONS)
actions.config.generation.update(modes=[GenerationMode.NEGATIVE])


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error)
        assert error["message"]


def _headers(daemon, principal: str | None) -> dict[str, str]:
    return daemon.headers(principal) if principal else {}


@pytest.mark.parametrize("principal", PRINCIPALS)
@reads_and_writes.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_to_any_route_fails_the_server(case, daemon, principal):
    _check(case.call(base_url=daemon.url, headers=_headers(daemon, principal), timeout=120))


@pytest.mark.parametrize("principal", PRINCIPALS)
@actions.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_malformed_admin_action_fails_the_server(case, daemon, principal):
    _check(case.call(base_url=daemon.url, headers=_headers(daemon, principal), timeout=120))


@pytest.mark.parametrize("path", ["/admin/eval-runs/{}", "/admin/training-runs/{}"])
def test_a_run_id_past_the_databases_integers_is_a_422(daemon, path):
    # Found by the run above: 2**63 overflowed SQLite's INTEGER and answered 500.
    response = httpx.get(daemon.url + path.format(2**63), headers=daemon.headers("ops"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"]
