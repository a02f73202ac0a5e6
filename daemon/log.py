"""Structured logging for the daemon: one JSON object per line on stderr.

Library code logs with `logging.getLogger(__name__)` and `extra={...}`; this module turns the
record and its extras into a JSON line that log shippers can index without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class SchedulerChatter(logging.Filter):
    """APScheduler's executors log two INFO lines per job run ("Running job ...", "... executed
    successfully"): with the data check every few seconds they would bury the daemon's own
    events. They pass as DEBUG, shown only at that level; their warnings and errors (a missed
    run, a job that raised) pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith("apscheduler.executors"):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure(level: str) -> None:
    """Route all logging to stderr as JSON lines at `level` (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SchedulerChatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that log every migration step or HTTP request at INFO: noise in a daemon's log.
    for noisy in ("alembic", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
