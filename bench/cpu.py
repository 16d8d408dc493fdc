"""CPU time of processes on this machine, read from ``/proc`` (user + system time).

What a unit of work costs the client processes (a worker, a consumer) and the database server,
so that a run shows which side bounds it. The server's figure is server-wide: the postmaster,
every live child (backends, WAL writer, checkpointer, autovacuum) and the children it has
reaped (a backend's time moves into its parent's ``cutime`` as it exits). Linux only; None
where ``/proc`` is missing or the server runs on another machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # ships no type information

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Indexes into ``/proc/PID/stat`` after the command name: ppid, utime, stime, cutime, cstime.
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()     # the name may hold spaces and parentheses


def process_s(pid: int) -> float | None:
    """CPU seconds a live process has used; None when it is gone."""
    fields = _stat(pid)
    return None if fields is None else (int(fields[_UTIME]) + int(fields[_STIME])) / _TICKS


def postmaster_of(backend: int) -> int | None:
    """The postmaster of the backend ``backend`` (``pg_backend_pid()``) when it runs here;
    None for a server elsewhere (a local process of that pid is then not a PostgreSQL one)."""
    try:
        argv = Path(f"/proc/{backend}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None
    if not (argv.startswith(b"postgres:") or os.path.basename(argv) == b"postgres"):
        return None
    fields = _stat(backend)
    return None if fields is None else int(fields[_PPID])


async def postmaster(conn: asyncpg.Connection) -> int | None:
    """The postmaster of the server ``conn`` talks to, when that server runs here."""
    return postmaster_of(int(await conn.fetchval("SELECT pg_backend_pid()")))


def server_s(postmaster: int) -> float | None:
    """CPU seconds the server has used so far: the postmaster's own and its ended children's,
    then each live child's (read in that order, a child ending in between is missed rather
    than counted twice). None when the postmaster is gone."""
    own = _stat(postmaster)
    if own is None:
        return None
    ticks = sum(int(own[i]) for i in (_UTIME, _STIME, _CUTIME, _CSTIME))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and int(fields[_PPID]) == postmaster:
            ticks += int(fields[_UTIME]) + int(fields[_STIME])
    return ticks / _TICKS
