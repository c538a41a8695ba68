"""Redis clients with bounded waits: redis-py waits forever by default, on the connect and on
each reply, so a Redis that accepts connections and then goes silent would hang the caller."""

from __future__ import annotations

import redis

# A wake-up flag, a lock call or a reconcile tick either answers within this or counts as down.
REDIS_TIMEOUT_SECONDS = 2.0


def make_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
