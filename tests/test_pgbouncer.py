"""Every connection path through a real PgBouncer in transaction mode (``DB_PGBOUNCER=true``,
``DB_STATEMENT_CACHE_SIZE=0``): the startup parameters, the service layer, the hot path, the
``pipeline`` CLI, Alembic and real worker processes.

PgBouncer (``tests.pgbouncer``) keeps fewer server connections than these tests open clients,
so server connections are shared between clients one transaction at a time: a statement that
outlived its transaction, or a name that collides on a shared backend, would fail here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # ships no type information
import pytest
import sqlalchemy as sa

from app import lifecycle
from app.config import Settings
from app.db import connect_kwargs, make_engine, make_pool, make_sessionmaker, migrate
from app.db.engine import startup_parameters
from app.db.models import Task, TaskEvent
from app.errors import InvalidTransition
from app.execution import hotpath, wakeups
from app.lifecycle import STAGE_BY_ACTIVE, TaskStatus
from app.schemas import TaskCreate
from app.services import tasks, transitions
from tests import dbtools, workerprocs
from tests import pgbouncer as bouncers
from tests.factories import make_channel, page_id
from tests.pgbouncer import PgBouncer
from tests.workerprocs import Sessions, Workers, count, seed, wait_published

db, queue, workers = workerprocs.db, workerprocs.queue, workerprocs.workers   # fixtures
pgbouncer = bouncers.pgbouncer                                                  # fixture

#: The environment of a process behind PgBouncer in transaction mode.
BOUNCED = {"DB_PGBOUNCER": "true", "DB_STATEMENT_CACHE_SIZE": "0"}
PIPELINE = Path(sys.executable).with_name("pipeline")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bounced(settings: Settings) -> Settings:
    return settings.model_copy(update={"db_pgbouncer": True, "db_statement_cache_size": 0})


@pytest.fixture
async def bounced_sessions(db: tuple[str, Sessions], pgbouncer: PgBouncer,
                           bounced: Settings) -> AsyncIterator[Sessions]:
    """Sessions of the test's database through PgBouncer, as the service layer opens them."""
    bounced_engine = make_engine(bounced, pgbouncer.url(db[0]))
    yield make_sessionmaker(bounced_engine)
    await bounced_engine.dispose()


def run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=os.environ | env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


# --- the startup parameters: the original failure -----------------------------------------


async def test_the_fixture_refuses_jit_and_pools_by_transaction(
    pgbouncer: PgBouncer, pg_server_url: str,
) -> None:
    """The set-up reproduces production: an unknown startup parameter is refused, and two
    clients take turns on one server connection."""
    through = connect_kwargs(pgbouncer.url(pg_server_url))
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await asyncpg.connect(**through, server_settings={"jit": "off"})
    first = await asyncpg.connect(**through)
    second = await asyncpg.connect(**through)
    try:
        # Both clients stay connected; in session mode each would hold a backend of its own.
        assert await first.fetchval("SELECT pg_backend_pid()") == \
            await second.fetchval("SELECT pg_backend_pid()")
    finally:
        await first.close()
        await second.close()


async def test_startup_parameters_of_pgbouncer_mode_are_accepted(
    pgbouncer: PgBouncer, pg_server_url: str, settings: Settings, bounced: Settings,
) -> None:
    """What the code sends in PgBouncer mode gets through it (and still names the
    connections); directly to PostgreSQL the JIT stays off."""
    parameters = startup_parameters(bounced)
    conn = await asyncpg.connect(**connect_kwargs(pgbouncer.url(pg_server_url)),
                                 server_settings=parameters)
    try:
        assert await conn.fetchval("SELECT current_setting('application_name')") == "pipeline"
    finally:
        await conn.close()
    direct = make_pool(settings, pg_server_url, max_size=1)
    try:
        async with direct.acquire() as conn:
            assert await conn.fetchval("SHOW jit") == "off"
    finally:
        await direct.close()


# --- each connection path ------------------------------------------------------------------


async def test_service_layer_through_pgbouncer(
    db: tuple[str, Sessions], bounced_sessions: Sessions,
) -> None:
    """Enqueue and transitions, many sessions at once (more than PgBouncer's server
    connections), each a connection of its own through ``make_engine``."""
    _, direct = db
    async with bounced_sessions() as session, session.begin():
        channel = (await make_channel(session)).channel_id
    pages = [page_id() for _ in range(24)]

    async def walk(page: str) -> None:
        data = TaskCreate(notion_page_id=page, channel=channel, title=f"Video {page[:6]}")
        async with bounced_sessions() as session, session.begin():
            created = await tasks.enqueue(session, data, actor="test")
        async with bounced_sessions() as session, session.begin():
            await transitions.transition(session, created.task_id, TaskStatus.draft,
                                         actor="test", expected=TaskStatus.queued)
        async with bounced_sessions() as session, session.begin():
            again = await tasks.enqueue(session, data, actor="test")      # draft → queued
        assert again.queued_now
        with pytest.raises(InvalidTransition):
            async with bounced_sessions() as session, session.begin():
                await transitions.transition(session, created.task_id, TaskStatus.published,
                                             actor="test")

    await asyncio.gather(*(walk(page) for page in pages))
    assert await count(direct, TaskStatus.queued) == len(pages)
    async with direct() as session:
        moves = (await session.execute(
            sa.select(TaskEvent.from_status, TaskEvent.to_status))).all()
    assert Counter(moves) == {(None, TaskStatus.queued): len(pages),
                              (TaskStatus.queued, TaskStatus.draft): len(pages),
                              (TaskStatus.draft, TaskStatus.queued): len(pages)}


async def test_hot_path_claims_through_pgbouncer(
    db: tuple[str, Sessions], pgbouncer: PgBouncer, bounced: Settings,
) -> None:
    """Twelve claimers on ``make_pool`` connections through PgBouncer (four server
    connections) claim every task exactly once."""
    url, direct = db
    seeded = await seed(direct, [None, None, None], per_channel=10)
    pool = make_pool(bounced, pgbouncer.url(url), max_size=12)

    async def claimer(n: int) -> list[uuid.UUID]:
        mine: list[uuid.UUID] = []
        while True:
            async with pool.acquire() as conn:
                claim = await hotpath.claim(conn, worker_id=f"claimer-{n}", lease_s=30,
                                            now=transitions.utcnow())
            if claim is None:
                return mine
            mine.append(claim.task_id)

    try:
        claimed = [task for batch in await asyncio.gather(*(claimer(n) for n in range(12)))
                   for task in batch]
    finally:
        await pool.close()
    assert sorted(claimed) == sorted(seeded)                  # each one once, none left out
    assert await count(direct, TaskStatus.queued) == 0
    assert await count(direct, *lifecycle.ACTIVE) == len(seeded)


async def test_cli_enqueue_and_stats_through_pgbouncer(
    db: tuple[str, Sessions], pgbouncer: PgBouncer, redis_url: str, queue: str,
    tmp_path: Path,
) -> None:
    url, direct = db
    env = BOUNCED | {"DATABASE_URL": pgbouncer.url(url), "REDIS_URL": redis_url,
                     "QUEUE_NAME": queue}
    channel = f"UC{uuid.uuid4().hex[:12]}"
    added = run(str(PIPELINE), "channel", "add", "--channel-id", channel, "--name", "Bounced",
                env=env)
    assert added.returncode == 0, added.stderr
    rows = [{"notion_page_id": page_id(), "title": f"Video {n}", "channel": channel}
            for n in range(5)]
    source = tmp_path / "tasks.json"
    source.write_text(json.dumps(rows))
    enqueued = run(str(PIPELINE), "enqueue", str(source), env=env)
    assert enqueued.returncode == 0, enqueued.stderr
    stats = run(str(PIPELINE), "stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["by_status"].get("queued") == 5, stats.stdout
    assert await count(direct, TaskStatus.queued) == 5


async def test_alembic_upgrade_through_pgbouncer(
    pg_server_url: str, pgbouncer: PgBouncer,
) -> None:
    """The release step (``alembic upgrade head``) on an empty database, through PgBouncer."""
    async with dbtools.scratch_database(pg_server_url, migrate=False) as url:
        done = run(sys.executable, "-m", "alembic", "upgrade", "head",
                   env=BOUNCED | {"DATABASE_URL": pgbouncer.url(url)})
        assert done.returncode == 0, done.stderr
        current, head = await migrate.revisions(url)
        assert current == head


# --- real worker processes ---------------------------------------------------------------


async def test_two_workers_through_pgbouncer_publish_all_without_double_starts(
    db: tuple[str, Sessions], pgbouncer: PgBouncer, workers: Workers, redis_url: str,
    queue: str,
) -> None:
    url, direct = db
    total = len(await seed(direct, [None, 2, None, 1, None, None], per_channel=8))
    for _ in range(2):
        workers.start(DATABASE_URL=pgbouncer.url(url), **BOUNCED)
    for process in workers.processes:
        await process.started()
    await wakeups.wake_url(redis_url, 16, queue_name=queue)
    await wait_published(direct, total, timeout_s=45)

    async with direct() as session:
        entered = Counter((e.task_id, e.to_status) for e in await session.execute(
            sa.select(TaskEvent.task_id, TaskEvent.to_status)
            .where(TaskEvent.to_status.in_(STAGE_BY_ACTIVE))))
        published = await session.scalar(sa.select(sa.func.count()).select_from(Task)
                                         .where(Task.status == TaskStatus.published))
    assert published == total
    assert set(entered.values()) == {1}, "a stage was started twice"
    assert len(entered) == total * len(lifecycle.STAGES)
    for process in workers.processes:
        assert not process.lines("database unavailable"), process.text()[-3000:]
    database = url.rsplit("/", 1)[-1].split("?")[0]
    assert f"login attempt: db={database} " in pgbouncer.log()     # they came through it
