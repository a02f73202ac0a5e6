"""What a person reads about adapters says what the gate said: a candidate the gate found
`not_enough_evidence` for is listed as that, not as a bare `candidate` (nor a re-judged one as
`rejected`), in `lifelong adapters list` and `adapters show`. Real SQLite store, no model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lifelong.daemon.adapter_report import adapter_detail, adapter_rows, describe_detail
from lifelong.feedback_store import registry
from lifelong.feedback_store.database import make_engine
from lifelong.feedback_store.eval_results import record_gate_decision
from lifelong.feedback_store.runs import start_eval_run

LIFELONG = str(Path(sys.executable).parent / "lifelong")
# version -> the gate's decisions on it, oldest first, against the base model
JUDGED = {
    "v0001": ["not_enough_evidence"],
    "v0002": ["rejected", "not_enough_evidence"],  # judged again on more evidence
    "v0003": ["approved"],
    "v0004": [],  # never judged
    "v0005": ["approved"],  # then promoted
}


@pytest.fixture
def data_dir(tmp_path: Path, migrated_sqlite_file: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(migrated_sqlite_file, data_dir / "lifelong.db")
    engine = make_engine(f"sqlite:///{data_dir / 'lifelong.db'}")
    with Session(engine) as session, session.begin():
        for version, decisions in JUDGED.items():
            registry.register(session, version=version, path=str(tmp_path / version),
                              checksum="0" * 64)
            for status in decisions:
                run = start_eval_run(session, candidate_version=version, baseline_version=None,
                                     config={})
                record_gate_decision(session, eval_run_id=run.id, candidate_version=version,
                                     champion_version=None, status=status,  # type: ignore[arg-type]
                                     reasons=[f"{status}: as the test says"], details={})
                # What the judge writes beside a decision that decides (daemon/judge.py).
                if status == "approved":
                    registry.approve(session, version=version)
                elif status == "rejected":
                    registry.reject(session, version=version)
        registry.set_champion(session, version="v0005", promoted_by="gate")
    engine.dispose()
    return data_dir


def test_adapter_rows_carry_the_gates_last_decision(data_dir: Path):
    engine = make_engine(f"sqlite:///{data_dir / 'lifelong.db'}")
    with Session(engine) as session:
        rows = {row["version"]: (row["status"], row["gate"]) for row in adapter_rows(session)}
    engine.dispose()
    assert rows == {
        "v0001": ("candidate", "not_enough_evidence"),
        "v0002": ("rejected", "not_enough_evidence"),
        "v0003": ("approved", "approved"),
        "v0004": ("candidate", None),
        "v0005": ("champion", "approved"),
    }


def test_adapters_list_says_what_the_gate_said(data_dir: Path):
    done = subprocess.run([LIFELONG, "adapters", "list", "--data-dir", str(data_dir)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shown = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:]}
    assert shown == {"v0001": "not_enough_evidence", "v0002": "not_enough_evidence",
                     "v0003": "approved", "v0004": "candidate", "v0005": "champion"}


def test_adapters_show_says_what_the_gate_said_beside_the_status(data_dir: Path):
    engine = make_engine(f"sqlite:///{data_dir / 'lifelong.db'}")
    with Session(engine) as session:
        first = {version: describe_detail(adapter_detail(session, version=version)).splitlines()[0]
                 for version in ("v0001", "v0004", "v0005")}
    engine.dispose()
    assert first == {"v0001": "adapter v0001: not_enough_evidence (status candidate)",
                     "v0004": "adapter v0004: candidate",
                     "v0005": "adapter v0005: champion"}
