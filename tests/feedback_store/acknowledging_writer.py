"""A writer for the durability test: writes until killed, printing `ack <id>` after each commit.

    python acknowledging_writer.py DATABASE_URL committer|interaction_log

`committer`: feedback through the FeedbackCommitter (acknowledged = its future resolved).
`interaction_log`: interactions through the InteractionLog (acknowledged = `wait_for` is True).
Four threads write at once, so commits are shared as they are under load.
"""

from __future__ import annotations

import sys
import threading
import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import sessionmaker

from lifelong.feedback_store.database import make_engine
from lifelong.feedback_store.feedback_committer import FeedbackCommitter
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import NewInteraction, Rating

THREADS = 4
printing = threading.Lock()


def ack(value: object) -> None:
    with printing:  # whole lines only: the test parses what was printed before the kill
        sys.stdout.write(f"ack {value}\n")
        sys.stdout.flush()


def record() -> NewInteraction:
    return NewInteraction(
        id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
        endpoint="chat.completions", request={"messages": [{"role": "user", "content": "hi"}]},
        model="lifelong", response_text="hello", principal="alice",
    )


def main(url: str, mode: str) -> None:
    engine = make_engine(url)
    if mode == "committer":
        seed = record()
        with sessionmaker(engine).begin() as session:
            add_interactions(session, records=[seed], heldout_fraction=0.0)
        committer = FeedbackCommitter(engine)

        def write() -> None:
            while True:
                (row,) = committer.add([Rating(seed.id, score=1)], principal="alice", admin=False)
                ack(row.id)
    else:
        log = InteractionLog(engine, heldout_fraction=0.0)

        def write() -> None:
            while True:
                new = record()
                if log.submit(new) and log.wait_for(new.id, 30.0):
                    ack(new.id)

    threads = [threading.Thread(target=write, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # forever: the test kills us


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
