"""Running Alembic from code (the CLI, the demo, tests) on the project's own ``alembic.ini``.

Alembic's env runs an event loop of its own; from inside a running loop we hand it a
connection instead, so migrations run in the caller's loop and transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from alembic import command
from app.config import get_settings
from app.db import make_engine

ROOT = Path(__file__).resolve().parents[2]


def alembic_config() -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["configure_logging"] = False
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (a no-op when already there)."""
    await _run(url, lambda config: command.upgrade(config, revision))


async def downgrade(url: str, revision: str) -> None:
    await _run(url, lambda config: command.downgrade(config, revision))


async def check(url: str) -> None:
    """Raise ``alembic.util.CommandError`` when the models and the migrations differ."""
    await _run(url, command.check)


async def _run(url: str, operation: Callable[[Config], object]) -> None:
    # PgBouncer-safe whatever the settings (as alembic/env.py): no statement cache, unique
    # statement names, so a pooled server connection never meets a name it already holds.
    engine = make_engine(get_settings().model_copy(update={"db_pgbouncer": True}), url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_with_connection, operation)
    finally:
        await engine.dispose()


def _with_connection(connection: Connection, operation: Callable[[Config], object]) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    operation(config)


async def revisions(url: str) -> tuple[str | None, str | None]:
    """``(current, head)``: the database's revision (None if never migrated) and the code's."""
    found: dict[str, str | None] = {}

    def read(config: Config) -> None:
        context = MigrationContext.configure(config.attributes["connection"])
        found["current"] = context.get_current_revision()
        found["head"] = ScriptDirectory.from_config(config).get_current_head()

    await _run(url, read)
    return found["current"], found["head"]
