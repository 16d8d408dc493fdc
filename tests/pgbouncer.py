"""A real PgBouncer in transaction mode in front of the test PostgreSQL server.

The ``pgbouncer`` fixture starts the ``pgbouncer`` binary (Debian package ``pgbouncer``) with a
configuration of its own in a temporary directory: ``pool_mode = transaction``, every database
name passed through to the test server (embedded unix socket or ``DATABASE_URL``), trust auth
for the test server's user, and PgBouncer's default ``ignore_startup_parameters`` (none), so a
client that sends a startup parameter PgBouncer does not know is refused as in production.
It listens on a free port of 127.0.0.1.

PgBouncer refuses to run as root: as root the process runs as the owner of the server's socket
directory (the embedded server's user), or as ``nobody`` for a TCP server, and the temporary
directory is handed to that user. The process is not daemonised; the fixture waits until a
connection through it succeeds and stops it (SIGINT, then SIGKILL) at teardown.

Import the fixture into a test module: ``pgbouncer = tests.pgbouncer.pgbouncer``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest
from sqlalchemy.engine import make_url

from app.db import connect_kwargs

#: Server connections per (database, user): fewer than the clients of a worker test, so server
#: connections really are shared between clients, one transaction at a time.
POOL_SIZE = 4
_READY_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
_START_ATTEMPTS = 3      # a free port found by binding may be taken before PgBouncer binds it


@dataclass
class PgBouncer:
    """A running PgBouncer: where it listens and what it logged."""

    host: str
    port: int
    directory: Path
    user: str
    process: subprocess.Popen[bytes]

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on the test server) reached through PgBouncer."""
        url = make_url(database_url)
        query = {k: v for k, v in url.query.items() if k not in ("host", "port")}
        return url.set(host=self.host, port=self.port, query=query).render_as_string(
            hide_password=False)

    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _quote(value: str) -> str:
    """A value for the auth file: double quotes, a literal one doubled."""
    return '"' + value.replace('"', '""') + '"'


def _run_as(server_host: str) -> pwd.struct_passwd | None:
    """The unprivileged user to run PgBouncer as when we are root (None: as ourselves).

    A unix-socket server is reached through its socket directory, which only its owner may
    enter (the embedded server's); a TCP server is reachable by anyone.
    """
    if os.geteuid() != 0:
        return None
    if server_host.startswith("/"):
        owner = os.stat(server_host).st_uid
        if owner != 0:
            return pwd.getpwuid(owner)
    return pwd.getpwnam("nobody")


def write_config(directory: Path, server_url: str, port: int) -> Path:
    """PgBouncer's ini and auth file for ``server_url``'s server; returns the ini's path."""
    server = connect_kwargs(server_url)
    host = str(server.get("host") or "127.0.0.1")
    user = str(server.get("user") or "postgres")
    password = str(server.get("password") or "")
    (directory / "userlist.txt").write_text(f"{_quote(user)} {_quote(password)}\n")
    ini = directory / "pgbouncer.ini"
    ini.write_text(f"""\
[databases]
* = host={host} port={server.get("port") or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {directory}
auth_type = trust
auth_file = {directory / "userlist.txt"}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 500
; a failed server login is retried after 1 s (not 15), a client queued for a server
; connection fails after 60 s (not 120): a test fails well before its own timeout
server_login_retry = 1
query_wait_timeout = 60
""")
    return ini


def _hand_over(directory: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for path in (directory, *directory.iterdir()):
        os.chown(path, user.pw_uid, user.pw_gid)


def _spawn(ini: Path, user: pwd.struct_passwd | None, log: IO[bytes]) -> subprocess.Popen[bytes]:
    as_user: dict[str, Any] = {}
    if user is not None:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    return subprocess.Popen([pgbouncer_binary(), str(ini)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=ini.parent, **as_user)


async def _answers(port: int, server_url: str) -> bool:
    """One connection through PgBouncer to the server's own database, and a query."""
    target = connect_kwargs(server_url)
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=target.get("user"),
                                     password=target.get("password"),
                                     database=target.get("database"), timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1", timeout=2) == 1)
    finally:
        await conn.close()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (PgBouncer's safe shutdown), then SIGKILL if it outlives the timeout."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _start(directory: Path, server_url: str) -> PgBouncer:
    host = str(connect_kwargs(server_url).get("host") or "127.0.0.1")
    user = _run_as(host)
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        ini = write_config(directory, server_url, port)
        _hand_over(directory, user)
        with (directory / "pgbouncer.log").open("wb") as log:
            process = _spawn(ini, user, log)
        bouncer = PgBouncer("127.0.0.1", port, directory, user.pw_name if user else
                            pwd.getpwuid(os.geteuid()).pw_name, process)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT_S
        while process.poll() is None and loop.time() < deadline:
            if await _answers(port, server_url):
                return bouncer
            await asyncio.sleep(0.05)
        stop(process)
        if "Address already in use" not in bouncer.log():
            break
    pytest.fail(f"pgbouncer did not accept connections on 127.0.0.1:{port}:\n"
                f"{bouncer.log()[-3000:]}")


@pytest.fixture(scope="module")
async def pgbouncer(pg_server_url: str) -> AsyncIterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the test server; any database name on that
    server is reachable through it (``PgBouncer.url``)."""
    directory = Path(tempfile.mkdtemp(prefix="pqb-", dir="/tmp"))
    try:
        bouncer = await _start(directory, pg_server_url)
        try:
            yield bouncer
        finally:
            stop(bouncer.process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
