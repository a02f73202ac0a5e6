"""The data trigger's back-off: a cycle that failed holds the trigger for a while, others do not.
(The whole cycle runs for real in test_learning_loop.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lifelong.daemon.learning_cycle import FAILURE_BACKOFF, CycleReport, backing_off

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def ended(outcome: str, ago: timedelta) -> CycleReport:
    return CycleReport(trigger="data", started_at=(NOW - ago).isoformat(),
                       finished_at=(NOW - ago).isoformat(), outcome=outcome)


@pytest.mark.parametrize("outcome", ["failed", "interrupted"])
def test_a_recent_failure_holds_the_data_trigger_until_the_back_off_has_passed(outcome):
    assert backing_off(ended(outcome, timedelta(minutes=1)), NOW)
    assert not backing_off(ended(outcome, FAILURE_BACKOFF + timedelta(seconds=1)), NOW)


@pytest.mark.parametrize("outcome", ["promoted", "rejected", "skipped", "not_judged", "approved"])
def test_other_endings_do_not_hold_it(outcome):
    assert not backing_off(ended(outcome, timedelta(seconds=1)), NOW)


def test_no_cycle_yet_or_one_still_running_does_not_hold_it():
    assert not backing_off(None, NOW)
    running = CycleReport(trigger="data", started_at=NOW.isoformat())
    assert not backing_off(running, NOW)
