"""Erasure and retention on real SQLite and PostgreSQL: what goes, what stays, with writers
running alongside (the interaction log and the feedback committer keep writing while a
deletion runs in batches)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from lifelong.feedback_store.deletion import Subject, erase, expire
from lifelong.feedback_store.errors import InvalidSubject, UnknownInteraction
from lifelong.feedback_store.export import export
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions, get_interaction
from lifelong.feedback_store.models import (
    Feedback,
    FeedbackRequest,
    Interaction,
    Rollout,
    Task,
)
from lifelong.feedback_store.records import (
    Correction,
    NewInteraction,
    NewTask,
    Preference,
    Rating,
)
from lifelong.feedback_store.rollouts import NewRollout, add_rollouts
from lifelong.feedback_store.runs import start_training_run
from lifelong.feedback_store.tasks import add_task

Build = Callable[..., NewInteraction]


def _store(sessions: sessionmaker[Session], records: list[NewInteraction], *,
           heldout: bool = False) -> list[str]:
    with sessions.begin() as session:
        add_interactions(session, records=records, heldout_fraction=float(heldout))
    return [record.id for record in records]


def _rate(sessions: sessionmaker[Session], principal: str, items: list) -> list[int]:  # type: ignore[type-arg]
    with sessions.begin() as session:
        rows = add_feedback(session, items=items, principal=principal, admin=True)
        return [row.id for row in rows]


def _orphans(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Rows pointing at rows that are gone (the foreign keys forbid the first two; the
    idempotency records' id lists are JSON, which nothing but deletion.py keeps consistent)."""
    with sessions() as session:
        interactions = select(Interaction.id)
        feedback_ids = set(session.scalars(select(Feedback.id)))
        requests = session.scalars(select(FeedbackRequest.feedback_ids)).all()
        return {
            "feedback": session.scalar(select(func.count()).select_from(Feedback).where(
                Feedback.interaction_id.not_in(interactions)
                | (Feedback.preferred_over.is_not(None)
                   & Feedback.preferred_over.not_in(interactions)))) or 0,
            "rollouts": session.scalar(select(func.count()).select_from(Rollout).where(
                Rollout.task_id.not_in(select(Task.id)))) or 0,
            "feedback_requests": sum(not set(ids) <= feedback_ids for ids in requests),
        }


def _count(sessions: sessionmaker[Session], model: type, *where) -> int:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _alice_and_bob(sessions: sessionmaker[Session], build: Build) -> dict[str, list]:  # type: ignore[type-arg]
    """alice's answers to two end users, bob's answers, feedback crossing between them, an
    idempotency record per principal, and a task of alice's with rollouts."""
    alice = _store(sessions, [build(principal="alice", user_key=f"u{i % 2}") for i in range(23)])
    heldout = _store(sessions, [build(principal="alice", user_key="u0")], heldout=True)
    bob = _store(sessions, [build(principal="bob", user_key="u0") for _ in range(11)])
    alice_feedback = _rate(sessions, "alice", [Rating(i, 1.0) for i in alice + heldout]
                           + [Correction(alice[0], "46!")])
    # bob's feedback on alice's answers goes with them; his preference for his own answer over
    # one of alice's too (it names hers as preferred_over).
    bob_on_alice = _rate(sessions, "bob", [Rating(alice[1], -1.0),
                                           Preference(bob[0], preferred_over=alice[2])])
    alice_on_bob = _rate(sessions, "alice", [Rating(bob[1], 1.0)])
    bob_own = _rate(sessions, "bob", [Rating(i, 0.5) for i in bob])
    now = datetime.now(UTC)
    with sessions.begin() as session:
        session.execute(insert(FeedbackRequest), [
            {"principal": "alice", "idempotency_key": "k1", "request_sha256": "0" * 64,
             "feedback_ids": alice_feedback[:3], "created_at": now},
            {"principal": "bob", "idempotency_key": "k2", "request_sha256": "0" * 64,
             "feedback_ids": bob_on_alice, "created_at": now},
            {"principal": "bob", "idempotency_key": "k3", "request_sha256": "0" * 64,
             "feedback_ids": bob_own[:2], "created_at": now},
        ])
        task = add_task(session, task=NewTask(reference="46", verifier="exact_match",
                                              prompt="12 + 34 ="), principal="alice",
                        heldout_fraction=0.0)
        run = start_training_run(session, method="grpo", parent_version=None, config={})
        add_rollouts(session, training_run_id=run.id, round=0, rollouts=[
            NewRollout(task.id, "base", s, "46", "stop", 1.0, True) for s in range(4)])
    return {"alice": alice + heldout, "bob": bob, "alice_feedback": alice_feedback,
            "bob_on_alice": bob_on_alice, "alice_on_bob": alice_on_bob, "bob_own": bob_own}


class _Writers:
    """Threads writing like users do while a deletion runs: bob's new answers with a rating
    each (all must survive), and feedback racing onto the rows being deleted (each must either
    be deleted with them or refused, never left pointing at nothing)."""

    def __init__(self, sessions: sessionmaker[Session], build: Build, *,
                 racing_onto: list[str], created_at: Callable[[], datetime] | None = None):
        self.sessions, self.build, self.racing_onto = sessions, build, racing_onto
        self.created_at = created_at or (lambda: datetime.now(UTC))
        self.stop = threading.Event()
        self.written: list[str] = []
        self.rated: list[int] = []
        self.refused = 0
        self.raced = 0  # feedback written onto the rows being deleted, before they went
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(target,))
                        for target in (self._bob, self._race)]

    def __enter__(self) -> _Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not swallowed
            self.errors.append(exc)

    def _bob(self) -> None:
        while not self.stop.is_set():
            record = self.build(principal="bob", user_key="u0", created_at=self.created_at())
            _store(self.sessions, [record])
            self.written.append(record.id)
            self.rated += _rate(self.sessions, "bob", [Rating(record.id, 1.0)])

    def _race(self) -> None:
        for interaction_id in self.racing_onto:
            if self.stop.is_set():
                return
            try:
                _rate(self.sessions, "carol", [Rating(interaction_id, 0.0)])
                self.raced += 1
            except (UnknownInteraction, IntegrityError):
                self.refused += 1  # its interaction was erased first: the committer's 404


def test_erasing_a_principal_under_load_deletes_all_of_it_and_nothing_else(
    sessions: sessionmaker[Session], interaction_record: Build
):
    data = _alice_and_bob(sessions, interaction_record)
    with _Writers(sessions, interaction_record, racing_onto=data["alice"]) as writers:
        receipt = erase(sessions, subject=Subject(principal="alice"), batch_size=4, pause_s=0.002)
    assert writers.errors == []
    assert len(writers.written) > 0

    assert _count(sessions, Interaction, Interaction.principal == "alice") == 0
    assert _count(sessions, Feedback, Feedback.principal == "alice") == 0
    assert _count(sessions, Task, Task.principal == "alice") == 0
    assert _count(sessions, Rollout) == 0
    with sessions() as session, pytest.raises(UnknownInteraction):
        get_interaction(session, interaction_id=data["alice"][0])
    # Everything of bob's that named none of alice's rows is still there, new rows included.
    bob_interactions = data["bob"] + writers.written
    assert _count(sessions, Interaction, Interaction.id.in_(bob_interactions)) \
        == len(bob_interactions)
    assert _count(sessions, Feedback, Feedback.id.in_(data["bob_own"] + writers.rated)) \
        == len(data["bob_own"]) + len(writers.rated)
    assert _count(sessions, Feedback, Feedback.id.in_(data["bob_on_alice"])) == 0
    with sessions() as session:
        assert set(session.scalars(select(FeedbackRequest.idempotency_key))) == {"k3"}
    assert _orphans(sessions) == {"feedback": 0, "rollouts": 0, "feedback_requests": 0}
    deleted = receipt.deleted
    assert (deleted.interactions, deleted.tasks, deleted.rollouts) == (24, 1, 4)
    # alice's 25 and 1 on bob's, bob's 2 on hers, and carol's that got in before the erasure
    # (counted as written: the race stops with the erasure, maybe before reaching every row;
    # once a CI run counted the unreached ones as written).
    assert deleted.feedback == 25 + 1 + 2 + writers.raced
    assert deleted.feedback_requests == 2
    assert receipt.started_at <= receipt.finished_at


def test_erasing_a_user_key_leaves_the_principals_other_users(
    sessions: sessionmaker[Session], interaction_record: Build
):
    data = _alice_and_bob(sessions, interaction_record)
    receipt = erase(sessions, subject=Subject(user_key="u1"), batch_size=5)
    assert receipt.deleted.interactions == 11  # alice's odd ones
    assert _count(sessions, Interaction, Interaction.user_key == "u1") == 0
    assert _count(sessions, Interaction, Interaction.user_key == "u0") == 12 + 1 + 11
    # A user key erases answers, not the principal's tasks.
    assert _count(sessions, Task) == 1
    assert _orphans(sessions) == {"feedback": 0, "rollouts": 0, "feedback_requests": 0}
    assert _count(sessions, Feedback, Feedback.id.in_(data["bob_own"])) == len(data["bob_own"])


def test_export_then_erasure_then_export_is_empty(
    sessions: sessionmaker[Session], interaction_record: Build
):
    data = _alice_and_bob(sessions, interaction_record)
    before = list(export(sessions, subject=Subject(principal="alice"), batch_size=5))
    kinds = [record["type"] for record in before]
    assert kinds.count("interaction") == len(data["alice"])
    assert kinds.count("task") == 1
    # Hers, bob's on hers, and hers on bob's, each once.
    assert sorted(r["id"] for r in before if r["type"] == "feedback") == sorted(
        data["alice_feedback"] + data["bob_on_alice"] + data["alice_on_bob"])
    first = next(r for r in before if r["type"] == "interaction")
    assert first["principal"] == "alice" and isinstance(first["created_at"], str)
    erase(sessions, subject=Subject(principal="alice"))
    assert list(export(sessions, subject=Subject(principal="alice"))) == []


@pytest.mark.parametrize("fields", [{}, {"principal": "a", "user_key": "b"}, {"principal": ""}])
def test_a_subject_names_exactly_one_non_empty_key(fields: dict[str, str]):
    with pytest.raises(InvalidSubject):
        Subject(**fields)


def test_retention_expires_old_rows_while_users_write(
    sessions: sessionmaker[Session], interaction_record: Build
):
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    old_ids = _store(sessions, [interaction_record(created_at=old, principal="alice")
                                for _ in range(17)])
    old_heldout = _store(sessions, [interaction_record(created_at=old)], heldout=True)
    _rate(sessions, "alice", [Rating(i, 1.0) for i in old_ids + old_heldout])
    recent = _store(sessions, [interaction_record() for _ in range(6)])
    recent_feedback = _rate(sessions, "alice", [Rating(i, 1.0) for i in recent])
    with sessions.begin() as session:  # old feedback on a recent answer
        session.execute(insert(Feedback), [{"interaction_id": recent[0], "kind": "rating",
                                            "score": 1.0, "created_at": old, "principal": "x"}])
    with _Writers(sessions, interaction_record, racing_onto=old_ids) as writers:
        deleted = expire(sessions, interactions_before=now - timedelta(days=30),
                         feedback_before=now - timedelta(days=30),
                         rollouts_before=now - timedelta(days=7), batch_size=3, pause_s=0.002)
    assert writers.errors == []
    assert deleted.interactions == 18
    assert deleted.feedback >= 18 + 1  # plus whatever raced onto the old answers in time
    assert _count(sessions, Interaction, Interaction.created_at < now - timedelta(days=30)) == 0
    assert _count(sessions, Feedback, Feedback.created_at < now - timedelta(days=30)) == 0
    assert _count(sessions, Interaction, Interaction.id.in_(recent + writers.written)) \
        == len(recent) + len(writers.written)
    assert _count(sessions, Feedback, Feedback.id.in_(recent_feedback + writers.rated)) \
        == len(recent_feedback) + len(writers.rated)
    assert _orphans(sessions) == {"feedback": 0, "rollouts": 0, "feedback_requests": 0}


def test_retention_with_nothing_set_deletes_nothing(
    sessions: sessionmaker[Session], interaction_record: Build
):
    _store(sessions, [interaction_record(created_at=datetime.now(UTC) - timedelta(days=999))])
    assert expire(sessions).total == 0
    assert _count(sessions, Interaction) == 1


def test_erasing_the_newest_feedback_never_hands_its_id_to_the_next(
    sessions: sessionmaker[Session], interaction_record: Build
):
    # An adapter's watermark and lineage say "ids up to N": a reused id would be a new row
    # below the watermark (never trained on) and inside the ranges (counted as not deleted).
    [mine] = _store(sessions, [interaction_record(user_key="gone")])
    [other] = _store(sessions, [interaction_record()])
    [newest] = _rate(sessions, "alice", [Rating(mine, 1.0)])
    erase(sessions, subject=Subject(user_key="gone"))
    [next_id] = _rate(sessions, "alice", [Rating(other, 1.0)])
    assert next_id > newest


def test_a_principal_still_writing_does_not_keep_the_erasure_going(
    sessions: sessionmaker[Session], interaction_record: Build
):
    stop = threading.Event()
    stored: list[tuple[str, datetime]] = []  # each row, with when its commit had returned

    def alice_keeps_asking() -> None:
        while not stop.is_set():
            record = interaction_record(principal="alice", id=f"c-{uuid.uuid4().hex}")
            _store(sessions, [record])
            stored.append((record.id, datetime.now(UTC)))

    thread = threading.Thread(target=alice_keeps_asking)
    thread.start()
    try:
        while len(stored) < 5:  # she is asking when the erasure starts
            time.sleep(0.01)
        receipt = erase(sessions, subject=Subject(principal="alice"), batch_size=2)
    finally:
        stop.set()
        thread.join()
    # It ended, and took every row stored before it started (one in flight then, stamped
    # before but committed after its last batch, is left: the docstring's "run it again").
    before = [row_id for row_id, committed in stored if committed < receipt.started_at]
    assert before and _count(sessions, Interaction, Interaction.id.in_(before)) == 0


def test_erased_text_never_reaches_a_training_set_built_afterwards(
    sessions: sessionmaker[Session], interaction_record: Build
):
    from lifelong.adapters.training_set import build_training_set

    data = _alice_and_bob(sessions, interaction_record)

    def built() -> tuple[set[str], set[str]]:
        with sessions() as session:
            found = build_training_set(session, since=0, replay_fraction=0.0, seed=0)
        texts = {e.completion for e in (*found.sft, *found.binary)} \
            | {t for p in found.pairs for t in (p.chosen, p.rejected)}
        return set(found.interaction_ids()), texts

    ids, texts = built()
    assert ids & set(data["alice"]) and "46!" in texts  # her correction trains, before
    erase(sessions, subject=Subject(principal="alice"))
    ids, texts = built()
    assert ids and not ids & set(data["alice"]) and "46!" not in texts
