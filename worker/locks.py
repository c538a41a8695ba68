"""The per-tenant lock that serializes a tenant's drains: Redis when configured, else in-process.

The Redis lock is token-owned with a bounded lease, so a worker that dies frees it by itself; a
holder that stalls past its lease loses it, which is why the drain also relies on row locks
(FOR UPDATE SKIP LOCKED) and the unique indexes rather than on the lock alone.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Protocol

import redis
from redis.exceptions import LockError, LockNotOwnedError

from intake.settings import Settings
from worker.redis_clients import make_redis


class LockWaitTimeoutError(Exception):
    """Another drain held the tenant's lock for longer than we may wait: retry the task later."""


class LockLostError(Exception):
    """The lease ran out and another drain may hold the lock now: stop draining."""


class Lease(Protocol):
    def extend(self) -> None:
        """Renew the lease to its full length; raise LockLostError if it is no longer ours."""
        ...


class TenantLocks(Protocol):
    def hold(self, tenant_id: uuid.UUID) -> AbstractContextManager[Lease]:
        """Hold the tenant's lock for the block, or raise LockWaitTimeoutError."""
        ...


class _RedisLease:
    def __init__(self, lock: redis.lock.Lock) -> None:
        self._lock = lock

    def extend(self) -> None:
        try:
            self._lock.reacquire()
        except LockError as exc:
            raise LockLostError(str(exc)) from exc


class RedisTenantLocks:
    def __init__(self, client: redis.Redis, *, lease_seconds: float, wait_seconds: float) -> None:
        self._client = client
        self._lease = lease_seconds
        self._wait = wait_seconds

    @staticmethod
    def key(tenant_id: uuid.UUID) -> str:
        return f"intake:lock:tenant:{tenant_id}"

    @contextmanager
    def hold(self, tenant_id: uuid.UUID) -> Iterator[Lease]:
        lock = self._client.lock(
            self.key(tenant_id),
            timeout=self._lease,
            blocking_timeout=self._wait,
            sleep=0.02,
            thread_local=False,
        )
        if not lock.acquire():
            raise LockWaitTimeoutError(f"tenant {tenant_id} stayed locked for {self._wait}s")
        try:
            yield _RedisLease(lock)
        finally:
            # The lease may have run out under us; our rows are safe, so are the next holder's.
            with suppress(LockNotOwnedError):
                lock.release()


class _LocalLease:
    def extend(self) -> None:
        """An in-process lock has no lease to renew."""


class LocalTenantLocks:
    """For the embedded setup: one process, no Redis. SQLite's single writer does the rest."""

    def __init__(self, *, wait_seconds: float) -> None:
        self._wait = wait_seconds
        self._guard = threading.Lock()
        self._locks: dict[uuid.UUID, threading.Lock] = {}

    @contextmanager
    def hold(self, tenant_id: uuid.UUID) -> Iterator[Lease]:
        with self._guard:
            lock = self._locks.setdefault(tenant_id, threading.Lock())
        if not lock.acquire(timeout=self._wait):
            raise LockWaitTimeoutError(f"tenant {tenant_id} stayed locked for {self._wait}s")
        try:
            yield _LocalLease()
        finally:
            lock.release()


def make_locks(settings: Settings, client: redis.Redis | None = None) -> TenantLocks:
    """Redis locks when `settings.redis_url` is set, else the in-process fallback."""
    if not settings.redis_url:
        return LocalTenantLocks(wait_seconds=settings.lock_wait_seconds)
    return RedisTenantLocks(
        client or make_redis(settings.redis_url),
        lease_seconds=settings.lock_lease_seconds,
        wait_seconds=settings.lock_wait_seconds,
    )
