"""`lifelong trainer`: a trainer worker (daemon/trainer_worker.py) carrying out the training runs
the leading gateway queues in the database (`training.runner: worker`), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging

from lifelong.daemon.cli.base import ensure_base_model
from lifelong.daemon.cli.options import ConfigOption, DataDirOption, fail, settings_from
from lifelong.daemon.cli.serve import private_data_dir
from lifelong.daemon.settings import Settings

logger = logging.getLogger(__name__)


def trainer(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Train the runs the gateways queue (training.runner: worker), one at a time, each in a
    `lifelong train` process of its own.

    Needs only the gateways' database, the base model folder and the adapter storage (the same
    settings file will do): run it on its own GPU node, as many as you like; two never take the
    same run. SIGTERM or Ctrl-C stops it, marking the run it was training interrupted.
    """
    settings = settings_from(config, data_dir=data_dir)
    private_data_dir(settings.data_dir)
    ensure_base_model(settings)
    if settings.training.runner != "worker":
        logger.warning("training.runner is %s in these settings: gateways with the same settings "
                       "train in their own child processes and queue nothing for a worker",
                       settings.training.runner)
    _serve(settings)


def _serve(settings: Settings) -> None:
    import asyncio
    import signal

    from sqlalchemy.orm import sessionmaker

    from lifelong.daemon.settings import write_settings_file
    from lifelong.daemon.trainer import ChildRunner, trainer_command, trainer_env
    from lifelong.daemon.trainer_worker import TrainerWorker
    from lifelong.feedback_store.database import ensure_migrated, make_engine
    from lifelong.feedback_store.errors import DatabaseNotMigrated

    db, t = settings.database, settings.training
    engine = make_engine(settings.database_url, sqlite_synchronous=db.sqlite_synchronous,
                         connect_timeout_s=db.connect_timeout_s,
                         statement_timeout_s=db.statement_timeout_s)
    try:
        try:
            ensure_migrated(engine)  # a worker never makes or upgrades the schema
        except DatabaseNotMigrated as exc:
            fail(str(exc))
        sessions = sessionmaker(engine, expire_on_commit=False)
        # Its children read exactly these settings, as the gateway's children read the gateway's.
        settings_file = write_settings_file(
            settings, settings.data_dir / "run" / "trainer-worker-settings.yaml")
        worker = TrainerWorker(
            sessions=sessions, lease_s=t.worker_lease_s,
            runner=ChildRunner(sessions=sessions, command=trainer_command(settings_file),
                               env=trainer_env(), log_dir=settings.data_dir / "logs",
                               timeout_s=t.timeout_s),
        )

        async def serve() -> None:
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stopping.set)
            await worker.serve(stopping)

        asyncio.run(serve())
    finally:
        engine.dispose()
