"""Training and eval runs: started as running, finished with what they produced or why not."""

from __future__ import annotations

import threading
import time

import pytest

from lifelong.feedback_store import registry
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import EvalRun, TrainingRun
from lifelong.feedback_store.runs import (
    WORKER,
    claim_training_run,
    finish_eval_run,
    finish_training_run,
    interrupt_dead_training_runs,
    release_claim,
    renew_claim,
    start_eval_run,
    start_training_run,
    update_training_run,
    worker_run_state,
)


def test_training_run_records_its_adapter_and_metrics(sessions):
    with sessions.begin() as session:
        run = start_training_run(
            session, method="sft", parent_version=None, config={"steps": 10}, data_watermark=7
        )
        assert (run.status, run.finished_at) == ("running", None)
        run_id = run.id
    with sessions.begin() as session:
        finish_training_run(
            session, run_id=run_id, status="succeeded", adapter_version="v1",
            metrics={"loss": 0.5},
        )
        registry.register(session, version="v1", path="/a/v1", checksum="c", training_run_id=run_id)
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.status, row.adapter_version, row.metrics) == ("succeeded", "v1", {"loss": 0.5})
        assert row.finished_at >= row.started_at
        assert registry.get(session, version="v1").training_run_id == run_id


def test_failed_eval_run_keeps_its_error(sessions):
    with sessions.begin() as session:
        run_id = start_eval_run(
            session, candidate_version="v2", baseline_version=None, config={"n": 50}
        ).id
        finish_eval_run(session, run_id=run_id, status="failed", error="vLLM went away")
    with sessions() as session:
        row = session.get(EvalRun, run_id)
        assert (row.status, row.error, row.summary) == ("failed", "vLLM went away", None)


def test_finishing_an_unknown_run_raises(sessions):
    with sessions() as session:
        with pytest.raises(UnknownRun):
            finish_training_run(session, run_id=404, status="failed")
        with pytest.raises(UnknownRun):
            finish_eval_run(session, run_id=404, status="succeeded")


def test_a_run_cannot_finish_as_running(sessions):
    with sessions() as session, pytest.raises(ValueError):
        finish_training_run(session, run_id=1, status="running")  # type: ignore[arg-type]
    with sessions() as session, pytest.raises(ValueError):
        finish_eval_run(session, run_id=1, status="skipped")  # type: ignore[arg-type]


def test_a_skipped_run_keeps_its_reason_and_made_no_adapter(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={}).id
        finish_training_run(session, run_id=run_id, status="skipped",
                            metrics={"reason": "3 new examples; at least 20 needed"})
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.status, row.adapter_version) == ("skipped", None)
        assert row.metrics == {"reason": "3 new examples; at least 20 needed"}


def test_progress_updates_a_running_run_and_leaves_unnamed_fields_alone(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={},
                                    host="h", pid=10).id
        update_training_run(session, run_id=run_id, metrics={"step": 5}, data_watermark=42)
        update_training_run(session, run_id=run_id, pid=11)
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.metrics, row.data_watermark, row.host, row.pid) == ({"step": 5}, 42, "h", 11)


def test_a_finished_run_takes_no_late_progress_and_no_second_end(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={}).id
        finish_training_run(session, run_id=run_id, status="failed", error="killed")
    with sessions() as session:
        with pytest.raises(ValueError, match="failed, not running"):
            update_training_run(session, run_id=run_id, metrics={"step": 6})
        with pytest.raises(ValueError, match="failed, not running"):
            finish_training_run(session, run_id=run_id, status="succeeded")


def test_restart_interrupts_only_this_hosts_dead_trainers(sessions):
    with sessions.begin() as session:
        ids = {
            name: start_training_run(session, method="sft", parent_version=None, config={},
                                     host=host, pid=pid).id
            for name, host, pid in (
                ("dead", "here", 100), ("alive", "here", 200), ("unspawned", "here", None),
                ("elsewhere", "there", 100),
            )
        }
    with sessions.begin() as session:
        ended = interrupt_dead_training_runs(session, host="here", alive=lambda pid: pid == 200)
    assert sorted(ended) == sorted([ids["dead"], ids["unspawned"]])
    with sessions() as session:
        status = {name: session.get(TrainingRun, i).status for name, i in ids.items()}
    assert status == {"dead": "interrupted", "alive": "running", "unspawned": "interrupted",
                      "elsewhere": "running"}


def test_of_two_ends_written_at_once_the_first_committed_stays(sessions):
    with sessions.begin() as session:
        run_id = start_training_run(session, method="sft", parent_version=None, config={}).id
    with sessions() as late:
        seen = late.get(TrainingRun, run_id)  # read before the other end was written
        assert seen.status == "running"
        with sessions.begin() as first:
            finish_training_run(first, run_id=run_id, status="succeeded", adapter_version="v1")
        with pytest.raises(ValueError, match="ended meanwhile"):
            finish_training_run(late, run_id=run_id, status="failed", error="timed out")
    with sessions() as session:
        row = session.get(TrainingRun, run_id)
        assert (row.status, row.adapter_version, row.error) == ("succeeded", "v1", None)


def queue_for_worker(session, **request) -> int:
    """A run as the leader leaves it for a trainer worker: running, no host, marked."""
    return start_training_run(session, method="recipe", parent_version=None,
                              config={"request": {"requested_by": "ops", **request},
                                      "runner": WORKER}).id


def test_a_worker_claims_the_oldest_waiting_run_once_and_never_another_processes_run(sessions):
    with sessions.begin() as session:
        own = start_training_run(session, method="sft", parent_version=None,  # a child's
                                 config={"request": {"requested_by": "ops"}}, host="gw", pid=7).id
        unclaimed = start_training_run(session, method="sft", parent_version=None,  # not queued
                                       config={"request": {"requested_by": "ops"}}).id
        first, second = queue_for_worker(session), queue_for_worker(session, fresh=True)
    claims = []
    for _ in range(3):
        with sessions.begin() as session:
            claims.append(claim_training_run(session, holder="w1", host="gpu-1", pid=42,
                                             lease_s=30))
    assert [claim and claim.run_id for claim in claims] == [first, second, None]
    assert claims[1].config["request"] == {"requested_by": "ops", "fresh": True}
    with sessions() as session:
        rows = {i: session.get(TrainingRun, i) for i in (own, unclaimed, first, second)}
        assert [(rows[i].host, rows[i].pid) for i in (own, unclaimed, first, second)] == [
            ("gw", 7), (None, None), ("gpu-1", 42), ("gpu-1", 42)]
        state = worker_run_state(session, run_id=first)
        assert (state.status, state.host, state.claim.holder) == ("running", "gpu-1", "w1")
        assert 0 < state.claim.expires_in_s <= 30


def test_concurrent_workers_never_claim_the_same_run(sessions):
    # Each thread is a worker with its own connection; all race for the same oldest run.
    with sessions.begin() as session:
        queued = [queue_for_worker(session) for _ in range(24)]
    workers = 4
    start = threading.Barrier(workers)
    claimed: dict[str, list[int]] = {f"w{n}": [] for n in range(workers)}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        start.wait()
        try:
            while True:
                with sessions.begin() as session:
                    claim = claim_training_run(session, holder=name, host=name, pid=1, lease_s=30)
                if claim is None:
                    return
                claimed[name].append(claim.run_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    every = [run_id for runs in claimed.values() for run_id in runs]
    assert sorted(every) == queued  # each run exactly once
    with sessions() as session:
        for name, runs in claimed.items():
            for run_id in runs:
                assert session.get(TrainingRun, run_id).host == name
                assert worker_run_state(session, run_id=run_id).claim.holder == name


def test_a_claim_renews_while_its_run_runs_and_not_once_it_ended_elsewhere(sessions):
    with sessions.begin() as session:
        run_id = queue_for_worker(session)
    with sessions.begin() as session:
        claim = claim_training_run(session, holder="w1", host="gpu-1", pid=42, lease_s=1)
    time.sleep(1.1)
    with sessions() as session:
        assert worker_run_state(session, run_id=run_id).claim.expires_in_s < 0  # ran out
    with sessions.begin() as session:
        assert renew_claim(session, claim=claim, holder="w1", lease_s=30)
        assert not renew_claim(session, claim=claim, holder="w2", lease_s=30)  # not w2's
    with sessions() as session:
        assert worker_run_state(session, run_id=run_id).claim.expires_in_s > 20
    with sessions.begin() as session:
        finish_training_run(session, run_id=run_id, status="failed", error="cancelled")
    with sessions.begin() as session:
        assert not renew_claim(session, claim=claim, holder="w1", lease_s=30)
        release_claim(session, run_id=run_id)
    with sessions() as session:
        state = worker_run_state(session, run_id=run_id)
        assert (state.status, state.claim) == ("failed", None)


def test_a_new_leader_interrupts_every_run_left_to_workers_wherever_they_run(sessions):
    with sessions.begin() as session:
        waiting, claimed = queue_for_worker(session), queue_for_worker(session)
    with sessions.begin() as session:
        claim_training_run(session, holder="w", host="here", pid=200, lease_s=30)
    with sessions.begin() as session:  # the claimed one is on this host, its process alive
        ended = interrupt_dead_training_runs(session, host="here", alive=lambda pid: True,
                                             other_hosts=True)
    assert sorted(ended) == [waiting, claimed]
    with sessions() as session:
        row = session.get(TrainingRun, claimed)
        assert row.status == "interrupted" and "no longer leads" in row.error
