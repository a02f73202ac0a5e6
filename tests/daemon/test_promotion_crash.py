"""The registry is the truth: a daemon killed (SIGKILL) in the middle of a promotion restarts with
exactly one champion, and the public alias answers with it.

A promotion loads the version into vLLM, warms it, commits the registry, then flips the catalog
(no await between commit and flip, so the commit is the point of no return). The test kills the
daemon after vLLM has the new version but before the commit (holding SQLite's write lock keeps it
there), and again right after a promotion returned."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time

import httpx
import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lifelong.feedback_store import registry
from lifelong.feedback_store.database import make_engine
from lifelong.feedback_store.models import Adapter, Promotion

from .test_promotion import CHAT, register

pytestmark = pytest.mark.integration


def store_state(daemon) -> tuple[list[str], int]:
    """(versions with status champion, promotions logged)."""
    engine = make_engine(f"sqlite:///{daemon.data_dir / 'lifelong.db'}")
    with Session(engine) as session:
        champions = list(session.scalars(
            select(Adapter.version).where(Adapter.status == "champion")))
        promotions = session.scalar(select(func.count()).select_from(Promotion)) or 0
    engine.dispose()
    return champions, promotions


def vllm_models(daemon) -> set[str]:
    """The versions vLLM serves (served as `<version>-<checksum start>`)."""
    port = yaml.safe_load(daemon.config.read_text())["vllm"]["port"]
    return {re.sub(r"-[0-9a-f]{12}$", "", m["id"])
            for m in httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]}


def answered_by(daemon) -> str:
    response = httpx.post(f"{daemon.url}/v1/chat/completions", json=CHAT,
                          headers=daemon.headers("alice"), timeout=60)
    assert response.status_code == 200, response.text
    return response.headers["x-lifelong-adapter"]


def test_a_daemon_killed_mid_promotion_restarts_with_one_champion_and_serves_it(
    tiny_base_model, tmp_path, start_daemon
):
    daemon = start_daemon(tmp_path, tiny_base_model)
    try:
        register(daemon, tiny_base_model, "v0001", approve=True)
        admin = httpx.Client(base_url=daemon.url, headers=daemon.headers("ops"), timeout=120)

        # 1. Killed after vLLM loaded v0001, before the registry commit.
        blocker = sqlite3.connect(daemon.data_dir / "lifelong.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the commit waits on this lock

        def promote() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the daemon dies under it
                admin.post("/admin/promote", json={"version": "v0001"})

        promoting = threading.Thread(target=promote, daemon=True)
        promoting.start()
        deadline = time.monotonic() + 120
        while "v0001" not in vllm_models(daemon):
            assert time.monotonic() < deadline, "vLLM never loaded v0001"
            time.sleep(0.05)
        daemon.kill()
        blocker.execute("ROLLBACK")
        blocker.close()
        promoting.join(timeout=60)
        assert store_state(daemon) == ([], 0)

        daemon = start_daemon(tmp_path, tiny_base_model)
        admin = httpx.Client(base_url=daemon.url, headers=daemon.headers("ops"), timeout=120)
        assert admin.get("/admin/status").json()["serving"] == "base"
        assert answered_by(daemon) == "base"

        # 2. Killed right after a promotion returned: the commit happened, so v0001 it is.
        promoted = admin.post("/admin/promote", json={"version": "v0001"})
        assert promoted.status_code == 200, promoted.text
        daemon.kill()
        assert store_state(daemon) == (["v0001"], 1)

        daemon = start_daemon(tmp_path, tiny_base_model)
        assert answered_by(daemon) == "v0001"
        assert "v0001" in vllm_models(daemon)  # the new vLLM got the champion before traffic
        engine = make_engine(f"sqlite:///{daemon.data_dir / 'lifelong.db'}")
        with Session(engine) as session:
            assert registry.champion(session).version == "v0001"
        engine.dispose()
    finally:
        daemon.stop()
