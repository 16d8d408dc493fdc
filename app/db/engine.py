"""Engine and session factories; the only place that turns settings into connections.

Entry points (CLI commands, worker start-up, fixtures) build one engine each and open sessions
with ``session_scope``; services take the session and never commit.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db.hotpool import HotPool
from app.errors import NeedsPostgreSQL

_LIBPQ_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
# SQLSTATEs of a server going away: admin_shutdown, crash_shutdown, cannot_connect_now
# (restart, failover); class 08 (connection_exception) is matched by prefix.
_SHUTDOWN_STATES = {"57P01", "57P02", "57P03"}
# What asyncpg says of a connection the server dropped, used again.
_DROPPED = "connection is closed"
# Every connection of ours, through either pool, is named in pg_stat_activity.
APPLICATION_NAME = "pipeline"


def translate_url(dsn: str) -> tuple[URL, dict[str, Any]]:
    """Accept libpq-style ``sslmode=…`` (which asyncpg rejects) and plain ``postgresql://``.

    Returns the URL for SQLAlchemy and the ``connect_args`` carrying the SSL setting.
    """
    url = make_url(dsn)
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+asyncpg")
    if not url.drivername.startswith("postgresql"):
        return url, {}
    query = dict(url.query)
    mode = query.pop("sslmode", None)
    root_cert = query.pop("sslrootcert", None)
    args: dict[str, Any] = {}
    if isinstance(mode, str):
        if mode not in _LIBPQ_SSL_MODES:
            raise ValueError(f"DATABASE_URL: unknown sslmode {mode!r}")
        if mode in ("verify-ca", "verify-full"):
            context = ssl.create_default_context(cafile=root_cert if isinstance(root_cert, str)
                                                 else None)
            context.check_hostname = mode == "verify-full"
            args["ssl"] = context
        else:
            args["ssl"] = mode
    return url.set(query=query), args


def require_postgresql(url: str) -> str:
    """Workers claim with row locks and a PL/pgSQL function: SQLite cannot serve them."""
    if not translate_url(url)[0].drivername.startswith("postgresql"):
        raise NeedsPostgreSQL(f"workers need PostgreSQL; DATABASE_URL is "
                              f"{make_url(url).get_backend_name()} (SQLite serves the admin "
                              "commands and the sync only)")
    return url


def startup_parameters(settings: Settings) -> dict[str, str]:
    """The server settings every PostgreSQL connection of ours sends when it opens.

    Directly to PostgreSQL: ``application_name``, and ``jit = off`` (the JIT costs more than
    it saves on short statements, and asyncpg's type introspection on every new connection is
    slow with it). Behind PgBouncer (``db_pgbouncer``): ``application_name`` only, the one
    among ours that PgBouncer tracks; it refuses any other startup parameter (``unsupported
    startup parameter: jit``) unless its ``ignore_startup_parameters`` lists it. Operators
    there set the JIT on the role or the database instead (``ALTER ROLE … SET jit = off``).
    """
    if settings.db_pgbouncer:
        return {"application_name": APPLICATION_NAME}
    return {"application_name": APPLICATION_NAME, "jit": "off"}


def make_engine(settings: Settings, url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine with the configured pool, SSL translation and PgBouncer-safe mode."""
    sa_url, connect_args = translate_url(url)
    if sa_url.get_backend_name() == "sqlite":
        engine = create_async_engine(sa_url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args["server_settings"] = startup_parameters(settings)
    kwargs: dict[str, Any] = {}
    if settings.db_pgbouncer or settings.db_statement_cache_size == 0:
        # Transaction pooling: no statement may outlive its transaction on one backend.
        sa_url = sa_url.update_query_dict({"prepared_statement_cache_size": "0"})
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = lambda: f"__asyncpg_{uuid.uuid4()}__"
    else:
        connect_args["statement_cache_size"] = settings.db_statement_cache_size
    if settings.db_pgbouncer:
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                      pool_timeout=settings.db_pool_timeout_s)
    return create_async_engine(
        sa_url, echo=echo, pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=settings.db_pool_recycle_s,
        connect_args=connect_args, **kwargs)


def connect_kwargs(url: str) -> dict[str, Any]:
    """asyncpg keyword arguments for a ``DATABASE_URL`` (TCP, unix socket or ``sslmode``)."""
    sa_url, args = translate_url(url)
    kwargs: dict[str, Any] = sa_url.translate_connect_args(username="user")
    host = sa_url.query.get("host")
    if host:
        kwargs["host"] = host
    port = sa_url.query.get("port")
    if port:
        kwargs["port"] = int(port if isinstance(port, str) else port[0])
    if "ssl" in args:
        kwargs["ssl"] = args["ssl"]
    return kwargs


def make_pool(settings: Settings, url: str, *, max_size: int) -> HotPool:
    """The connections of a worker's hot path (``app.execution.hotpath``): single autocommitted
    statements, opened on demand; honours the statement-cache, recycle and PgBouncer
    settings."""
    kwargs = connect_kwargs(require_postgresql(url))
    cache = 0 if settings.db_pgbouncer else settings.db_statement_cache_size
    server_settings = startup_parameters(settings)

    async def connect() -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            **kwargs, statement_cache_size=cache, server_settings=dict(server_settings))
        return conn

    return HotPool(connect, max_size, recycle_s=settings.db_pool_recycle_s)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite enforces foreign keys (RESTRICT, CASCADE) only when asked, per connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database could not be reached or dropped the connection
    (restart, failover, network): the same statement may well succeed a moment later.

    asyncpg raises a bare ``OSError`` when it cannot connect at all (refused, socket gone,
    timed out); a connection lost mid-statement arrives as a ``DBAPIError`` that SQLAlchemy
    marks ``connection_invalidated`` (raw asyncpg: class 08, or a dropped connection).
    Anything else (constraint, syntax, guard) is not retried.
    """
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, asyncpg.PostgresError):        # raw asyncpg (the hot path)
        state = str(getattr(exc, "sqlstate", None) or "")
        return state.startswith("08") or state in _SHUTDOWN_STATES
    if isinstance(exc, asyncpg.InterfaceError):       # used after the server dropped it
        return _DROPPED in str(exc)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True                  # the protocol's state when the drop lands mid-statement
    if isinstance(exc, DBAPIError):
        state = str(getattr(exc.orig, "sqlstate", None) or "")
        return exc.connection_invalidated or state.startswith("08") or state in _SHUTDOWN_STATES
    return False


def describe(exc: BaseException) -> str:
    """One line for a log: the error's type and the first line of its message (SQLAlchemy
    appends the statement, its parameters and a link)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def session_scope(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on any error (nothing half-written)."""
    async with sessions() as session, session.begin():
        yield session
