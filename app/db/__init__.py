"""The data layer: engine and connection factories, the models, the hand-written statements and
the DDL that migrations install.

``engine`` turns settings into connections; ``hotpool`` holds a worker's plain asyncpg
connections; ``models`` is the schema; ``statements`` holds every statement that decides who may
write a task; ``ddl/`` renders the PL/pgSQL (guard, claim function) for the migrations;
``migrate`` runs Alembic from code. The factories admin scripts use are importable from here.
"""

from app.db.engine import (
    connect_kwargs,
    describe,
    is_unavailable,
    make_engine,
    make_pool,
    make_sessionmaker,
    require_postgresql,
    session_scope,
    translate_url,
)

__all__ = ["connect_kwargs", "describe", "is_unavailable", "make_engine", "make_pool",
           "make_sessionmaker", "require_postgresql", "session_scope", "translate_url"]
