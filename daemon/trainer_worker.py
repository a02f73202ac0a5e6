"""A trainer worker (`lifelong trainer`): carries out, one at a time, the training runs the leading
gateway leaves in the database (`training.runner: worker`), each as the same `lifelong train`
child the gateway would start itself, watched by the same code (`trainer.ChildRunner`).

It needs the database, the base model folder and the adapter storage, nothing of a gateway's,
so it can run on a GPU node of its own (a Kubernetes Deployment; several, if you like). For each
run:

- it claims the oldest waiting run (`claim_training_run`: one conditional UPDATE, so two workers
  never take the same run) together with a lease on it;
- every second (`POLL_S`) it renews the lease and reads the run: once the run was ended
  elsewhere (cancelled, timed out, or interrupted by the leader) it stops its child (SIGTERM,
  SIGKILL after the grace period);
- a worker killed alone takes its child with it (the child's parent-death signal), which ends
  the run interrupted; a worker killed with its child (a lost node) renews nothing more, and the
  leader marks the run interrupted once the lease ran out (`training.worker_lease_s`);
- `stopping` (SIGTERM or Ctrl-C in `lifelong trainer`): the run it carries out is marked
  interrupted, its child stopped, and `serve` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import asdict

from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.trainer import POLL_S, ChildRunner, TrainingChild, TrainRequest
from lifelong.feedback_store.runs import Claim, claim_training_run, release_claim, renew_claim

logger = logging.getLogger(__name__)


class TrainerWorker:
    """Carries out waiting runs one at a time; see the module docstring."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        runner: ChildRunner,
        lease_s: float,
        poll_s: float = POLL_S,
    ) -> None:
        self.sessions = sessions
        self.runner = runner
        self.lease_s = lease_s
        self.poll_s = min(poll_s, lease_s / 3)  # at least three renewals within a lease
        self.host = socket.gethostname()
        self.name = f"{self.host}/{os.getpid()}"  # the claim's holder: unique per process
        self.running_run: int | None = None

    async def serve(self, stopping: asyncio.Event) -> None:
        """Take and carry out waiting runs, one at a time, until `stopping` is set."""
        logger.info("trainer worker waiting for training runs", extra={"worker": self.name})
        while not stopping.is_set():
            try:
                claim = await asyncio.to_thread(self._claim)
            except Exception as exc:  # the database does not answer: look again later
                logger.warning("could not look for training runs: %s", exc)
                claim = None
            if claim is not None:
                await self._carry_out(claim, stopping)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.poll_s)
        logger.info("trainer worker stopped", extra={"worker": self.name})

    def _claim(self) -> Claim | None:
        with self.sessions.begin() as session:
            return claim_training_run(session, holder=self.name, host=self.host, pid=os.getpid(),
                                      lease_s=self.lease_s)

    async def _carry_out(self, claim: Claim, stopping: asyncio.Event) -> None:
        request = TrainRequest.of_run(claim.config)
        logger.info("training run claimed", extra={"run_id": claim.run_id, "worker": self.name,
                                                   "request": asdict(request)})
        self.running_run = claim.run_id
        try:
            try:
                child = await self.runner.launch(claim.run_id, request)
            except OSError as exc:  # the run is ended failed, saying why
                logger.error("cannot start the trainer process for run %s: %s", claim.run_id, exc)
                return
            await self._watch(claim, child, stopping)
        finally:
            self.running_run = None
            try:
                await asyncio.to_thread(self._release, claim.run_id)
            except Exception as exc:  # an expired claim harms nothing
                logger.warning("could not release the claim on run %s: %s", claim.run_id, exc)

    async def _watch(self, claim: Claim, child: TrainingChild, stopping: asyncio.Event) -> None:
        """Until the child has exited and its run is recorded: the claim renewed, the child
        stopped once the run was ended elsewhere, or interrupted once `stopping` is set."""
        ended = asyncio.ensure_future(child.ended())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not ended.done():
                await asyncio.wait({ended, stop}, timeout=self.poll_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                if ended.done():
                    break
                if stopping.is_set():
                    await child.interrupt(f"the trainer worker {self.name} stopped during "
                                          "training")
                    break
                if child.ending is None and not await self._still_ours(claim):
                    logger.warning("training run %s was ended elsewhere: stopping its process",
                                   claim.run_id)
                    child.stop("ended elsewhere")
            await ended
        finally:
            stop.cancel()

    async def _still_ours(self, claim: Claim) -> bool:
        """Renew the claim; False once the run was ended elsewhere."""

        def renew() -> bool:
            with self.sessions.begin() as session:
                return renew_claim(session, claim=claim, holder=self.name, lease_s=self.lease_s)

        try:
            return await asyncio.to_thread(renew)
        except Exception as exc:  # the database does not answer: nor can the child write to it
            logger.warning("could not renew the claim on run %s: %s", claim.run_id, exc)
            return True

    def _release(self, run_id: int) -> None:
        with self.sessions.begin() as session:
            release_claim(session, run_id=run_id)
