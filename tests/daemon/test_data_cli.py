"""`lifelong data erase|export` and the lineage lines of `lifelong adapters show`, run as the
real command on a real SQLite store (no model, no daemon: an erasure must not need one)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lifelong.feedback_store import lineage, registry
from lifelong.feedback_store.database import make_engine
from lifelong.feedback_store.feedback import add_feedback
from lifelong.feedback_store.interactions import add_interactions
from lifelong.feedback_store.records import NewInteraction, Rating

LIFELONG = str(Path(sys.executable).parent / "lifelong")


def lifelong(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LIFELONG, *args], capture_output=True, text=True)


@pytest.fixture
def data_dir(tmp_path: Path, migrated_sqlite_file: Path) -> Path:
    """alice's answers to end users u1 (4) and u2 (6), each rated; adapter v0001 trained on all
    of those ratings."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(migrated_sqlite_file, data_dir / "lifelong.db")
    engine = make_engine(f"sqlite:///{data_dir / 'lifelong.db'}")
    records = [NewInteraction(
        id=f"chatcmpl-{uuid.uuid4().hex}", created_at=datetime.now(UTC),
        endpoint="chat.completions", request={"messages": [{"role": "user", "content": "hi"}]},
        model="lifelong", response_text="hello", principal="alice",
        user_key="u1" if i < 4 else "u2") for i in range(10)]
    with Session(engine) as session, session.begin():
        add_interactions(session, records=records, heldout_fraction=0.0)
        rows = add_feedback(session, items=[Rating(r.id, 1.0) for r in records],
                            principal="alice", admin=True)
        registry.register(session, version="v0001", path=str(tmp_path / "v0001"),
                          checksum="0" * 64)
        lineage.record(session, version="v0001", feedback_ids=[row.id for row in rows])
    engine.dispose()
    return data_dir


def test_export_then_erase_then_export_is_empty_and_the_adapter_is_flagged(data_dir: Path):
    where = ("--data-dir", str(data_dir))
    exported = lifelong("data", "export", "--user-key", "u1", *where)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["type"] for line in lines].count("interaction") == 4
    assert [line["type"] for line in lines].count("feedback") == 4
    assert {line["user_key"] for line in lines if line["type"] == "interaction"} == {"u1"}

    shown = lifelong("adapters", "show", "v0001", *where)
    assert shown.returncode == 0, shown.stderr
    assert "deleted:     0 of the 10 feedback rows" in shown.stdout
    assert "retrain" not in shown.stdout

    erased = lifelong("data", "erase", "--user-key", "u1", *where)
    assert erased.returncode == 0, erased.stderr
    receipt = json.loads(erased.stdout)
    assert receipt["deleted"]["interactions"] == 4 and receipt["deleted"]["feedback"] == 4
    assert receipt["user_key"] == "u1" and receipt["started_at"] <= receipt["finished_at"]

    assert lifelong("data", "export", "--user-key", "u1", *where).stdout == ""
    assert len(lifelong("data", "export", "--user-key", "u2", *where).stdout.splitlines()) == 12
    shown = json.loads(lifelong("adapters", "show", "v0001", "--json", *where).stdout)
    assert shown["data_lineage"]["deleted"] == 4 and shown["data_lineage"]["flagged"]
    text = lifelong("adapters", "show", "v0001", *where).stdout
    assert "deleted:     4 of the 10 feedback rows" in text
    assert "lifelong train --now --fresh" in text


@pytest.mark.parametrize("who", [(), ("--principal", "a", "--user-key", "b"),
                                 ("--principal", "")])
def test_erase_needs_exactly_one_subject(data_dir: Path, who: tuple[str, ...]):
    done = lifelong("data", "erase", *who, "--data-dir", str(data_dir))
    assert done.returncode == 2
    assert done.stderr.strip() == ("lifelong: give exactly one of --principal NAME and "
                                   "--user-key KEY, not empty")
