"""The data API end to end: a real daemon (tiny model, vLLM), the official openai client sending
an end user's key in OpenAI's `user` field, then export, erasure and export again through
`/admin/data` with the admin key."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


def test_export_then_erase_then_export_is_empty_and_the_interaction_is_gone(daemon):
    user = f"user-{uuid.uuid4().hex}"  # the daemon is shared: only this test's rows
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=daemon.key("alice"),
                           max_retries=0)
    ids = [client.chat.completions.create(
        model="lifelong", messages=[{"role": "user", "content": f"What is {i} + 1?"}],
        max_tokens=4, user=user).id for i in range(3)]
    # Feedback waits until its interaction is logged: after it, all three are in the store.
    for i in ids:
        rated = httpx.post(f"{daemon.url}/v1/feedback", headers=daemon.headers("alice"),
                           json={"kind": "rating", "interaction_id": i, "score": 1})
        assert rated.status_code == 201, rated.text
    admin = daemon.headers("ops")

    def export() -> list[dict]:  # type: ignore[type-arg]
        response = httpx.get(f"{daemon.url}/admin/data/export", params={"user_key": user},
                             headers=admin)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.text.splitlines()]

    rows = export()
    assert sorted(r["id"] for r in rows if r["type"] == "interaction") == sorted(ids)
    assert sum(r["type"] == "feedback" for r in rows) == 3

    erased = httpx.post(f"{daemon.url}/admin/data/erasures", json={"user_key": user},
                        headers=admin)
    assert erased.status_code == 200, erased.text
    receipt = erased.json()
    assert receipt["deleted"]["interactions"] == 3 and receipt["deleted"]["feedback"] == 3
    assert receipt["user_key"] == user and receipt["started_at"] <= receipt["finished_at"]

    assert export() == []
    gone = httpx.get(f"{daemon.url}/v1/interactions/{ids[0]}", headers=daemon.headers("alice"))
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "unknown_interaction"


def test_an_erasure_names_one_subject_and_needs_the_admin_scope(daemon):
    both = httpx.post(f"{daemon.url}/admin/data/erasures",
                      json={"principal": "a", "user_key": "b"}, headers=daemon.headers("ops"))
    assert both.status_code == 422
    assert both.json()["error"]["code"] == "invalid_subject"
    neither = httpx.get(f"{daemon.url}/admin/data/export", headers=daemon.headers("ops"))
    assert neither.status_code == 422
    refused = httpx.post(f"{daemon.url}/admin/data/erasures", json={"principal": "alice"},
                         headers=daemon.headers("alice"))
    assert refused.status_code == 403
