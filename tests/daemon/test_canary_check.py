"""The leader's look at an open canary whose candidate cannot be served any more (its folder
gone while the daemon was down): the canary ends as aborted and the champion serves everyone;
any other failure (storage or database away) leaves it open for the next look. SQLite and
PostgreSQL, no servers (nothing gets as far as loading)."""

from __future__ import annotations

import asyncio

from sqlalchemy.orm import sessionmaker

from lifelong.daemon.canary import Canaries
from lifelong.daemon.catalog import ModelCatalog
from lifelong.daemon.promotion import Promoter
from lifelong.daemon.settings import PromotionSettings
from lifelong.feedback_store import canaries, registry


def make(engine, tmp_path) -> tuple[Canaries, sessionmaker]:  # type: ignore[type-arg]
    sessions = sessionmaker(engine, expire_on_commit=False)
    catalog = ModelCatalog(alias="lifelong")
    promoter = Promoter(sessions=sessions, catalog=catalog, upstreams=[],
                        base_model_dir=tmp_path / "base")

    async def nobody_else(trial_id: int | None, timeout_s: float) -> list[str]:
        return []

    return Canaries(settings=PromotionSettings(), sessions=sessions, catalog=catalog,
                    promoter=promoter, replica_id="me", replica_stale_s=15,
                    wait_for_replicas=nobody_else, propagation_timeout_s=1), sessions


def test_a_canary_whose_candidate_folder_is_gone_ends_aborted(engine, tmp_path):
    judge, sessions = make(engine, tmp_path)
    with sessions.begin() as session:
        registry.register(session, version="v0002", path=str(tmp_path / "gone"),
                          checksum="sha256:0")
        registry.approve(session, version="v0002")
        trial = canaries.start(session, kind="canary", version="v0002", baseline_version=None,
                               share=0.1, by="gate")
    asyncio.run(judge.check())
    with sessions() as session:
        ended = canaries.trials(session)[0]
        assert (ended.id, ended.decision) == (trial.id, "aborted")
        assert "cannot be served" in (ended.reason or "") and "gone" in ended.reason
        assert canaries.open_trial(session) is None
    assert judge.catalog.canary is None and judge.last_error is None


def test_a_failure_that_is_not_the_candidates_leaves_the_canary_open(engine, tmp_path):
    judge, sessions = make(engine, tmp_path)
    with sessions.begin() as session:
        registry.register(session, version="v0003", path=str(tmp_path / "v0003"),
                          checksum="sha256:0")
        canaries.start(session, kind="canary", version="v0003", baseline_version=None,
                       share=0.1, by="gate")

    def away(*_: object, **__: object) -> None:
        raise OSError("the storage is away")

    judge.promoter.verified = away  # type: ignore[method-assign,assignment]
    asyncio.run(judge.check())  # logged, and the next look tries again
    assert judge.last_error == "the storage is away"
    with sessions() as session:
        assert canaries.open_trial(session) is not None
