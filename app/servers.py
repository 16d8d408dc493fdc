"""Where the database and Redis are: the configured URLs, or the embedded default servers.

Without ``DATABASE_URL`` a real PostgreSQL is started under the data directory (``.data/``) and
the ``pipeline`` database created on it; without ``REDIS_URL`` a real redis-server. Each process
that starts them is registered as a user; the last user to exit stops them.
"""

from __future__ import annotations

from app import embedded
from app.config import Settings

EMBEDDED_DATABASE = "pipeline"


async def database_url(settings: Settings) -> str:
    """``DATABASE_URL``, or the embedded server's ``pipeline`` database (started if needed)."""
    if settings.database_url:
        return settings.database_url
    server = embedded.start_postgres(embedded.default_data_dir())
    return await embedded.ensure_database(server, EMBEDDED_DATABASE)


def redis_url(settings: Settings) -> str:
    """``REDIS_URL``, or the embedded redis-server's unix socket (started if needed)."""
    if settings.redis_url:
        return settings.redis_url
    return embedded.start_redis(embedded.default_data_dir())
