"""User traffic: requests in flight, quiet time, arrival listeners."""

from __future__ import annotations

import time

from lifelong.daemon.user_traffic import UserTraffic


def test_in_flight_and_quiet_time():
    traffic = UserTraffic()
    assert traffic.in_flight == 0 and traffic.quiet_for() >= 0  # start-up counts as activity
    first, second = traffic.arrive(), traffic.arrive()
    assert traffic.in_flight == 2 and traffic.quiet_for() == 0.0
    first.done()
    first.done()  # twice is once
    assert traffic.in_flight == 1 and traffic.quiet_for() == 0.0
    second.done()
    time.sleep(0.05)
    assert traffic.in_flight == 0 and traffic.quiet_for() >= 0.05
    assert traffic.requests == 2


def test_listeners_hear_each_arrival_and_their_errors_stay_theirs():
    traffic = UserTraffic()
    heard = []
    traffic.on_arrival(lambda: heard.append(traffic.in_flight))
    traffic.on_arrival(lambda: 1 / 0)
    traffic.arrive()
    traffic.arrive()
    assert heard == [1, 2]


def test_a_visit_never_ended_stops_counting_after_stale_s():
    traffic = UserTraffic(stale_s=0.05)
    traffic.arrive()  # a stream whose generator never ran
    assert traffic.in_flight == 1
    time.sleep(0.06)
    assert traffic.in_flight == 0 and traffic.quiet_for() > 0
