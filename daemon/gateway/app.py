"""The gateway application: long-lived parts built in the lifespan, routers mounted, errors unified.

The lifespan enters each part on an `AsyncExitStack` as soon as it is made (as vLLM's
`build_async_engine_client` does), so a start-up that fails at any step closes, in reverse, what
it had opened: threads, database connections, the vLLM child. (Past 400 lines on purpose: each
part's making sits beside its closing, and the parts' order is the start-up and shutdown order.)

Start-up order: database (refused if not migrated) -> interaction log -> upstreams (the local vLLM
child is started and awaited; its champion adapter loaded) -> accept requests.
Shutdown order (after uvicorn stopped accepting and drained in-flight requests up to
`gateway.drain_timeout_s`): flush the interaction log -> stop vLLM -> close the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lifelong.daemon.canary import Canaries
from lifelong.daemon.catalog import ModelCatalog, Served
from lifelong.daemon.cluster import Replica, registry_champion
from lifelong.daemon.gateway import errors
from lifelong.daemon.gateway.admin.router import router as admin_router
from lifelong.daemon.gateway.admin.service import AdminService
from lifelong.daemon.gateway.auth import KeyRing
from lifelong.daemon.gateway.body_limit import BodyLimit
from lifelong.daemon.gateway.data.router import router as data_router
from lifelong.daemon.gateway.data.service import DataService
from lifelong.daemon.gateway.exposition import router as exposition_router
from lifelong.daemon.gateway.feedback.router import router as feedback_router
from lifelong.daemon.gateway.feedback.service import FeedbackService
from lifelong.daemon.gateway.health import router as health_router
from lifelong.daemon.gateway.inference.router import router as inference_router
from lifelong.daemon.gateway.inference.service import InferenceService
from lifelong.daemon.judge import Judge, build_judge
from lifelong.daemon.leadership import Leadership
from lifelong.daemon.learning_cycle import LearningCycle, Schedule
from lifelong.daemon.metrics import ServingMetrics, StateCollector, VersionLabels
from lifelong.daemon.practice import Practice
from lifelong.daemon.promotion import Promoter
from lifelong.daemon.retention import Retention
from lifelong.daemon.settings import Settings, write_settings_file
from lifelong.daemon.supervisor import HealthWatch, Supervisor
from lifelong.daemon.trainer import (
    ChildRunner,
    Runner,
    Trainer,
    WorkerRunner,
    trainer_command,
    trainer_env,
)
from lifelong.daemon.upstream import HttpUpstream, Upstream, UpstreamPool
from lifelong.daemon.user_traffic import UserTraffic
from lifelong.daemon.vllm_launch import vllm_command, vllm_env
from lifelong.evals.verifier_pool import VerifierPool
from lifelong.feedback_store.database import DatabaseWatch, ensure_migrated, make_engine
from lifelong.feedback_store.feedback_committer import FeedbackCommitter
from lifelong.feedback_store.interaction_log import InteractionLog
from lifelong.feedback_store.runs import interrupt_running_eval_runs

logger = logging.getLogger(__name__)


def _note_vllm_url(settings: Settings, url: str) -> None:
    # Where the daemon's own vLLM answers now (it moves between two ports when replaced), for
    # `lifelong eval`.
    path = settings.data_dir / "run" / "vllm.url"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url + "\n")


def _interrupt_eval_runs(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        if ended := interrupt_running_eval_runs(session):
            logger.warning("eval runs interrupted by the last shutdown", extra={"runs": ended})


def create_app(settings: Settings, *, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The gateway for `settings`. `on_fatal(reason)` is called if vLLM cannot be kept alive."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        async with AsyncExitStack() as stack:
            # Each part is entered as soon as it is made: a failure at any later step closes
            # it, and shutdown (uvicorn has stopped accepting and drained in-flight requests
            # by then) closes every part in the reverse order.
            engine, state.database_watch = stack.enter_context(_database(settings))
            state.sessions = sessions = sessionmaker(engine, expire_on_commit=False)
            state.keyring = KeyRing(settings.gateway.api_keys)
            state.catalog = catalog = ModelCatalog(alias=settings.gateway.public_alias)
            c = settings.cluster
            # The learning loop runs while this replica holds the lease (`learning` is bound
            # below, before the leadership starts).
            learning: _LearningLoop
            state.leadership = leadership = Leadership(
                sessions=sessions, holder=c.replica_id, holder_url=c.advertise_url,
                lease_s=c.lease_s, on_elected=lambda epoch: _lead(learning, settings, sessions),
                on_deposed=lambda reason: _follow(learning))
            state.pool, state.watchers = await stack.enter_async_context(_upstreams(
                settings, app, sessions=sessions, catalog=catalog,
                on_fatal=on_fatal or (lambda reason: None)))
            state.interaction_log, committer = await stack.enter_async_context(
                _writers(settings, engine))
            learning = await stack.enter_async_context(_learning(
                settings, sessions=sessions, catalog=catalog, upstreams=state.pool.upstreams,
                leadership=leadership))
            state.trainer, state.judge = learning.trainer, learning.judge
            state.promoter, state.cycle = learning.promoter, learning.cycle
            state.practice, state.schedule = learning.practice, learning.schedule
            state.replica = replica = learning.replica
            r = settings.retention
            state.data = DataService(sessions=sessions, batch_size=r.batch_size,
                                     pause_s=r.pause_ms / 1000)
            state.admin = AdminService(
                sessions=sessions, catalog=catalog, trainer=learning.trainer, cycle=learning.cycle,
                judge=learning.judge, promoter=learning.promoter, practice=learning.practice,
                schedule=learning.schedule, background=learning.background,
                leadership=leadership, replica=replica, canaries=learning.canaries)
            # One registry per app, not prometheus_client's global one: a process may build several.
            state.metrics_registry = CollectorRegistry()
            metrics = await _metrics(
                settings, state.metrics_registry, learning, catalog=catalog, sessions=sessions,
                watchers=state.watchers, interaction_log=state.interaction_log)
            db = settings.database
            state.inference = InferenceService(
                catalog=catalog, pool=state.pool, interaction_log=state.interaction_log,
                metrics=metrics, limits=settings.limits, max_request_chars=db.max_text_chars,
                max_model_len=settings.vllm.max_model_len, traffic=learning.traffic,
            )
            state.feedback = FeedbackService(
                sessions=sessions, committer=committer, interaction_log=state.interaction_log,
                feedback_wait_s=settings.gateway.feedback_wait_s,
                other_replicas=lambda: replica.others_alive,
                heldout_fraction=db.heldout_fraction, max_text_chars=db.max_text_chars,
                metrics=metrics, max_pattern_chars=settings.evals.verifiers.max_pattern_chars,
                database_timeout_s=db.connect_timeout_s + db.statement_timeout_s,
            )
            for watcher in state.watchers:
                try:
                    await watcher.start()
                except Exception as exc:
                    logger.error("cannot start serving: %s", exc)
                    raise
            # Follow the registry's champion and report what this replica serves; then lead
            # the learning loop if no other replica does.
            await replica.start()
            stack.push_async_callback(replica.stop)
            stack.push_async_callback(leadership.stop)
            await leadership.start()
            logger.info("gateway ready", extra={
                "upstreams": settings.vllm_urls, "champion": catalog.champion,
                "open": state.keyring.open, "replica": c.replica_id,
                "leading": leadership.leading,
            })
            yield

    app = FastAPI(
        title="lifelong",
        version="0.1.0",
        summary="An OpenAI-compatible gateway that learns from its feedback.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.gateway.max_request_bytes)
    errors.install(app)
    app.include_router(inference_router)
    app.include_router(feedback_router)
    app.include_router(health_router)
    app.include_router(exposition_router)
    app.include_router(admin_router)
    app.include_router(data_router)
    return app


@contextmanager
def _database(settings: Settings) -> Iterator[tuple[Engine, DatabaseWatch]]:
    """The pooled engine, refused unless migrated, and the watch that probes the database on a
    thread of its own through an unpooled one; closed: the watch stopped, the pool disposed."""
    db = settings.database
    engine = make_engine(
        settings.database_url, sqlite_synchronous=db.sqlite_synchronous,
        connect_timeout_s=db.connect_timeout_s, statement_timeout_s=db.statement_timeout_s,
    )
    try:
        ensure_migrated(engine)
        watch = DatabaseWatch(
            make_engine(settings.database_url, sqlite_synchronous=db.sqlite_synchronous,
                        connect_timeout_s=db.connect_timeout_s, pooled=False),
            stuck_after_s=db.connect_timeout_s, on_down=engine.dispose,
        )
        try:
            yield engine, watch
        finally:
            watch.close()
    finally:
        engine.dispose()


@asynccontextmanager
async def _writers(
    settings: Settings, engine: Engine,
) -> AsyncIterator[tuple[InteractionLog, FeedbackCommitter]]:
    """The interaction log and the feedback committer, each writing on a thread of its own;
    closed: both flushed (up to 30 s each), the interactions first (feedback refers to them)."""
    db = settings.database
    committer = FeedbackCommitter(engine, rating_min=db.rating_min, rating_max=db.rating_max,
                                  max_text_chars=db.max_text_chars)
    try:
        interaction_log = InteractionLog(engine, heldout_fraction=db.heldout_fraction,
                                         max_queue=settings.gateway.log_queue_size)
        try:
            yield interaction_log, committer
        finally:
            stats = await asyncio.to_thread(interaction_log.close, 30.0)
            logger.info("interaction log flushed", extra={"stats": asdict(stats)})
    finally:
        await asyncio.to_thread(committer.close, 30.0)


@asynccontextmanager
async def _upstreams(
    settings: Settings, app: FastAPI, *, sessions: sessionmaker[Session], catalog: ModelCatalog,
    on_fatal: Callable[[str], None],
) -> AsyncIterator[tuple[UpstreamPool, list[Supervisor | HealthWatch]]]:
    """The vLLM servers, their pool and their watchers (made here, started last by the
    lifespan) with the callbacks that serve the registry's adapters after a (re)start; closed:
    the watchers stopped (the local vLLM with them), the pool's sessions closed."""
    # The judge and the promoter are made after the servers (they need them): read from
    # app.state when a replacement needs them, long after start-up.
    state = app.state

    first: list[bool] = [True]

    async def apply_adapters(upstream: Upstream) -> None:
        # After any (re)start a server gets the champion this replica routes to and the
        # registry's (another replica may have moved it; `Replica.follow` flips this one once
        # every server has it), so the alias never reaches it without its adapter. The first
        # server up sets what the alias means here: the registry is the truth.
        def read_champion() -> tuple[str, Served] | None:
            with sessions() as session:
                return registry_champion(session)

        champion = await asyncio.to_thread(read_champion)
        wanted = dict([champion] if champion else [])
        if catalog.champion is not None:
            wanted[catalog.champion] = catalog.live[catalog.champion]
        if (canary := catalog.canary) is not None:  # its share of users reaches every server
            wanted[canary.version] = canary.served
        for served in wanted.values():  # loaded and warmed, as a promotion does
            await state.promoter.load_and_warm(upstream, served)
        if first[0]:
            first[0] = False
            if champion is not None:
                catalog.live[champion[0]] = champion[1]
            catalog.champion = champion[0] if champion else None
        _note_vllm_url(settings, upstream.base_url)

    kept: dict[str, Served] = {}

    async def ready_replacement(upstream: Upstream) -> None:
        # The champion, and the versions served last (rollback stays instant), warmed.
        await apply_adapters(upstream)
        recent = [v for v in catalog.live if v != catalog.champion]
        keep = recent[len(recent) - settings.vllm.keep_adapters:] \
            if settings.vllm.keep_adapters else []
        kept.clear()
        canary = [catalog.canary.version] if catalog.canary else []
        for version in [*keep, *canary, *([catalog.champion] if catalog.champion else [])]:
            kept[version] = catalog.live[version]
            await state.promoter.load_and_warm(upstream, kept[version])

    def replaced() -> None:
        # Versions not carried over are no longer served by name (rollback reloads them).
        catalog.live.clear()
        catalog.live.update(kept)

    @asynccontextmanager
    async def exclusive() -> AsyncIterator[None]:
        async with state.judge.lock, state.promoter.lock:
            yield

    upstreams = [HttpUpstream(url, timeout_s=settings.vllm.request_timeout_s)
                 for url in settings.vllm_urls]
    pool = UpstreamPool(list(upstreams))
    watchers: list[Supervisor | HealthWatch]
    if settings.vllm.upstreams:
        watchers = [HealthWatch(upstream=u, on_ready=apply_adapters) for u in upstreams]
    else:
        settings.adapters_dir.mkdir(parents=True, exist_ok=True)  # vLLM's resolver needs it
        watchers = [
            Supervisor(
                command=lambda port: vllm_command(settings, port),
                ports=(settings.vllm.port, settings.vllm.port + 1),
                env=lambda port: vllm_env(settings, port),
                upstream=upstreams[0],
                log_path=settings.data_dir / "logs" / "vllm.log",
                on_ready=apply_adapters,
                startup_timeout_s=settings.vllm.startup_timeout_s,
                max_restarts=settings.vllm.max_restarts,
                restart_window_s=settings.vllm.restart_window_s,
                on_give_up=on_fatal,
                replace_after=settings.vllm.replace_after_adapters,
                on_replacement=ready_replacement,
                on_replaced=replaced,
                exclusive=exclusive,
            )
        ]
    try:
        yield pool, watchers
    finally:
        # Stopping a watcher that never started is a no-op (a failed start may have left a
        # child to kill).
        for watcher in watchers:
            await watcher.stop()
        await pool.aclose()


@dataclass(frozen=True)
class _LearningLoop:
    trainer: Trainer
    judge: Judge
    promoter: Promoter
    cycle: LearningCycle
    practice: Practice
    schedule: Schedule | None  # started while this replica leads
    traffic: UserTraffic
    background: set[asyncio.Task[None]]  # tasks the API started (evals), kept until they end
    replica: Replica
    canaries: Canaries  # decides while this replica leads
    retention: Retention  # deletes expired rows while this replica leads


async def _lead(learning: _LearningLoop, settings: Settings,
                sessions: sessionmaker[Session]) -> None:
    """This replica now leads: what earlier leaders left running is marked interrupted, then
    the triggers start."""
    await learning.trainer.recover()
    await asyncio.to_thread(_interrupt_eval_runs, sessions)
    if learning.schedule is not None:
        await learning.schedule.start()
    await learning.practice.start()
    await learning.canaries.start()
    await learning.retention.start()
    if settings.evals.general_suite or settings.training.anchor_fraction > 0:
        prepared = asyncio.create_task(_prepare(learning.judge, settings))
        learning.background.add(prepared)
        prepared.add_done_callback(learning.background.discard)


async def _follow(learning: _LearningLoop) -> None:
    """This replica no longer leads: triggers stopped, the running cycle and evals cancelled,
    the training run marked interrupted and its child stopped. Serving goes on."""
    if learning.schedule is not None:
        await learning.schedule.stop()
    await learning.practice.stop()
    await learning.canaries.stop()
    await learning.retention.stop()
    await learning.cycle.stop()
    await _cancel(learning.background)
    await learning.trainer.stop()


@asynccontextmanager
async def _learning(
    settings: Settings, *, sessions: sessionmaker[Session], catalog: ModelCatalog,
    upstreams: list[Upstream], leadership: Leadership,
) -> AsyncIterator[_LearningLoop]:
    """The trainer (its runs left by the last shutdown marked interrupted), the judge with its
    verifier workers, the promoter, the learning cycle and its triggers (started later, by the
    lifespan); closed: the cycle and the API's evals cancelled, the verifier workers and the
    training child stopped."""
    async with AsyncExitStack() as stack:
        practice: list[Practice] = []  # made below: it needs the trainer, which asks it
        t = settings.training
        runner: Runner
        if t.runner == "worker":  # a `lifelong trainer` elsewhere takes the runs from the database
            runner = WorkerRunner(sessions=sessions, timeout_s=t.timeout_s)
        else:
            runner = ChildRunner(
                sessions=sessions,
                command=trainer_command(
                    write_settings_file(settings, settings.data_dir / "run" / "trainer-settings.yaml"),
                    extra=lambda request: practice[0].arguments(request),
                ),
                env=trainer_env(),
                log_dir=settings.data_dir / "logs",
                timeout_s=t.timeout_s,
                niceness=lambda request: practice[0].niceness(request),
            )
        trainer = Trainer(sessions=sessions, runner=runner, fence=leadership.check)
        stack.push_async_callback(trainer.stop)
        # Evals answer through the first server: every server holds the same model.
        # Verifiers run in worker processes of their own (started on first use), never on this
        # loop or its default executor, which the database reads use.
        verifiers = VerifierPool(settings.evals.verifiers.workers)
        stack.push_async_callback(asyncio.to_thread, verifiers.close)
        judge = build_judge(settings, sessions=sessions, upstream=upstreams[0],
                            verifiers=verifiers)
        c = settings.cluster
        replicas: list[Replica] = []  # made below: it needs the promoter, which waits on it
        promoter = Promoter(
            sessions=sessions, catalog=catalog, upstreams=list(upstreams),
            base_model_dir=settings.base_model_path, fence=leadership.check,
            propagate=lambda version: replicas[0].wait_for(version, c.propagation_timeout_s),
            watch=settings.promotion.watch.enabled)
        replicas.append(Replica(
            replica_id=c.replica_id, url=c.advertise_url, sessions=sessions, catalog=catalog,
            upstreams=list(upstreams), promoter_lock=promoter.lock,
            load_and_warm=promoter.load_and_warm, leading=lambda: leadership.leading,
            sync_s=c.sync_s, heartbeat_s=c.heartbeat_s))
        canaries = Canaries(
            settings=settings.promotion, sessions=sessions, catalog=catalog, promoter=promoter,
            replica_id=c.replica_id, replica_stale_s=replicas[0].stale_s,
            wait_for_replicas=replicas[0].wait_for_canary,
            propagation_timeout_s=c.propagation_timeout_s)
        stack.push_async_callback(canaries.stop)
        retention = Retention(settings=settings.retention, sessions=sessions)
        stack.push_async_callback(retention.stop)
        background: set[asyncio.Task[None]] = set()
        stack.push_async_callback(_cancel, background)
        cycle = LearningCycle(
            sessions=sessions, trainer=trainer, judge=judge, promoter=promoter,
            auto_promote=settings.schedule.auto_promote,
            canary=(lambda version: canaries.start_canary(version, by="gate"))
            if settings.promotion.canary.enabled else None)
        stack.push_async_callback(cycle.stop)
        s = settings.schedule
        traffic = UserTraffic(stale_s=settings.vllm.request_timeout_s)
        practice.append(Practice(
            settings=s.practice, grpo=settings.training.grpo, recipe=settings.training.recipe,
            traffic=traffic, trainer=trainer, cycle=cycle, sessions=sessions,
            pause_file=settings.data_dir / "run" / "practice.pause",
            check_every_s=s.check_every_s, trigger=s.enabled,
        ))
        schedule = Schedule(
            cycle, interval_minutes=s.interval_minutes, cron=s.cron,
            min_new_feedback=s.min_new_feedback, check_every_s=s.check_every_s,
            rejudge_new_heldout=s.rejudge_new_heldout,
        ) if s.enabled else None
        yield _LearningLoop(trainer, judge, promoter, cycle, practice[0], schedule, traffic,
                            background, replicas[0], canaries, retention)


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    # Evals the API started: cancelled, their runs are marked failed, not left running.
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _metrics(
    settings: Settings, registry: CollectorRegistry, learning: _LearningLoop, *,
    catalog: ModelCatalog, sessions: sessionmaker[Session],
    watchers: list[Supervisor | HealthWatch], interaction_log: InteractionLog,
) -> ServingMetrics:
    """The serving metrics, and the state collector registered once it has read the version
    labels (before the first request)."""
    versions = VersionLabels(catalog)
    metrics = ServingMetrics(registry, versions=versions, watchers=watchers,
                             practice=learning.practice, interaction_log=interaction_log)
    trainer = learning.trainer
    collector = StateCollector(sessions=sessions, versions=versions,
                               canary_margin=settings.promotion.canary.margin,
                               running_run=lambda: trainer.running_run,
                               on_versions=metrics.forget_versions,
                               cache_s=settings.gateway.metrics_cache_s,
                               replica_stale_s=learning.replica.stale_s)
    await asyncio.to_thread(collector.refresh)
    registry.register(collector)
    return metrics


async def _prepare(judge: Judge, settings: Settings) -> None:
    """The base model's answers for the general suite and the anchors, asked once at start-up;
    a failure is logged and retried by the first judgement or training run that needs them."""
    anchors = settings.anchors_file if settings.training.anchor_fraction > 0 else None
    try:
        await judge.prepare(anchors)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.warning("could not ask the base model for the general suite and anchors at "
                       "start-up (%s: %s); the first cycle will", type(exc).__name__, exc)
