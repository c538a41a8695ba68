"""Engines, sessions and the unit of work: the one place a transaction commits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

# Every PostgreSQL call has a bound, so that a stalled server (accepting connections, then
# silent) or a lost network holds no request or drain for long: a connect gives up after
# CONNECT_TIMEOUT, the server cancels a statement after STATEMENT_TIMEOUT and ends a session
# left idle inside a transaction after IDLE_IN_TRANSACTION_TIMEOUT, and the kernel gives up on
# a peer that stops acknowledging (tcp_user_timeout, keepalives). A wait for a pooled
# connection is bounded too. Callers on a request path (webhooks, /healthz, /metrics) also wait
# on their own deadline, since a server that acknowledges but never answers escapes all these.
CONNECT_TIMEOUT_SECONDS = 3
STATEMENT_TIMEOUT_MS = 15_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000
TCP_USER_TIMEOUT_MS = 5_000
POOL_TIMEOUT_SECONDS = 3.0


def _postgres_connect_args() -> dict[str, Any]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": (
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
            f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        ),
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
    }


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for its backend: WAL and a busy timeout on SQLite; pre-ping and the
    timeouts above on servers."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            # SQLite's own lower() folds ASCII only, so ILIKE (lower() on both sides) would find
            # "Élodie" for "élodie" on PostgreSQL but not here: Python's str.lower folds all of
            # Unicode, as PostgreSQL does.
            dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn: Any) -> None:
            # Writers queue on SQLite's one lock at BEGIN instead of failing at their first write.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # pysqlite's own transaction handling must be off for the BEGIN above to be ours.
        @event.listens_for(engine, "connect", insert=True)
        def _sqlite_autocommit(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_timeout", POOL_TIMEOUT_SECONDS)
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {**_postgres_connect_args(), **kwargs.get("connect_args", {})}
    return create_engine(url, **kwargs)


class Database:
    """An engine and its session factory; `unit_of_work()` owns the one commit."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A session whose work commits when the block ends and rolls back if it raises."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
