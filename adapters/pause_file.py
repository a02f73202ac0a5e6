"""The daemon's request that a run yield to its users: while a file exists, the run waits.

The daemon (the serving process) creates the file when user requests arrive during a GRPO run
and removes it once users have been quiet a moment; the run checks it at its safe points (before
each rollout request and each optimizer step) and waits there. A file rather than a signal: the
run may be starting up (a signal's default action would kill it) or inside a database write
(stopping it there would hold a lock the serving path needs); a stat per step costs nothing.
While the run waits it keeps a second file, `waiting_marker(path)`, so the daemon can tell
"asked to pause" from "the run has stopped at a safe point" (a niced run can take seconds to
get there on a busy CPU).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

POLL_S = 0.01


class PauseFile:
    """`wait()` / `await wait_async()` return at once unless `path` exists, then when it is gone.
    `paused_s` adds up the time spent waiting. A `None` path never pauses."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.paused_s = 0.0
        self.pauses = 0
        self._waiters = 0  # concurrent rollout requests wait together: their time counts once
        self._since = 0.0

    @property
    def paused(self) -> bool:
        return self.path is not None and os.path.exists(self.path)

    def wait(self) -> None:
        if not self.paused:
            return
        self._enter()
        try:
            while self.paused:
                time.sleep(POLL_S)
        finally:
            self._leave()

    async def wait_async(self) -> None:
        if not self.paused:
            return
        self._enter()
        try:
            while self.paused:
                await asyncio.sleep(POLL_S)
        finally:
            self._leave()

    def _enter(self) -> None:
        if self._waiters == 0:
            self.pauses += 1
            self._since = time.monotonic()
            assert self.path is not None  # only a path that exists pauses
            waiting_marker(self.path).touch()
        self._waiters += 1

    def _leave(self) -> None:
        self._waiters -= 1
        if self._waiters == 0:
            self.paused_s += time.monotonic() - self._since
            assert self.path is not None
            waiting_marker(self.path).unlink(missing_ok=True)


def waiting_marker(path: Path | str) -> Path:
    """The file that exists while a run waits at a safe point because `path` exists."""
    path = Path(path)
    return path.with_name(path.name + ".waiting")


def pause(path: Path) -> None:
    """Ask the run watching `path` to pause at its next safe point."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def resume(path: Path) -> None:
    path.unlink(missing_ok=True)


def run_waiting(path: Path) -> bool:
    """Whether a run is waiting at a safe point for `path` to go."""
    return waiting_marker(path).exists()
