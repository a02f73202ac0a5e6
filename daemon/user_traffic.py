"""User traffic through the gateway: requests in flight and how long it has been quiet.

The inference service opens a `Visit` per completion request (streams end when their last chunk
is sent); background work that shares vLLM with the users (practice) asks `quiet_for()` and is
told the moment a request arrives (`on_arrival`), so it can make way before vLLM sees the
request's first token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Visit:
    """One user request in flight; `done()` may be called more than once."""

    __slots__ = ("_traffic", "started", "open")

    def __init__(self, traffic: UserTraffic) -> None:
        self._traffic = traffic
        self.started = time.monotonic()
        self.open = True

    def done(self) -> None:
        if self.open:
            self.open = False
            self._traffic._left(self)


class UserTraffic:
    """Completion requests in flight. A visit older than `stale_s` no longer counts (a stream
    whose generator never ran would otherwise hold practice back forever)."""

    def __init__(self, *, stale_s: float = 600.0) -> None:
        self.stale_s = stale_s
        self._open: set[Visit] = set()
        self._last_seen = time.monotonic()  # start-up counts as activity: no practice at once
        self._listeners: list[Callable[[], None]] = []
        self.requests = 0

    def on_arrival(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the event loop, synchronously) when a request arrives."""
        self._listeners.append(listener)

    def arrive(self) -> Visit:
        visit = Visit(self)
        self._open.add(visit)
        self._last_seen = visit.started
        self.requests += 1
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's bug must not fail the user's request
                logger.exception("user traffic listener failed")
        return visit

    def _left(self, visit: Visit) -> None:
        self._open.discard(visit)
        self._last_seen = time.monotonic()

    @property
    def in_flight(self) -> int:
        now = time.monotonic()
        stale = {visit for visit in self._open if now - visit.started >= self.stale_s}
        self._open -= stale
        return len(self._open)

    def quiet_for(self) -> float:
        """Seconds since the last request ended (or arrived); 0 while one is in flight."""
        if self.in_flight:
            return 0.0
        return time.monotonic() - self._last_seen
