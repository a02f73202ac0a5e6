"""The gateway while its database is away: feedback and reads get 503 with Retry-After (no
internals), a statement stuck on a lock ends at the statement timeout, `/readyz` says the
database is not answering, and a feedback call retried with its Idempotency-Key is stored once.

The gateway runs in-process (its real lifespan) on a real PostgreSQL database of its own, in
front of a vLLM URL nobody listens on (these routes never reach vLLM). The database is made to
refuse for real (`ALLOW_CONNECTIONS false`, its sessions ended), to stall (a table locked
from another session), and to hang: reached through a relay that stops relaying, it accepts
connections and answers nothing, on new and open connections alike (what a stopped server
process or a black-holed network looks like; PostgreSQL itself cannot be made to do it).
That inference keeps answering and its log catches up after an outage is tested where the
interaction log is (tests/feedback_store/test_interaction_log.py).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, make_url, select
from sqlalchemy.pool import NullPool

from lifelong.daemon.gateway.health import readiness
from lifelong.feedback_store.database import make_engine, upgrade
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.models import Feedback
from lifelong.feedback_store.records import NewInteraction

pytestmark = pytest.mark.postgres

KEYS = {"alice": "sk-alice", "bob": "sk-bob"}


class Database:
    """The gateway's database, and a session on the server's own database to act on it."""

    def __init__(self, url: str, server_url: str) -> None:
        self.url = url
        self.name = make_url(url).database
        self.server = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        self.engine = make_engine(url)

    def refuse(self) -> None:
        with self.server.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()")

    def accept(self) -> None:
        with self.server.connect() as connection:
            connection.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def interaction(self, principal: str = "alice") -> str:
        record = NewInteraction(
            id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
            endpoint="chat.completions", model="lifelong", response_text="46",
            request={"messages": [{"role": "user", "content": "What is 12 + 34?"}]},
            principal=principal,
        )
        with self.engine.begin() as connection:
            from sqlalchemy.orm import Session

            with Session(connection) as session:
                add_interactions(session, records=[record], heldout_fraction=0.0)
        return record.id

    def feedback_rows(self) -> int:
        with self.engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(Feedback))


@pytest.fixture
def database(fresh_postgres_url: str, postgres_server_url: str) -> Iterator[Database]:
    db = Database(fresh_postgres_url, postgres_server_url)
    upgrade(db.engine)
    yield db
    db.accept()
    db.engine.dispose()
    db.server.dispose()


class Relay:
    """A TCP relay to the PostgreSQL server that can freeze: then it still accepts connections
    and reads what clients send, and forwards nothing either way until it thaws."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        return make_url(database_url).set(host="127.0.0.1", port=self.port) \
            .render_as_string(hide_password=False)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client = self.listener.accept()[0]
            except OSError:
                return
            self.sockets.append(client)
            while self.frozen.is_set() and not self.closed.is_set():
                time.sleep(0.05)
            server = socket.create_connection(self.target)
            self.sockets.append(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set() and not self.closed.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        self.closed.set()
        self.frozen.clear()
        self.listener.close()
        for end in self.sockets:
            end.close()


def within(bound_s: float, call):
    """`call()`'s result; a call still running after `bound_s` fails the test (instead of hanging
    the run, as a call on today's code would: psycopg's connect timeout is ~130 s, and a query
    on an open connection has none)."""
    done: list = []
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    thread.join(bound_s)
    assert done, f"no answer within {bound_s} s"
    return done[0]


def gateway(in_process_gateway, database_url: str, tmp_path: Path,
            **gateway_settings) -> Iterator[TestClient]:
    yield from in_process_gateway(
        tmp_path / "data", KEYS, gateway=gateway_settings,
        database={"url": database_url, "connect_timeout_s": 1, "statement_timeout_s": 1})


@pytest.fixture
def client(in_process_gateway, database: Database, tmp_path: Path) -> Iterator[TestClient]:
    yield from gateway(in_process_gateway, database.url, tmp_path)


@pytest.fixture
def relay(database: Database) -> Iterator[Relay]:
    server = make_url(database.url)
    running = Relay((server.host or "127.0.0.1", server.port or 5432))
    yield running
    running.close()


@pytest.fixture
def relayed_client(in_process_gateway, database: Database, relay: Relay,
                   tmp_path: Path) -> Iterator[TestClient]:
    # Every scrape reads the store (no cache), so one is sure to meet the hung database.
    clients = gateway(in_process_gateway, relay.url(database.url), tmp_path, metrics_cache_s=0)
    yield next(clients)
    relay.frozen.clear()  # what still waits on the database finishes; shutdown does not hang
    # A failed test may have left calls waiting in the test client: shut down in a thread, so
    # the failure is reported rather than the run hanging.
    within(60, lambda: next(clients, None))


def until(condition, bound_s: float = 60.0) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def rating(interaction_id: str, score: float = 1) -> dict:
    return {"interaction_id": interaction_id, "kind": "rating", "score": score}


def unavailable(response, database: Database) -> None:
    """A 503 in OpenAI's shape, saying when to retry, naming nothing internal."""
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "database_unavailable")
    for internal in ("127.0.0.1", "5432", "postgres", database.name, "psycopg", "Error"):
        assert internal not in response.text


def readiness_reason(client: TestClient) -> str:
    # The test's vLLM URL is never ready: the reason names the model server, and the database
    # too while it is away.
    answer = client.get("/readyz")
    assert answer.status_code == 503 and set(answer.json()) == {"status", "reason"}
    return answer.json()["reason"]


def test_while_the_database_refuses_feedback_and_reads_are_503_and_readyz_says_why(
    client, database
):
    interaction_id = database.interaction()
    assert client.post("/v1/feedback", json=rating(interaction_id)).status_code == 201
    assert "database" not in readiness_reason(client)
    database.refuse()
    unavailable(client.post("/v1/feedback", json=rating(interaction_id)), database)
    unavailable(client.post("/v1/feedback:batch", json={"items": [rating(interaction_id)]}),
                database)
    unavailable(client.get(f"/v1/interactions/{interaction_id}"), database)
    until(lambda: "database is not answering" in readiness_reason(client))
    assert client.get("/metrics").status_code == 200  # the figures it had, not an error
    database.accept()
    until(lambda: "database" not in readiness_reason(client))
    assert client.post("/v1/feedback", json=rating(interaction_id)).status_code == 201
    assert client.get(f"/v1/interactions/{interaction_id}").status_code == 200
    assert database.feedback_rows() == 2


def test_a_statement_stuck_on_a_lock_ends_at_the_statement_timeout(client, database):
    interaction_id = database.interaction()
    locker = database.engine.connect()
    transaction = locker.begin()
    locker.exec_driver_sql("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE")
    # Today's code would wait for the lock as long as it is held: let go in the end, so such a
    # failure shows as a wrong status rather than a hung test run.
    release = threading.Timer(60, transaction.rollback)
    release.start()
    try:
        unavailable(client.post("/v1/feedback", json=rating(interaction_id)), database)
        unavailable(client.get(f"/v1/interactions/{interaction_id}"), database)
    finally:
        release.cancel()
        if transaction.is_active:
            transaction.rollback()
        locker.close()
    assert client.post("/v1/feedback", json=rating(interaction_id)).status_code == 201


def test_a_retry_with_the_same_idempotency_key_returns_the_first_result(client, database):
    interaction_id = database.interaction()
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/v1/feedback", json=rating(interaction_id), headers=key)
    again = client.post("/v1/feedback", json=rating(interaction_id), headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    batch = {"items": [rating(interaction_id), rating(interaction_id, -1)]}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/v1/feedback:batch", json=batch, headers=key)
    again = client.post("/v1/feedback:batch", json=batch, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and len(first.json()["items"]) == 2
    assert database.feedback_rows() == 3


def test_an_idempotency_key_is_the_principals_own(client, database):
    key = {"Idempotency-Key": "same-key"}
    mine = client.post("/v1/feedback", json=rating(database.interaction("alice")), headers=key)
    bobs = client.post("/v1/feedback", json=rating(database.interaction("bob")),
                       headers={**key, "Authorization": f"Bearer {KEYS['bob']}"})
    assert mine.status_code == bobs.status_code == 201
    assert mine.json()["id"] != bobs.json()["id"]


def test_an_idempotency_key_reused_for_other_feedback_is_409(client, database):
    interaction_id = database.interaction()
    key = {"Idempotency-Key": "k1"}
    assert client.post("/v1/feedback", json=rating(interaction_id), headers=key).status_code == 201
    reused = client.post("/v1/feedback", json=rating(interaction_id, -1), headers=key)
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert database.feedback_rows() == 1


@pytest.mark.parametrize("key", ["", "with space", "x" * 256, "ключ".encode()])
def test_a_malformed_idempotency_key_is_422(client, database, key):
    answer = client.post("/v1/feedback", json=rating(database.interaction()),
                         headers={"Idempotency-Key": key})
    assert answer.status_code == 422
    assert answer.json()["error"]["param"] == "Idempotency-Key"


def test_while_the_database_hangs_every_call_ends_within_a_bound(relayed_client, relay, database):
    client = relayed_client
    interaction_id = database.interaction()
    # The gateway's pool now holds open connections through the relay.
    assert client.post("/v1/feedback", json=rating(interaction_id)).status_code == 201
    assert client.get(f"/v1/interactions/{interaction_id}").status_code == 200
    assert client.get("/metrics").status_code == 200
    relay.frozen.set()
    # This scrape takes the pooled connection and waits on it until the relay thaws.
    threading.Thread(target=client.get, args=("/metrics",), daemon=True).start()
    unavailable(within(30, lambda: client.post("/v1/feedback", json=rating(interaction_id))),
                database)
    unavailable(within(30, lambda: client.get(f"/v1/interactions/{interaction_id}")), database)
    until(lambda: "database is not answering" in within(30, lambda: readiness_reason(client)))
    for _ in range(2):  # the last figures, not a wait for the scrape stuck on the database
        assert within(30, lambda: client.get("/metrics")).status_code == 200
    # Reads after the pool was dropped connect afresh, bounded by the connect timeout.
    unavailable(within(30, lambda: client.get(f"/v1/interactions/{interaction_id}")), database)
    relay.frozen.clear()
    until(lambda: "database" not in readiness_reason(client))
    assert client.post("/v1/feedback", json=rating(interaction_id, -1)).status_code == 201
    assert client.get(f"/v1/interactions/{interaction_id}").status_code == 200


@pytest.mark.parametrize(("model_ready", "database_up", "code", "status"), [
    (True, True, 200, "ready"),
    (True, False, 200, "degraded"),  # every replica shares the database: stay in the balancer
    (False, True, 503, "unavailable"),
    (False, False, 503, "unavailable"),
])
def test_readiness_fails_on_the_model_server_and_degrades_on_the_database(
        model_ready, database_up, code, status):
    answer_code, body, retry_after = readiness(model_ready=model_ready, model_retry_after_s=0,
                                               database_up=database_up)
    assert (answer_code, body["status"]) == (code, status)
    assert (retry_after > 0) == (code == 503)
    assert ("database is not answering" in body.get("reason", "")) == (not database_up)
