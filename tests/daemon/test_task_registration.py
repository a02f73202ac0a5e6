"""Registering tasks through a real gateway app (in-process, real SQLite, no vLLM: these routes
never reach it): held-out tasks and `family:` tags need the `evals` scope, since they decide what
the gate judges on; patterns longer than `evals.verifiers.max_pattern_chars` are a 422 naming the
cap; patterns only a backtracking engine runs are refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lifelong.daemon.gateway.app import create_app
from lifelong.daemon.settings import Settings
from lifelong.evals import sandbox
from lifelong.feedback_store.database import make_engine, upgrade

KEYS = {"app": ["infer", "feedback"], "curator": ["feedback", "evals"], "ops": ["admin"]}
TASK = {"prompt": "What is 2 + 2?", "reference": "4", "verifier": "exact_match"}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path,
        # A port nothing listens on: the routes tested here never ask vLLM.
        vllm={"upstreams": ["http://127.0.0.1:9"]},
        gateway={"api_keys": [{"principal": name, "scopes": scopes,
                               "sha256": hashlib.sha256(f"sk-{name}".encode()).hexdigest()}
                              for name, scopes in KEYS.items()]},
        evals={"general_suite": False, "verifiers": {"max_pattern_chars": 50}},
        training={"anchor_fraction": 0.0}, schedule={"enabled": False},
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        yield client


def post(client: TestClient, path: str, body: dict, principal: str):
    return client.post(path, json=body, headers={"Authorization": f"Bearer sk-{principal}"})


@pytest.mark.parametrize("steering", [{"heldout": True}, {"tags": ["add", "family:add"]}])
def test_a_feedback_key_cannot_choose_what_the_gate_judges_on(gateway, steering):
    refused = post(gateway, "/v1/tasks", {**TASK, **steering}, "app")
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_scope" and "`evals` scope" in error["message"]
    for principal in ("curator", "ops"):
        assert post(gateway, "/v1/tasks", {**TASK, **steering}, principal).status_code == 201


def test_a_feedback_key_still_registers_tasks_that_do_not_steer_the_gate(gateway):
    for body in (TASK, {**TASK, "heldout": False, "tags": ["add"]}):
        response = post(gateway, "/v1/tasks", body, "app")
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("task", [
    {**TASK, "verifier": "regex", "options": {"pattern": "a" * 51}},
    {**TASK, "verifier": "regex", "reference": "a" * 51},
    {**TASK, "verifier": "json", "reference": "",
     "options": {"schema": {"properties": {"x": {"pattern": "a" * 51}}}}},
])
def test_a_pattern_over_the_cap_is_a_422_naming_the_cap(gateway, task):
    response = post(gateway, "/v1/tasks", task, "app")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "pattern_too_long" and error["param"] == "options"
    assert "51 characters is longer than the 50 allowed (evals.verifiers.max_pattern_chars)" \
        in error["message"]


def test_a_pattern_at_the_cap_registers(gateway):
    task = {**TASK, "verifier": "regex", "options": {"pattern": "a" * 50}}
    assert post(gateway, "/v1/tasks", task, "app").status_code == 201


def test_a_backtracking_only_pattern_is_refused_at_registration(gateway):
    task = {**TASK, "verifier": "regex", "options": {"pattern": r"(?=\d)\d+"}}
    response = post(gateway, "/v1/tasks", task, "app")
    assert response.status_code == 422 and "RE2 syntax" in response.json()["error"]["message"]


def test_an_outcome_whose_reference_pattern_is_over_the_cap_is_a_422(gateway):
    # Such an outcome becomes a practice task, so its pattern is capped like a task's.
    outcome = {"interaction_id": "chatcmpl-x", "kind": "outcome", "passed": True,
               "verifier": "regex", "details": {"reference": "a" * 51}}
    response = post(gateway, "/v1/feedback", outcome, "app")
    assert response.status_code == 422 and response.json()["error"]["code"] == "pattern_too_long"


def test_a_python_tests_task_is_refused_where_the_sandbox_cannot_isolate_it(gateway, monkeypatch):
    task = {"prompt": "Write add(a, b).", "reference": "assert add(2, 3) == 5\n",
            "verifier": "python_tests"}
    assert post(gateway, "/v1/tasks", task, "app").status_code == 201  # every layer here
    # The probe reports no user namespaces (as under systemd's RestrictNamespaces=yes).
    found = sandbox.isolation()
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.Isolation(
        namespaces=False, landlock_abi=found.landlock_abi, seccomp=found.seccomp))
    refused = post(gateway, "/v1/tasks", task, "app")
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "user and mount namespaces" in message and "evals.sandbox.isolation" in message
    tests_nothing = post(gateway, "/v1/tasks", {**task, "reference": "print(add(2, 3))\n"}, "app")
    assert tests_nothing.status_code == 422 and "tests nothing" in tests_nothing.text


def test_admin_status_shows_the_sandbox_level_and_layers(gateway):
    status = gateway.get("/admin/status", headers={"Authorization": "Bearer sk-ops"})
    assert status.status_code == 200, status.text
    assert status.json()["sandbox"] == sandbox.describe()
    assert status.json()["sandbox"]["isolation"] == "full"
