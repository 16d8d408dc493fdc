"""Where ``pipeline demo`` keeps its data, so that the operator's database never sees a demo
task, and how ``--reset`` wipes it.

Without ``DATABASE_URL`` (or ``REDIS_URL``) the demo starts embedded servers of its own under
its own data directory: the data directory's name with ``-demo`` appended, beside it
(``<repo>/.data-demo`` by default). With ``DATABASE_URL`` it touches only its own channels
(``CHANNELS``) and refuses to start while other channels have unfinished tasks, which its
workers would take.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import embedded, servers
from app.config import Settings
from app.db import session_scope
from app.db.models import Channel, Task
from app.errors import PipelineError
from app.lifecycle import INITIAL, TERMINAL
from app.schemas import ChannelCreate
from app.services import channels

Sessions = async_sessionmaker[AsyncSession]

CHANNELS = (
    ChannelCreate(channel_id="UCdemo-science", channel_name="Science Shorts", max_concurrent=2),
    ChannelCreate(channel_id="UCdemo-history", channel_name="History Hour"),
    ChannelCreate(channel_id="UCdemo-nature", channel_name="Nature Notes"),
)
NAMES = frozenset(c.channel_id for c in CHANNELS)
SUFFIX = "-demo"


class DemoRefused(PipelineError):
    """The demo cannot run here."""


@dataclass(frozen=True)
class Place:
    """The demo's data directory, and which of its servers are the configured ones."""

    data_dir: Path
    #: ``DATABASE_URL`` is set: a database the demo shares with others.
    shared_database: bool
    #: ``REDIS_URL`` is set.
    shared_redis: bool

    @classmethod
    def of(cls, settings: Settings) -> Place:
        base = embedded.default_data_dir().expanduser().resolve()
        return cls(base.with_name(base.name + SUFFIX), settings.database_url is not None,
                   settings.redis_url is not None)

    @property
    def embedded(self) -> bool:
        """Whether a server of the demo's runs under its data directory."""
        return not (self.shared_database and self.shared_redis)

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "workers"

    def command(self, args: str) -> str:
        """``pipeline ARGS`` as typed in another terminal to reach the demo's servers."""
        prefix = f"PIPELINE_DATA_DIR={shlex.quote(str(self.data_dir))} " if self.embedded else ""
        return f"{prefix}pipeline {args}"

    def describe(self) -> list[tuple[str, bool]]:
        """Where the data lives and how to watch it from another terminal: lines, each with
        whether it may be wrapped (a command may not)."""
        where = (f"the demo channels ({', '.join(sorted(NAMES))}) in the database at "
                 "DATABASE_URL; --reset deletes them and their tasks, nothing else"
                 if self.shared_database else
                 f"{self.data_dir} (servers of its own; --reset wipes it)")
        same = " (with the same DATABASE_URL)" if self.shared_database else ""
        return [(f"demo data: {where}", True), (f"watch it from another terminal{same}:", True),
                (f"  $ {self.command('stats --watch')}", False)]

    def approvals(self, gate: str) -> list[tuple[str, str | None]]:
        """The commands that pass ``gate``, each with the channel it names: one for the whole
        database when it is the demo's own, else one per demo channel."""
        command = self.command(f"approve --gate {gate}")
        if not self.shared_database:
            return [(command, None)]
        return [(f"{command} --channel {c.channel_id}", c.channel_id) for c in CHANNELS]

def wipe(place: Place) -> None:
    """``--reset`` before any server starts: stop the demo's embedded servers and delete its
    data directory. Refused while another process uses them (another demo, or a command run
    with the demo's ``PIPELINE_DATA_DIR``)."""
    if not place.embedded or not place.data_dir.is_dir():
        return
    embedded.stop_redis(place.data_dir)      # stop them unless another process uses them
    embedded.stop_postgres(place.data_dir)
    pidfiles = (place.data_dir / "pg" / "postmaster.pid", place.data_dir / "redis" / "redis.pid")
    busy = [str(pid) for pid in map(_running, pidfiles) if pid is not None]
    if busy:
        raise DemoRefused(f"the demo's servers under {place.data_dir} are in use (pid "
                          f"{', '.join(busy)}): stop what uses them, then --reset")
    shutil.rmtree(place.data_dir)


def _running(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` (its first line) if that process is alive, else None."""
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        return pid if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else None
    except (OSError, ValueError, psutil.Error):
        return None


async def open_servers(place: Place, settings: Settings) -> tuple[str, str]:
    """The database and Redis URLs: the configured ones, or the demo's embedded servers
    (started, or reused, under its data directory)."""
    if settings.database_url:
        url = settings.database_url
    else:
        server = embedded.start_postgres(place.data_dir)
        url = await embedded.ensure_database(server, servers.EMBEDDED_DATABASE)
    return url, settings.redis_url or embedded.start_redis(place.data_dir)


async def delete_rows(sessions: Sessions) -> int:
    """``--reset`` on a shared database: delete the demo channels' tasks (their events and
    Notion links go with them) and the channels; return how many tasks went."""
    async with session_scope(sessions) as session:
        ours = sa.select(Channel.id).where(Channel.channel_id.in_(NAMES))
        gone = len((await session.execute(
            sa.delete(Task).where(Task.channel_id.in_(ours)).returning(Task.id))).all())
        for name in sorted(NAMES & set(await session.scalars(
                sa.select(Channel.channel_id).where(Channel.channel_id.in_(NAMES))))):
            await channels.remove_channel(session, name)
    return gone


async def refuse_other_work(sessions: Sessions) -> None:
    """On a shared database the demo's workers would take any channel's work (and pass its
    gates): refuse while another channel has a task that is neither a draft nor finished."""
    async with session_scope(sessions) as session:
        others = await session.scalar(
            sa.select(sa.func.count()).select_from(Task)
            .join(Channel, Channel.id == Task.channel_id)
            .where(Channel.channel_id.not_in(NAMES),
                   Task.status.not_in(TERMINAL | {INITIAL})))
    if others:
        raise DemoRefused(f"the database at DATABASE_URL holds {others} unfinished task(s) of "
                          "other channels, which the demo's workers would take: unset "
                          "DATABASE_URL to run the demo on servers of its own")
