"""The pause file: a run waits while it exists, and counts how long."""

from __future__ import annotations

import asyncio
import threading
import time

from lifelong.adapters.pause_file import PauseFile, pause, resume, run_waiting


def test_no_file_no_wait(tmp_path):
    switch = PauseFile(tmp_path / "pause")
    switch.wait()
    asyncio.run(switch.wait_async())
    assert (switch.pauses, switch.paused_s, switch.paused) == (0, 0.0, False)
    assert not PauseFile(None).paused


def test_waits_while_the_file_exists_and_counts_it(tmp_path):
    path = tmp_path / "run" / "pause"
    pause(path)  # makes the folder too
    switch = PauseFile(path)
    assert switch.paused
    threading.Timer(0.3, resume, args=(path,)).start()
    began = time.monotonic()
    switch.wait()
    assert time.monotonic() - began >= 0.29
    assert switch.pauses == 1 and switch.paused_s >= 0.29

    pause(path)
    seen_waiting = []
    threading.Timer(0.1, lambda: seen_waiting.append(run_waiting(path))).start()
    threading.Timer(0.2, resume, args=(path,)).start()
    assert not run_waiting(path)  # asked, not yet at a safe point
    asyncio.run(switch.wait_async())
    assert seen_waiting == [True] and not run_waiting(path)
    assert switch.pauses == 2 and switch.paused_s >= 0.48
    resume(path)  # a second resume is harmless


def test_concurrent_waiters_count_their_shared_wait_once(tmp_path):
    path = tmp_path / "pause"
    pause(path)
    switch = PauseFile(path)

    async def three_requests() -> None:
        asyncio.get_running_loop().call_later(0.2, resume, path)
        await asyncio.gather(*(switch.wait_async() for _ in range(3)))

    asyncio.run(three_requests())
    assert switch.pauses == 1 and 0.19 <= switch.paused_s < 0.4
