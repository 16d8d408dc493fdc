"""Where the database and Redis are: the configured URLs, or the embedded default servers.

Without ``DATABASE_URL`` a real PostgreSQL is started under the data directory (``.data/``) and
the ``pipeline`` database created on it; without ``REDIS_URL`` a real redis-server. A process
that finds them up joins them (no start, no wait); either way it is registered as a user until
it exits, and the last user to exit stops them. Nothing lingers: an admin command run while no
worker is up starts PostgreSQL for its own run and stops it as it exits.
"""

from __future__ import annotations

from app import embedded
from app.config import Settings
from app.db import migrate

EMBEDDED_DATABASE = "pipeline"


async def database_url(settings: Settings, *, migrated: bool = False) -> str:
    """``DATABASE_URL``, or the embedded server's ``pipeline`` database (started if needed).

    With ``migrated`` the embedded database is also brought to the latest migration, one
    process at a time (two workers starting on a fresh data directory do not race); a
    configured database is the release step's (``alembic upgrade head``).
    """
    if settings.database_url:
        return settings.database_url
    data_dir = embedded.default_data_dir()
    server = embedded.start_postgres(data_dir)
    url = await embedded.ensure_database(server, EMBEDDED_DATABASE)
    if migrated:
        # Blocks the event loop while another process migrates: only ever at a start-up.
        with embedded.exclusive(data_dir, "migrate"):
            await migrate.upgrade(url)
    return url


def redis_url(settings: Settings) -> str:
    """``REDIS_URL``, or the embedded redis-server's unix socket (started if needed)."""
    if settings.redis_url:
        return settings.redis_url
    return embedded.start_redis(embedded.default_data_dir())


def start_for_worker(settings: Settings) -> str:
    """Start or join the embedded servers the settings leave to the default, PostgreSQL
    first, and return the Redis URL. The calling process stays a user of both until it exits,
    so another process stopping does not stop them under it. Raises ``EmbeddedError``."""
    if not settings.database_url:
        embedded.start_postgres(embedded.default_data_dir())
    return redis_url(settings)
