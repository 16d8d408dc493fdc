"""Test fixtures: real PostgreSQL and Redis (embedded throwaway servers, or the ones named by
``DATABASE_URL`` / ``REDIS_URL``), a fresh migrated database per test session, and SQLite as the
second dialect.

Each test writes its own rows (unique page ids, its own channels), so tests share one migrated
database; tests that need an empty schema create their own database.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import embedded
from app.config import Settings
from app.db import make_engine, make_pool, make_sessionmaker, migrate
from app.db.hotpool import HotPool
from tests import dbtools
from tests.notion_fake import FakeNotion

# A suite started in the background by a non-interactive shell (`make test &`, a CI step run
# with `nohup`) inherits SIGINT ignored, and every command it starts would too: Python leaves
# an ignored SIGINT ignored. The tests that interrupt commands with SIGINT need it delivered;
# a handler here is reset to the default in each process the suite starts.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    """A short throwaway directory for the embedded servers (unix socket paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="pqt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url(data_dir: Path) -> Iterator[str]:
    """A URL of a PostgreSQL server the tests may create databases on."""
    if url := os.environ.get("DATABASE_URL"):
        if make_url(url).get_backend_name() != "postgresql":
            pytest.exit("DATABASE_URL must point at PostgreSQL for the test suite", 2)
        yield url
        return
    url = embedded.start_postgres(data_dir)
    yield url
    embedded.stop_postgres(data_dir)


@pytest.fixture(scope="session")
def redis_url(data_dir: Path) -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    url = embedded.start_redis(data_dir)
    yield url
    embedded.stop_redis(data_dir)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(_env_file=None, database_url=None, redis_url=None)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def pg_url(pg_server_url: str) -> AsyncIterator[str]:
    """A freshly migrated database on the test server, dropped at the end of the session."""
    async with dbtools.scratch_database(pg_server_url, migrate=True) as url:
        yield url


@pytest.fixture(scope="session")
async def sqlite_url() -> AsyncIterator[str]:
    path = Path(tempfile.mkdtemp(prefix="pqs-", dir="/tmp"))
    url = f"sqlite+aiosqlite:///{path / 'pipeline.sqlite'}"
    await migrate.upgrade(url)
    yield url
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def pg_engine(pg_url: str, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings, pg_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def pg_pool(pg_url: str, settings: Settings) -> AsyncIterator[HotPool]:
    """The workers' hot-path pool (``app.execution.hotpath``) on the test database."""
    pool = make_pool(settings, pg_url, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def sqlite_engine(sqlite_url: str, settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings, sqlite_url)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> AsyncEngine:
    """Both dialects: for code that claims to support SQLite."""
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    result: AsyncEngine = request.getfixturevalue(name)
    return result


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
def pg_sessions(pg_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(pg_engine)


@pytest.fixture
def notion() -> Iterator[FakeNotion]:
    """A fake Notion API on a local port; a test fails if the fake itself raised."""
    with FakeNotion() as fake:
        yield fake
        assert fake.server_errors == []


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names a test creates."""
    return uuid.uuid4().hex[:10]
