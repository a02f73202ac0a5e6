"""A training run's life in the store, the same for every kind of run (`training_run` for the
feedback methods, `grpo_run` for practice): both import it, it imports neither.

`opened_run` makes (or takes over) the `running` row and yields a `Run`; the run then resolves
and verifies its parent, writes its progress, and ends exactly once:

- `skip`: finished `skipped`, with the reason, nothing written;
- `publish`: the adapter folder written, then registered as a `candidate` and the run finished
  `succeeded` in one transaction (a folder that could not be registered is removed);
- failed: any exception leaving the `with` block, cancellation and Ctrl-C included, finishes
  the run `failed` with the error text and the run's `failure_metrics`, and propagates.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from peft import PeftModel
from sqlalchemy.orm import Session, sessionmaker

from lifelong.adapters.artifact import manifest_checksum, next_version, verify, write_adapter
from lifelong.feedback_store import lineage, registry
from lifelong.feedback_store.database import ensure_migrated, make_engine
from lifelong.feedback_store.errors import UnknownRun
from lifelong.feedback_store.models import Adapter, TrainingRun
from lifelong.feedback_store.runs import (
    finish_training_run,
    start_training_run,
    update_training_run,
)

logger = logging.getLogger(__name__)
ORPHAN_WAIT_S = 1.0  # how long a cancelled run looks for its daemon's death


class TrainingCancelled(Exception):
    """Training was cancelled; the run is marked failed and nothing is registered."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: Literal["succeeded", "skipped"]
    adapter_version: str | None
    adapter_path: Path | None
    reason: str | None  # why it was skipped
    metrics: dict[str, Any]


@dataclass
class Run:
    """A `running` training run this process owns."""

    sessions: sessionmaker[Session]
    id: int
    # What the row's metrics say if the run fails (besides "outcome": "failed"); the run sets it
    # to what it has learned so far.
    failure_metrics: Callable[[], dict[str, Any]] = dict
    # The daemon that recorded the run and started this process (None: a person's `lifelong
    # train`). If it died (its death signal is what stops us), the run was interrupted, not
    # failed: the same end a restarted or new leader gives a run it finds orphaned.
    daemon_pid: int | None = None

    def parent(self, *, parent_version: str | None, fresh: bool,
               base_model_dir: Path) -> Adapter | None:
        """The adapter to continue from, verified: none when fresh, else `parent_version` or
        the champion (none if there is none). Raises UnknownAdapter, AdapterChecksumMismatch,
        BaseModelMismatch."""
        with self.sessions() as session:
            parent = _parent_adapter(session, parent_version=parent_version, fresh=fresh)
        if parent is not None:
            verify(Path(parent.path), base_model_dir, checksum=parent.checksum)
        return parent

    def update(self, **values: Any) -> None:
        """Set columns of the running row, in a transaction of its own."""
        with self.sessions.begin() as session:
            update_training_run(session, run_id=self.id, **values)

    def skip(self, reason: str, *, data: dict[str, Any] | None = None) -> RunOutcome:
        """Finish the run `skipped`, saying why (and what data it saw)."""
        logger.info("training run %s skipped: %s", self.id, reason)
        metrics = {"outcome": "skipped", "reason": reason, **({} if data is None else
                                                              {"data": data})}
        with self.sessions.begin() as session:
            finish_training_run(session, run_id=self.id, status="skipped", metrics=metrics)
        return RunOutcome(self.id, "skipped", None, None, reason, metrics)

    def publish(
        self,
        model: PeftModel,
        *,
        adapters_dir: Path,
        parent: Adapter | None,
        base_model: dict[str, str],
        data_watermark: int,
        data: dict[str, Any],
        feedback_ids: Sequence[int],
        methods: list[str],
        hyperparameters: dict[str, Any],
        seed: int,
        summary: dict[str, Any],
        seconds: float,
        progress: dict[str, Any] | None = None,
    ) -> RunOutcome:
        """Write the adapter folder (its manifest's metrics: `summary`), then register it as a
        candidate and finish the run `succeeded` in one transaction; the row's metrics are
        the summary, the data and `progress` (e.g. the per-step history)."""
        with self.sessions() as session:
            taken = [adapter.version for adapter in registry.list_adapters(session)]
        version = next_version(adapters_dir, taken=taken)
        parent_version = parent.version if parent else None
        path, _ = write_adapter(
            model, adapters_dir=adapters_dir, version=version, parent_version=parent_version,
            base_model=base_model, data_watermark=data_watermark, data=data,
            feedback_ids=list(feedback_ids), methods=methods, hyperparameters=hyperparameters,
            seed=seed, metrics=summary,
        )
        metrics = {"outcome": "trained", **summary, "data": data, **(progress or {})}
        try:
            with self.sessions.begin() as session:
                registry.register(
                    session, version=version, path=str(path), checksum=manifest_checksum(path),
                    parent_version=parent_version, training_run_id=self.id,
                    data_watermark=data_watermark,
                )
                # The same ids as the folder's feedback_ids.json, as ranges the store can count
                # deletions against (`adapters show`).
                lineage.record(session, version=version, feedback_ids=feedback_ids)
                finish_training_run(session, run_id=self.id, status="succeeded",
                                    adapter_version=version, metrics=metrics)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # written but never registered: not an adapter
            raise
        logger.info("training run %s made adapter %s in %.0f s", self.id, version, seconds)
        return RunOutcome(self.id, "succeeded", version, path, None, metrics)

    def _orphaned(self, *, cancelled: bool) -> bool:
        """Whether the daemon that started this process died. Its death signal can come while
        it is still dying (the kernel sends it when the parent *thread* ends, and hands this
        process to another thread of the same daemon first), so a cancellation waits a moment
        for the new parent to show."""
        if self.daemon_pid is None:
            return False
        deadline = time.monotonic() + (ORPHAN_WAIT_S if cancelled else 0.0)
        while os.getppid() == self.daemon_pid:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def fail(self, exc: BaseException) -> None:
        """Finish the run `failed` with the error; a failure to say so is logged, not raised
        (the original error matters more)."""
        error = f"{type(exc).__name__}: {exc}"
        status: Literal["failed", "interrupted"] = "failed"
        if self._orphaned(cancelled=isinstance(exc, TrainingCancelled)):
            status = "interrupted"
            error = f"the daemon that started it (pid {self.daemon_pid}) died; {error}"
        logger.error("training run %s %s: %s", self.id, status, error)
        try:
            metrics = {"outcome": status, **self.failure_metrics()}
            with self.sessions.begin() as session:
                finish_training_run(session, run_id=self.id, status=status, error=error,
                                    metrics=metrics)
        except Exception:
            logger.exception("could not mark training run %s failed", self.id)


@contextmanager
def opened_run(
    db_url: str,
    *,
    run_id: int | None,
    recipe: tuple[str, ...],
    parent_version: str | None,
    config: dict[str, Any],
) -> Iterator[Run]:
    """A `running` run for this process (`run_id`, made by the daemon, or a new one), marked
    failed if anything leaves the block by an exception. Raises DatabaseNotMigrated, UnknownRun,
    or ValueError for a run that is not running, before the block runs."""
    engine = make_engine(db_url)
    try:
        ensure_migrated(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        run = Run(sessions, _open_run(sessions, run_id=run_id, recipe=recipe,
                                     parent_version=parent_version, config=config),
                  daemon_pid=os.getppid() if run_id is not None else None)
        try:
            yield run
        except BaseException as exc:  # anything at all, Ctrl-C included
            run.fail(exc)
            raise
    finally:
        engine.dispose()


def _open_run(
    sessions: sessionmaker[Session],
    *,
    run_id: int | None,
    recipe: tuple[str, ...],
    parent_version: str | None,
    config: dict[str, Any],
) -> int:
    """The id of a `running` run for this process: `run_id` (made by the daemon), or a new one.
    Raises UnknownRun, or ValueError for a run that is not running."""
    # This process owns the run from here: a restarted daemon can tell whether it still lives.
    owner = {"host": socket.gethostname(), "pid": os.getpid()}
    with sessions.begin() as session:
        if run_id is None:
            return start_training_run(session, method="+".join(recipe),
                                      parent_version=parent_version, config=config, **owner).id
        row = session.get(TrainingRun, run_id)
        if row is None:
            raise UnknownRun(f"no training run {run_id}", field="run_id")
        if row.status != "running":
            raise ValueError(f"training run {run_id} is {row.status}, not running")
        # The daemon may have recorded "recipe"; the run knows its methods.
        update_training_run(session, run_id=run_id, method="+".join(recipe), **owner)
        return run_id


def _parent_adapter(session: Session, *, parent_version: str | None, fresh: bool) -> Adapter | None:
    """The adapter to continue from: none when fresh, else `parent_version` or the champion.
    Raises UnknownAdapter."""
    if fresh:
        return None
    if parent_version is not None:
        return registry.get(session, version=parent_version)
    return registry.champion(session)
