"""The running daemon's admin API as the CLI calls it: urllib (no HTTP library to import for a
command that makes one request), and typed results for the fields the commands read.

The types describe what `GET /admin/status` and `POST /admin/promote|rollback` answer
(daemon/gateway/admin/router.py); fields the CLI does not read are ignored, and `--json`
prints the document as sent (`AdminClient.call`).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class Promoted(_Answer):
    """`POST /admin/promote` and `/admin/rollback`: who serves now, and who did before."""

    champion: str
    previous: str
    forced: bool
    lagging: list[str] = []  # gateway replicas that had not followed when it answered


class LastCycle(_Answer):
    trigger: str
    started_at: str
    outcome: str
    reason: str | None = None


class Cycle(_Answer):
    running: bool
    training_run: int | None = None
    last: LastCycle | None = None


class Schedule(_Answer):
    enabled: bool
    next_run: str | None = None
    min_new_feedback: int | None = None
    new_feedback: int


class Practice(_Answer):
    enabled: bool
    paused: bool
    pauses: int
    last_check: str | None = None


class Sandbox(_Answer):
    isolation: str
    layers: list[str]
    python_tests: str
    reason: str | None = None


class TrainingRun(_Answer):
    id: int
    status: str
    started_at: str
    adapter_version: str | None = None
    reason: str | None = None


class Decision(_Answer):
    candidate: str | None  # None: the base model was judged
    against: str
    why: str


class Promotion(_Answer):
    at: str
    kind: str
    from_version: str = Field(alias="from")
    to: str
    by: str
    forced: bool


class Server(_Answer):
    url: str
    ready: bool
    adapters: list[str] = []
    serves_champion: bool | None = None
    error: str | None = None


class ReplicaRow(_Answer):
    replica: str
    url: str | None = None
    alive: bool
    seen_s_ago: float
    leader: bool
    champion: str
    servers: list[Server]
    agrees: bool


class Leader(_Answer):
    replica: str
    url: str | None = None
    epoch: int
    expires_in_s: float


class Cluster(_Answer):
    replica: str
    leading: bool
    leader: Leader | None = None
    replicas: list[ReplicaRow]


class Trial(_Answer):
    """A canary or a watch (`POST /admin/canary`, and in the status)."""

    id: int
    kind: str
    version: str
    baseline: str
    share: float
    started_at: str
    ended_at: str | None = None
    decision: str | None = None
    reason: str | None = None
    stats: dict[str, Any] | None = None


class Canary(_Answer):
    enabled: bool
    share: float
    open: Trial | None = None
    last: Trial | None = None


class DaemonStatus(_Answer):
    """`GET /admin/status`: what the daemon serves, waits on, and has lately done."""

    serving: str
    champion: str | None = None
    waiting: list[str]
    cycle: Cycle
    schedule: Schedule
    practice: Practice | None = None  # absent from daemons older than practice
    sandbox: Sandbox | None = None
    cluster: Cluster | None = None  # absent from daemons older than replicas
    canary: Canary | None = None  # absent from daemons older than canaries
    training_runs: list[TrainingRun]
    decisions: list[Decision]
    promotions: list[Promotion]


A = TypeVar("A", bound=_Answer)


class AdminError(Exception):
    """The daemon refused or could not be reached; the message names the fix."""


class AdminClient:
    """Calls to one daemon's admin API with an admin key (None: a daemon without keys)."""

    def __init__(self, base_url: str, key: str | None, *, timeout_s: float = 600) -> None:
        self.base_url = base_url
        self.key = key
        self.timeout_s = timeout_s  # promote waits for vLLM to load the adapter

    def status(self) -> DaemonStatus:
        return self._typed(DaemonStatus, "/admin/status", None)

    def promote(self, version: str, *, force: bool, reason: str | None) -> Promoted:
        return self._typed(Promoted, "/admin/promote",
                           {"version": version, "force": force, "reason": reason})

    def start_canary(self, version: str) -> Trial:
        return self._typed(Trial, "/admin/canary", {"version": version})

    def stop_canary(self) -> Trial:
        return self._typed(Trial, "/admin/canary/stop", {})

    def rollback(self, *, to: str | None, reason: str | None) -> Promoted:
        return self._typed(Promoted, "/admin/rollback", {"to": to, "reason": reason})

    def call(self, path: str, body: dict[str, object] | None) -> Any:
        """The JSON answer to GET `path` (no body) or POST `path`. Raises AdminError with the
        daemon's own message, or how to reach it."""
        import urllib.error
        import urllib.request

        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            hint = ("; give an admin key with LIFELONG_API_KEY or --key-file"
                    if exc.code in (401, 403) else "")
            raise AdminError(f"{message}{hint}") from None
        except OSError as exc:
            raise AdminError(f"cannot reach the daemon at {self.base_url} ({exc}); is "
                             "`lifelong serve` running? (--url)") from None

    def _typed(self, answer: type[A], path: str, body: dict[str, object] | None) -> A:
        document = self.call(path, body)
        try:
            return answer.model_validate(document)
        except ValidationError as exc:
            raise AdminError(f"the daemon at {self.base_url} answered {path} in a form this "
                             f"lifelong does not know ({exc.error_count()} fields differ); run "
                             "the same lifelong version as the daemon") from None
