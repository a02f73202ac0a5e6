"""Durability: whatever a writer acknowledged is in the database after it is SIGKILLed.

The writer runs in a subprocess (`acknowledging_writer.py`) and prints each id only after its
commit; the test kills it mid-stream, without warning, then looks every printed id up.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from lifelong.feedback_store.models import Feedback, Interaction

WRITER = Path(__file__).with_name("acknowledging_writer.py")
ACKS_BEFORE_KILL = 300


def run_and_kill(url: str, mode: str) -> list[str]:
    """Start the writer, SIGKILL it once it has acknowledged enough, return what it printed."""
    child = subprocess.Popen(
        [sys.executable, str(WRITER), url, mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    stdout, stderr = child.stdout, child.stderr
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:  # a thread, so the test can time out instead of blocking on the pipe
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read)
    reader.start()
    acked: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(acked) < ACKS_BEFORE_KILL:
            assert time.monotonic() < deadline, f"writer too slow: {stderr.read()}"
            try:
                acked.append(lines.get(timeout=1.0))
            except queue.Empty:
                assert child.poll() is None, f"writer died: {stderr.read()}"
        child.send_signal(signal.SIGKILL)  # mid-stream: its threads are still writing
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        reader.join()
    while not lines.empty():  # printed before the kill landed: acknowledged all the same
        acked.append(lines.get())
    assert child.returncode == -signal.SIGKILL
    # Only whole lines count; a line cut by the kill was never a complete acknowledgement.
    return [line.split()[1] for line in acked if line.endswith("\n") and line.startswith("ack ")]


@pytest.mark.parametrize("mode", ["committer", "interaction_log"])
def test_every_acknowledged_write_survives_sigkill(engine, sessions, mode):
    url = engine.url.render_as_string(hide_password=False)
    acked = run_and_kill(url, mode)
    assert len(acked) >= ACKS_BEFORE_KILL
    with sessions() as session:
        if mode == "committer":
            stored = set(session.scalars(select(Feedback.id)))
            assert {int(value) for value in acked} <= stored
        else:
            stored_ids = set(session.scalars(select(Interaction.id)))
            assert set(acked) <= stored_ids
