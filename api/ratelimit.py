"""Per-tenant rate limits on the Contacts API: a fixed window a tenant and scope.

Webhooks are not limited: a verified provider request is never refused for load (Twilio does
not resend), and fairness between tenants is the drains' job (worker/tasks.py).

With `INTAKE_REDIS_URL` the counts live in Redis, shared by every app process; without it, in
this process. A tenant over its limit gets a 429 problem with `Retry-After` in whole seconds,
and never spends another tenant's allowance. Redis failing must not take the API down with it,
so the Redis limiter then lets requests through (fail open) and logs a warning.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from fastapi import FastAPI

from api.errors import Problem, ProblemError
from intake.settings import Settings

log = logging.getLogger("intake.ratelimit")

WINDOW_SECONDS = 60
# Redis is asked on every request: an answer slower than this is treated as an outage.
REDIS_TIMEOUT_SECONDS = 0.5
# After a Redis failure, stop asking for a while: a dead Redis then costs requests nothing,
# and the warning is logged once a pause rather than once a request.
REDIS_PAUSE_SECONDS = 5.0
LOCAL_MAX_KEYS = 10_000  # expired windows are swept when the table grows past this

# INCR, and start the window on its first hit: one round trip, atomic, no read-modify-write race
# between app processes. Returns the count so far and the milliseconds left in the window.
_FIXED_WINDOW = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: int = 0  # whole seconds until the window resets, when refused


class RateLimiter(Protocol):
    def hit(self, key: str, *, limit: int) -> Decision:
        """Count one request under `key`; refused once `limit` requests fell in the window."""
        ...


def _retry_after(seconds_left: float) -> int:
    return max(1, math.ceil(seconds_left))


class LocalRateLimiter:
    """Counts in this process: right for one app process (the embedded defaults)."""

    def __init__(
        self, *, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window ends at, count)

    def hit(self, key: str, *, limit: int) -> Decision:
        now = self._clock()
        with self._lock:
            ends, count = self._windows.get(key, (0.0, 0))
            if ends <= now:
                if len(self._windows) >= LOCAL_MAX_KEYS:
                    self._sweep(now)
                ends, count = now + self.window_seconds, 0
            count += 1
            self._windows[key] = (ends, count)
        if count > limit:
            return Decision(False, _retry_after(ends - now))
        return Decision(True)

    def _sweep(self, now: float) -> None:
        self._windows = {k: v for k, v in self._windows.items() if v[0] > now}


class RedisRateLimiter:
    """Counts in Redis, so every app process shares one allowance per tenant."""

    prefix = "intake:ratelimit:"

    def __init__(
        self,
        client: redis.Redis,
        *,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.window_ms = max(1, int(window_seconds * 1000))
        self._script: Any = client.register_script(_FIXED_WINDOW)
        self._clock = clock
        self._paused_until = 0.0

    def hit(self, key: str, *, limit: int) -> Decision:
        if self._clock() < self._paused_until:
            return Decision(True)
        try:
            count, ttl_ms = self._script(keys=[self.prefix + key], args=[self.window_ms])
        except redis.RedisError as exc:
            self._paused_until = self._clock() + REDIS_PAUSE_SECONDS
            log.warning(
                "ratelimit.unavailable",
                extra={
                    "error": type(exc).__name__,
                    "action": "allowing",
                    "pause_seconds": REDIS_PAUSE_SECONDS,
                },
            )
            return Decision(True)
        if int(count) > limit:
            return Decision(False, _retry_after(int(ttl_ms) / 1000))
        return Decision(True)


def make_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis-backed when `settings.redis_url` is set, in-process otherwise."""
    if settings.redis_url:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        return RedisRateLimiter(client)
    return LocalRateLimiter()


def _check(app: FastAPI, scope: str, limit: int, tenant_id: uuid.UUID) -> Decision:
    if limit <= 0:  # 0 turns the limit off
        return Decision(True)
    limiter: RateLimiter = app.state.rate_limiter
    return limiter.hit(f"{scope}:{tenant_id}", limit=limit)


def _problem(scope: str, limit: int, decision: Decision) -> Problem:
    return Problem(
        429,
        f"Over this tenant's limit of {limit} {scope} requests a minute; "
        f"retry after {decision.retry_after_seconds} s.",
        slug="rate-limited",
        headers={"Retry-After": str(decision.retry_after_seconds)},
    )


def enforce_api_limit(app: FastAPI, *, tenant_id: uuid.UUID) -> None:
    """Count one Contacts API request of the tenant; raises a 429 ProblemError when over."""
    settings: Settings = app.state.settings
    limit = settings.rate_limit_api_per_minute
    decision = _check(app, "api", limit, tenant_id)
    if not decision.allowed:
        log.info("ratelimit.refused", extra={"scope": "api", "tenant_id": str(tenant_id)})
        raise ProblemError(_problem("API", limit, decision))


RATE_LIMITED_RESPONSE: dict[str, Any] = {
    "description": "Over the tenant's rate limit; retry after `Retry-After` seconds",
    "headers": {
        "Retry-After": {
            "description": "Whole seconds until the tenant's window resets",
            "schema": {"type": "integer", "minimum": 1},
            "required": True,
        }
    },
}
