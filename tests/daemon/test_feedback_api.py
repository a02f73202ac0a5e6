"""The feedback API over real HTTP: every kind lands in the database, bad input never does."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def ask(daemon):
    """Make an interaction as `principal` and return its id."""

    def make(principal: str = "alice", content: str = "What is 20 + 22?") -> str:
        client = openai.OpenAI(
            base_url=f"{daemon.url}/v1", api_key=daemon.key(principal), max_retries=0
        )
        return client.chat.completions.create(
            model="lifelong", messages=[{"role": "user", "content": content}], max_tokens=4
        ).id

    return make


def post(daemon, path: str, body: object, principal: str | None = "alice") -> httpx.Response:
    headers = daemon.headers(principal) if principal else {}
    return httpx.post(f"{daemon.url}{path}", json=body, headers=headers)


def test_each_kind_of_feedback_is_stored_and_read_back(daemon, ask):
    first, second = ask(), ask()
    items = [
        {"interaction_id": first, "kind": "rating", "score": 1},
        {"interaction_id": first, "kind": "correction", "text": "42"},
        {"interaction_id": first, "kind": "preference", "preferred_over": second},
        {"interaction_id": second, "kind": "preference", "rejected_text": "41"},
        {"interaction_id": first, "kind": "outcome", "passed": True, "reward": 1.0,
         "verifier": "exact_match", "details": {"expected": "42"}},
        {"interaction_id": second, "kind": "outcome", "passed": False},
    ]
    for item in items:
        response = post(daemon, "/v1/feedback", item)
        assert response.status_code == 201, response.text
        stored = response.json()
        assert stored["id"] > 0 and stored["principal"] == "alice"
        assert {k: stored[k] for k in item} == item
    read = httpx.get(f"{daemon.url}/v1/interactions/{first}", headers=daemon.headers("alice"))
    kinds = sorted(f["kind"] for f in read.json()["feedback"])
    assert kinds == ["correction", "outcome", "preference", "rating"]


def test_batch_is_all_or_nothing(daemon, ask):
    good = ask()
    batch = {"items": [
        {"interaction_id": good, "kind": "rating", "score": -1},
        {"interaction_id": "chatcmpl-doesnotexist", "kind": "rating", "score": 1},
    ]}
    response = post(daemon, "/v1/feedback:batch", batch)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_interaction"
    read = httpx.get(f"{daemon.url}/v1/interactions/{good}", headers=daemon.headers("alice"))
    assert read.json()["feedback"] == []
    batch["items"] = batch["items"][:1] * 3
    response = post(daemon, "/v1/feedback:batch", batch)
    assert response.status_code == 201 and len(response.json()["items"]) == 3


def test_feedback_on_unknown_interaction_is_404(daemon):
    response = post(daemon, "/v1/feedback", {"interaction_id": "nope", "kind": "rating", "score": 1})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"kind": "rating", "score": 7}, "score"),
        ({"kind": "rating"}, "score"),
        ({"kind": "mood", "score": 1}, "kind"),
        ({"kind": "preference"}, "preference"),
        ({"kind": "outcome", "verifier": "x"}, "outcome"),
        ({"kind": "outcome", "passed": True, "verifier": "numeric",
          "details": {"reference": "eight"}}, "outcome"),
        ({"kind": "outcome", "passed": True, "verifier": "exact_match",
          "details": {"reference": "8", "options": {"fuzzy": True}}}, "outcome"),
        ({"kind": "correction", "text": ""}, "text"),
    ],
)
def test_malformed_or_out_of_range_feedback_is_422_naming_the_field(daemon, ask, item, field):
    response = post(daemon, "/v1/feedback", {"interaction_id": ask(), **item})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in (error["param"] or "") or field in error["message"]


def test_an_outcome_with_a_reference_for_a_verifier_unknown_here_is_stored_as_given(daemon, ask):
    item = {"kind": "outcome", "passed": True, "verifier": "my_unit_tests",
            "details": {"reference": "eight"}}
    response = post(daemon, "/v1/feedback", {"interaction_id": ask(), **item})
    assert response.status_code == 201, response.text


def test_preference_over_itself_is_422(daemon, ask):
    same = ask()
    response = post(
        daemon, "/v1/feedback",
        {"interaction_id": same, "kind": "preference", "preferred_over": same},
    )
    assert response.status_code == 422 and "itself" in response.json()["error"]["message"]


def test_body_over_the_limit_is_413(daemon, ask):
    huge = {"interaction_id": ask(), "kind": "correction", "text": "x" * 100_000}
    response = post(daemon, "/v1/feedback", huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


def test_tasks_are_registered(daemon):
    task = {"prompt": "What is 2 + 2?", "reference": "4", "verifier": "exact_match",
            "tags": ["add1"]}
    response = post(daemon, "/v1/tasks", task)
    assert response.status_code == 201, response.text
    assert response.json()["id"] and response.json()["reference"] == "4"
    both = {**task, "messages": [{"role": "user", "content": "hi"}]}
    assert post(daemon, "/v1/tasks", both).status_code == 422
    # Held out: what the gate judges on, so a key with `evals` (here admin) registers it.
    sides = [post(daemon, "/v1/tasks", {**task, "heldout": side}, "ops" if side else "alice")
             .json()["heldout"] for side in (True, False)]
    assert sides == [True, False]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"verifier": "exact_matsch"}, "exact_matsch"),
        ({"verifier": "regex", "options": {"pattern": "(unclosed"}}, "pattern"),
        ({"verifier": "numeric", "options": {"abs_tol": "close"}}, "abs_tol"),
    ],
)
def test_a_task_whose_verifier_cannot_run_is_refused_at_registration(daemon, change, message):
    task = {"prompt": "What is 2 + 2?", "reference": "4", "verifier": "exact_match", **change}
    response = post(daemon, "/v1/tasks", task)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]


# --- who may do what ---------------------------------------------------------------------------

HI = [{"role": "user", "content": "hi"}]
RATING = {"interaction_id": "x", "kind": "rating", "score": 1}
INFERENCE = [
    ("POST", "/v1/chat/completions", {"model": "lifelong", "messages": HI, "max_tokens": 1}),
    ("POST", "/v1/completions", {"model": "lifelong", "prompt": "hi", "max_tokens": 1}),
    ("GET", "/v1/models", None),
]
FEEDBACK = [
    ("POST", "/v1/feedback", RATING),
    ("POST", "/v1/feedback:batch", {"items": [RATING]}),
    ("POST", "/v1/tasks", {"prompt": "p", "reference": "r", "verifier": "exact_match"}),
    ("GET", "/v1/interactions/x", None),
]
ENDPOINTS = INFERENCE + FEEDBACK


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_every_endpoint_needs_a_key(daemon, method, path, body):
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic abc"}):
        response = httpx.request(method, f"{daemon.url}{path}", json=body, headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(("method", "path", "body"), FEEDBACK)
def test_infer_only_key_cannot_give_feedback(daemon, method, path, body):
    headers = daemon.headers("reader")
    response = httpx.request(method, f"{daemon.url}{path}", json=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


@pytest.mark.parametrize(("method", "path", "body"), INFERENCE)
def test_feedback_only_key_cannot_infer(daemon, method, path, body):
    headers = daemon.headers("rater")
    response = httpx.request(method, f"{daemon.url}{path}", json=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_feedback_only_on_own_interactions_unless_admin(daemon, ask):
    alices = ask("alice")
    rating = {"interaction_id": alices, "kind": "rating", "score": 1}
    response = post(daemon, "/v1/feedback", rating, principal="bob")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "foreign_interaction"
    read = httpx.get(f"{daemon.url}/v1/interactions/{alices}", headers=daemon.headers("bob"))
    assert read.status_code == 403
    assert post(daemon, "/v1/feedback", rating, principal="ops").status_code == 201
    # bob's batch touching alice's interaction writes nothing, not even his own item
    bobs = ask("bob")
    batch = {"items": [{"interaction_id": bobs, "kind": "rating", "score": 1}, rating]}
    assert post(daemon, "/v1/feedback:batch", batch, principal="bob").status_code == 403
    read = httpx.get(f"{daemon.url}/v1/interactions/{bobs}", headers=daemon.headers("bob"))
    assert read.json()["feedback"] == []


def test_keys_never_reach_the_log_or_the_database(daemon, ask):
    ask("alice")
    assert "sk-alice" not in daemon.log.read_text()
    stored = b"".join(path.read_bytes() for path in daemon.data_dir.glob("lifelong.db*"))
    assert b"sk-alice" not in stored
