"""Per-principal rate limits on inference: requests and tokens per minute, as token buckets.

Each bucket holds up to a minute's worth and refills continuously. A request takes one from the
requests bucket before it is answered; its tokens are known only once vLLM has answered, so they
are charged afterwards and may put the tokens bucket in debt, which refuses the key's next
requests until it refills (a key overshoots by at most what it has in flight). Hand-written
rather than `limits`/`slowapi`: their hit-before-work API cannot charge a cost learned after the
work. The buckets live in this process's memory: behind several gateways a key gets each one's
rate (a shared limit needs a shared store; not built).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class RateLimited(Exception):
    """A principal is over its `limit`; it may retry after `retry_after_s` seconds."""

    def __init__(self, *, limit: str, per_minute: int, retry_after_s: int) -> None:
        super().__init__(
            f"Rate limit reached: {per_minute} {limit} per minute for this API key "
            f"(limits.{limit}_per_minute); retry in {retry_after_s} s."
        )
        self.limit = limit
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    per_minute: int
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.per_minute, self.level + (now - self.at) * self.per_minute / 60.0)
        self.at = now

    def wait_s(self) -> int:
        """Whole seconds until the bucket holds one again (at least 1)."""
        return max(1, math.ceil((1.0 - self.level) * 60.0 / self.per_minute))


@dataclass
class RateLimiter:
    """`admit` before a request is served, `charge` its tokens after; None: that limit is off."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    clock: Callable[[], float] = time.monotonic
    # One pair per principal: as many as there are API keys (or one with no keys).
    _buckets: dict[tuple[str | None, str], _Bucket] = field(default_factory=dict)

    def _bucket(self, principal: str | None, limit: str, per_minute: int) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get((principal, limit))
        if bucket is None:
            bucket = self._buckets[(principal, limit)] = _Bucket(per_minute, per_minute, now)
        bucket.refill(now)
        return bucket

    def admit(self, principal: str | None) -> None:
        """Take one request for `principal`. Raises RateLimited (taking nothing) when it is over
        either limit."""
        if self.tokens_per_minute is not None:
            tokens = self._bucket(principal, "tokens", self.tokens_per_minute)
            if tokens.level < 1.0:
                raise RateLimited(limit="tokens", per_minute=tokens.per_minute,
                                  retry_after_s=tokens.wait_s())
        if self.requests_per_minute is not None:
            requests = self._bucket(principal, "requests", self.requests_per_minute)
            if requests.level < 1.0:
                raise RateLimited(limit="requests", per_minute=requests.per_minute,
                                  retry_after_s=requests.wait_s())
            requests.level -= 1.0

    def charge(self, principal: str | None, tokens: int) -> None:
        """Count the tokens an answer used against `principal`'s tokens per minute."""
        if self.tokens_per_minute is not None:
            self._bucket(principal, "tokens", self.tokens_per_minute).level -= tokens
