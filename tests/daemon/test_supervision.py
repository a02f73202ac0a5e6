"""Supervision with a real vLLM child: a killed engine is restarted with the champion adapter
loaded (503 + Retry-After meanwhile), and SIGTERM shuts everything down with no orphan."""

from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest
from sqlalchemy.orm import Session

from lifelong.feedback_store import registry
from lifelong.feedback_store.database import make_engine

pytestmark = pytest.mark.integration

CHAT = {"model": "lifelong", "messages": [{"role": "user", "content": "What is 1 + 1?"}],
        "max_tokens": 2}


def make_adapter(model_dir, out_dir):
    """A small real peft LoRA adapter for the tiny base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    model.save_pretrained(out_dir)
    return out_dir


def vllm_processes(daemon) -> list[psutil.Process]:
    children = psutil.Process(daemon.process.pid).children(recursive=True)
    return [p for p in children if "vllm.entrypoints" in " ".join(p.cmdline())]


def test_killed_vllm_restarts_with_the_champion_then_sigterm_leaves_no_orphan(
    tiny_base_model, tmp_path, start_daemon
):
    daemon = start_daemon(tmp_path, tiny_base_model)
    try:
        adapter = make_adapter(tiny_base_model, tmp_path / "adapters" / "v0001")
        engine = make_engine(f"sqlite:///{daemon.data_dir / 'lifelong.db'}")
        with Session(engine) as session, session.begin():
            registry.register(session, version="v0001", path=str(adapter), checksum="test")
            registry.set_champion(session, version="v0001", promoted_by="test")
        engine.dispose()
        headers = daemon.headers("alice")
        before = httpx.post(f"{daemon.url}/v1/chat/completions", json=CHAT, headers=headers)
        assert before.headers["x-lifelong-adapter"] == "base"  # the registry is read at (re)start

        (server,) = vllm_processes(daemon)
        server.kill()
        statuses = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            response = httpx.post(
                f"{daemon.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=30
            )
            statuses.append(response.status_code)
            if response.status_code == 200:
                break
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) > 0
            assert response.json()["error"]["code"] == "upstream_unavailable"
            time.sleep(0.5)
        assert 503 in statuses and statuses[-1] == 200
        assert response.headers["x-lifelong-adapter"] == "v0001"
        models = httpx.get(f"{daemon.url}/v1/models", headers=headers).json()
        assert "v0001" in {card["id"] for card in models["data"]}

        root = psutil.Process(daemon.process.pid)
        tree = [root, *root.children(recursive=True)]
        # uvicorn re-raises the signal after its clean shutdown, so the parent sees SIGTERM.
        assert daemon.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in daemon.log.read_text()
        time.sleep(1)
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == []
        engine = make_engine(f"sqlite:///{daemon.data_dir / 'lifelong.db'}")
        with Session(engine) as session:
            from lifelong.feedback_store.models import Interaction

            assert session.query(Interaction).count() == 2  # both answered requests were flushed
        engine.dispose()
    finally:
        daemon.stop(signal.SIGKILL)
