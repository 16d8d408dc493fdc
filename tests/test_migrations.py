"""Migrations: upgrade from empty, inspect what was built, no drift from the models, downgrade to
nothing of ours, upgrade again; the same round trip on SQLite."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from app import lifecycle, moves
from app.db import migrate
from app.db.ddl import boundary, claim_task, guard
from app.db.models import Task
from app.lifecycle import PriorityLevel, TaskStatus
from tests import dbtools

VERSIONS = Path(__file__).resolve().parent.parent / "alembic" / "versions"


def _revision(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"rev_{name}", VERSIONS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frozen_pairs_match_lifecycle() -> None:
    """The guard installed by the migration is the table in ``app.lifecycle`` (edit one, add a
    revision for the other)."""
    revision = _revision("0001_initial")
    assert [(TaskStatus(a), TaskStatus(b)) for a, b in revision.PAIRS] == \
        lifecycle.allowed_pairs()
    assert tuple(s.value for s in TaskStatus) == revision.STATUSES
    assert tuple(p.value for p in PriorityLevel) == revision.PRIORITIES


@pytest.mark.parametrize("name", ["0002_claim_task", "0004_claim_start",
                                  "0005_claim_single_write", "0006_row_is_the_truth",
                                  "0007_hold", "0008_quotas", "0010_robust_plans",
                                  "0011_lean_pick", "0015_picks_together"])
def test_frozen_claim_data_matches_lifecycle(name: str) -> None:
    claim = _revision(name)
    starts = {st.start.value: st.active.value for st in lifecycle.STAGES
              if st.start is not TaskStatus.claimed}
    assert starts == claim.STARTS
    assert set(claim.ACTIVE) == {s.value for s in lifecycle.ACTIVE}
    assert set(claim.ERRORS) == {s.value for s in lifecycle.ERROR}
    first = next(st.active for st in lifecycle.STAGES if st.start is TaskStatus.claimed)
    assert getattr(claim, "FIRST_STAGE", first.value) == first.value
    if hasattr(claim, "TARGETS"):      # the claim's targets, from the rule in app.moves
        assert {(TaskStatus(s), f, start): TaskStatus(t)
                for (s, f, start), t in claim.TARGETS.items()} == moves.claim_targets()
    if hasattr(claim, "STAGES"):
        assert {st.active.value: st.name for st in lifecycle.STAGES} == claim.STAGES
    if hasattr(claim, "CLAIM_STARTS"):
        assert [(TaskStatus(a), TaskStatus(b)) for a, b in claim.CLAIM_STARTS] == \
            list(lifecycle.CLAIM_STARTS)


@pytest.mark.parametrize("name", ["0012_set_boundaries", "0013_quota_set_claims",
                                  "0014_plans_by_key", "0016_compact_quota_record",
                                  "0017_one_bucket_claims",
                                  "0018_shared_bucket_claims"])
def test_frozen_claim_targets_match_moves(name: str) -> None:
    """Revisions that render a claim from the targets alone freeze the rule of ``app.moves``."""
    assert {(TaskStatus(s), f, start): TaskStatus(t)
            for (s, f, start), t in _revision(name).TARGETS.items()} == moves.claim_targets()


@pytest.fixture
async def empty_pg(pg_server_url: str) -> AsyncIterator[str]:
    async with dbtools.scratch_database(pg_server_url, migrate=False) as url:
        yield url


async def _query(url: str, sql: str) -> list[sa.Row[tuple[object, ...]]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(sa.text(sql)))
    finally:
        await engine.dispose()


OUR_OBJECTS = """
SELECT 'type:' || typname FROM pg_type WHERE typname IN ('taskstatus', 'prioritylevel')
UNION ALL SELECT 'class:' || relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND relname <> 'alembic_version'
    AND relname NOT LIKE 'alembic_version%%'
UNION ALL SELECT 'proc:' || proname FROM pg_proc WHERE proname IN ({procs}, 'claim_task')
UNION ALL SELECT 'trigger:' || tgname FROM pg_trigger WHERE NOT tgisinternal
""".format(procs=", ".join(f"'{p}'" for p in guard.PG_FUNCTIONS))

CLAIM_SIGNATURE = ("SELECT pg_get_function_arguments(oid) FROM pg_proc"
                   " WHERE proname = 'claim_task'")


async def test_round_trip_postgresql(empty_pg: str) -> None:
    await migrate.upgrade(empty_pg)
    await _inspect(empty_pg)
    await migrate.check(empty_pg)            # models == migrations
    await migrate.upgrade(empty_pg)          # a second upgrade is a no-op
    current, head = await migrate.revisions(empty_pg)
    assert current == head and head is not None
    await migrate.downgrade(empty_pg, "0003")      # the 0002 claim function is back
    assert await _query(empty_pg, CLAIM_SIGNATURE) == [("p_worker text, p_lease_s double"
                                                        " precision, p_now timestamp with time"
                                                        " zone, p_task uuid DEFAULT NULL::uuid",)]
    await migrate.upgrade(empty_pg)
    assert "p_start boolean" in (await _query(empty_pg, CLAIM_SIGNATURE))[0][0]
    await migrate.downgrade(empty_pg, "base")
    assert await _query(empty_pg, OUR_OBJECTS) == []
    await migrate.upgrade(empty_pg)
    await _inspect(empty_pg)


async def _commit(url: str, *statements: str) -> list[sa.Row[tuple[object, ...]]]:
    """Run ``statements`` in one committed transaction; the last one's rows."""
    engine = create_async_engine(url, poolclass=NullPool)
    rows: list[sa.Row[tuple[object, ...]]] = []
    try:
        async with engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(sa.text(statement))
                rows = list(result) if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


CLAIM_AND_START = "SELECT to_status::text FROM claim_task('w', 30, now(), NULL, true)"
#: ``queued → generating_assets`` in one write, as a claim writes it.
CLAIM_START_BY_HAND = ("UPDATE tasks SET status = 'generating_assets',"
                       " claim_token = gen_random_uuid(), claimed_by = 'w',"
                       " lease_expires_at = now() + interval '30 seconds',"
                       " attempts = attempts + 1 WHERE status = 'queued'")


async def test_downgrade_0005_restores_the_two_write_claim(empty_pg: str) -> None:
    await migrate.upgrade(empty_pg)
    await _commit(empty_pg,
                  "INSERT INTO channels (channel_id, channel_name) VALUES ('UC-m', 'M')",
                  "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
                  " SELECT c.id, md5(g::text), 'T', 'queued'"
                  " FROM channels c, generate_series(1, 3) g")
    assert await _commit(empty_pg, CLAIM_AND_START) == [("generating_assets",)]
    await migrate.downgrade(empty_pg, "0004")
    assert await _commit(empty_pg, CLAIM_AND_START) == [("generating_assets",)]
    with pytest.raises(DBAPIError, match="illegal task transition queued -> generating_assets"):
        await _commit(empty_pg, CLAIM_START_BY_HAND)
    events = await _commit(empty_pg, "SELECT from_status::text, to_status::text"
                                     " FROM task_events ORDER BY id")
    assert events == [("queued", "claimed"), ("claimed", "generating_assets")] * 2
    await migrate.upgrade(empty_pg)
    await _commit(empty_pg, CLAIM_START_BY_HAND)       # the last queued task, by hand


async def _inspect(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: _inspect_sync(sync))
            await _inspect_catalog(conn)
    finally:
        await engine.dispose()


def _inspect_sync(conn: sa.Connection) -> None:
    insp = sa.inspect(conn)
    tasks = {c["name"]: c for c in insp.get_columns("tasks")}
    assert str(tasks["id"]["type"]) == "UUID" and not tasks["id"]["nullable"]
    assert "gen_random_uuid()" in str(tasks["id"]["default"])
    assert tasks["notion_page_id"]["type"].length == 32  # type: ignore[attr-defined]
    assert tasks["title"]["type"].length == 255  # type: ignore[attr-defined]
    assert tasks["topic"]["type"].length == 500  # type: ignore[attr-defined]
    assert tasks["youtube_url"]["type"].length == 255  # type: ignore[attr-defined]
    assert list(tasks["status"]["type"].enums) == [s.value for s in TaskStatus]  # type: ignore[attr-defined]
    assert list(tasks["priority"]["type"].enums) == ["high", "normal", "low"]  # type: ignore[attr-defined]
    assert "draft" in str(tasks["status"]["default"])
    assert "normal" in str(tasks["priority"]["default"])
    for name in ("created_at", "updated_at"):
        assert tasks[name]["type"].timezone and not tasks[name]["nullable"]  # type: ignore[attr-defined]
    assert str(tasks["artifacts"]["type"]) == "JSONB"
    for name in ("channel_id", "notion_page_id", "status", "priority", "attempts"):
        assert not tasks[name]["nullable"], name
    for name in ("error_log", "youtube_url", "claim_token", "lease_expires_at", "retry_at"):
        assert tasks[name]["nullable"], name
    fks = {fk["referred_table"]: fk for fk in insp.get_foreign_keys("tasks")}
    assert fks["channels"]["options"]["ondelete"] == "RESTRICT"
    events_fk = insp.get_foreign_keys("task_events")[0]
    assert events_fk["referred_table"] == "tasks" and events_fk["options"]["ondelete"] == "CASCADE"
    assert {u["name"] for u in insp.get_unique_constraints("tasks")} == {"uq_tasks_notion_page_id"}
    indexes = {ix["name"]: ix for ix in insp.get_indexes("tasks")
               if not ix.get("duplicates_constraint")}
    # ix_tasks_channel_id was dropped (0009): ix_tasks_channel_id_status leads with its column.
    assert set(indexes) == {"ix_tasks_status", "ix_tasks_created_at",
                            "ix_tasks_channel_id_status", "ix_tasks_queued", "ix_tasks_runnable"}
    queued = indexes["ix_tasks_queued"]
    assert queued["column_names"] == ["channel_id", "priority", "created_at", "id"]
    where = queued.get("dialect_options", {}).get("postgresql_where")
    assert "status = 'queued'" in str(where)
    events = {c["name"]: c for c in insp.get_columns("task_events")}
    assert str(events["id"]["type"]) == "BIGINT" and events["id"].get("identity")
    assert events["from_status"]["nullable"] and not events["to_status"]["nullable"]
    assert not events["actor"]["nullable"]


async def _inspect_catalog(conn: AsyncConnection) -> None:
    triggers = set((await conn.execute(sa.text(
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))).scalars())
    assert triggers == {"tasks_guard_transition", "tasks_set_updated_at",
                        "channels_set_updated_at"}
    options = (await conn.execute(sa.text(
        "SELECT reloptions FROM pg_class WHERE relname = 'tasks'"))).scalar_one()
    assert "fillfactor=85" in options
    usage = (await conn.execute(sa.text(
        "SELECT reloptions FROM pg_class WHERE relname = 'quota_usage'"))).scalar_one()
    assert usage == ["fillfactor=10"]
    storage = (await conn.execute(sa.text(
        "SELECT attstorage::text FROM pg_attribute WHERE attrelid = 'quota_usage'::regclass"
        " AND attname = 'starts'"))).scalar_one()
    assert storage == "e"
    enum_order = (await conn.execute(sa.text(
        "SELECT array_agg(enumlabel ORDER BY enumsortorder)::text FROM pg_enum"
        " WHERE enumtypid = 'taskstatus'::regtype"))).scalar_one()
    assert enum_order.strip("{}").split(",") == [s.value for s in TaskStatus]


async def test_round_trip_sqlite() -> None:
    path = Path(tempfile.mkdtemp(prefix="pqm-", dir="/tmp"))
    url = f"sqlite+aiosqlite:///{path / 'm.sqlite'}"
    try:
        await migrate.upgrade(url)
        await migrate.check(url)
        await migrate.upgrade(url)
        await migrate.downgrade(url, "base")
        left = await _query(url, "SELECT type, name FROM sqlite_master"
                                 " WHERE name NOT LIKE 'sqlite_%' AND name <> 'alembic_version'")
        assert left == []
        await migrate.upgrade(url)
        names = {r[0] for r in await _query(url, "SELECT name FROM sqlite_master")}
        assert {"tasks", "channels", "task_events", "ix_tasks_queued",
                "tasks_guard_transition"} <= names
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _RecordingOp:
    """Stands in for ``alembic.op`` to record what a revision runs on a dialect: the SQL it
    renders itself (``op.execute``), DDL sent to its connection, and the name of every other
    operation (their arguments are literal in the revision's file)."""

    def __init__(self, dialect: str) -> None:
        self.calls: list[str] = []
        self._bind: Any = sa.create_mock_engine(
            f"{dialect}://", lambda sql, *_, **__: self.calls.append(
                f"ddl: {sql.compile(dialect=self._bind.dialect)}"))

    def get_bind(self) -> Any:
        return self._bind

    def f(self, name: str) -> str:
        return name

    def execute(self, sql: object) -> None:
        self.calls.append(f"execute: {getattr(sql, 'text', sql)}")

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: object, **kwargs: object) -> None:
            self.calls.append(f"{name}: {args[0] if args else ''}")
        return record


def _installs(name: str, dialect: str, direction: str) -> str:
    revision: Any = _revision(name)
    recording = _RecordingOp(dialect)
    original = revision.op
    revision.op = recording
    try:
        getattr(revision, direction)()
    finally:
        revision.op = original
    return "\n".join(recording.calls)


#: sha256 (first 16 hex digits) of what each revision runs, by dialect and direction. An old
#: revision must never change: render its DDL from frozen code (``app.db.ddl.*_NNNN``) and put
#: a change in a new revision. Only the newest revision's line may be updated, while unreleased.
GOLDEN = {
    "0001_initial": {
        "postgresql upgrade": "1e2a94e4497393bc",
        "postgresql downgrade": "430f6de829c2764c",
        "sqlite upgrade": "19e7fe76fecab39c",
        "sqlite downgrade": "24a53badabf00d18",
    },
    "0002_claim_task": {
        "postgresql upgrade": "59a6eed360dc5a7f",
        "postgresql downgrade": "81bdc483c7bb8958",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0003_notion_sync": {
        "postgresql upgrade": "3c61754097f0f133",
        "postgresql downgrade": "ee6dd6464cec5c91",
        "sqlite upgrade": "3c61754097f0f133",
        "sqlite downgrade": "ee6dd6464cec5c91",
    },
    "0004_claim_start": {
        "postgresql upgrade": "38a9c80f2210cba4",
        "postgresql downgrade": "23998ba54eea062c",
        "sqlite upgrade": "6f2277e9942a344d",
        "sqlite downgrade": "91cf6ee4cfd5557a",
    },
    "0005_claim_single_write": {
        "postgresql upgrade": "dd43f1d268719c55",
        "postgresql downgrade": "ecda7b511a0e199f",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0006_row_is_the_truth": {
        "postgresql upgrade": "f85378ef3ee9d0ae",
        "postgresql downgrade": "e0767078e3832a54",
        "sqlite upgrade": "70e8c76f98ebeb82",
        "sqlite downgrade": "69bba11d23663a10",
    },
    "0007_hold": {
        "postgresql upgrade": "d3e714113ffc1fc2",
        "postgresql downgrade": "dcb26e21070da72e",
        "sqlite upgrade": "01b17ff085eecb03",
        "sqlite downgrade": "145a5cc12df0e6a0",
    },
    "0008_quotas": {
        "postgresql upgrade": "75f375b048698b7a",
        "postgresql downgrade": "2cd42f30e33466ce",
        "sqlite upgrade": "fa8075db5d70d2aa",
        "sqlite downgrade": "e154bd938d7bbc28",
    },
    "0009_stage_boundary": {
        "postgresql upgrade": "7df7954fc376976c",
        "postgresql downgrade": "a92c143b16df43b3",
        "sqlite upgrade": "921a42fe354bade8",
        "sqlite downgrade": "0a4e199917a6152b",
    },
    "0010_robust_plans": {
        "postgresql upgrade": "5212b0aba2bbfd8c",
        "postgresql downgrade": "c8c14a895fc8e8a8",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0011_lean_pick": {
        "postgresql upgrade": "57465201aec1e1dd",
        "postgresql downgrade": "5175c4d2923e2e97",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0012_set_boundaries": {
        "postgresql upgrade": "2f75942551a741a3",
        "postgresql downgrade": "7e46c4c110c9469c",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0013_quota_set_claims": {
        "postgresql upgrade": "4c0b65d529cc92c0",
        "postgresql downgrade": "99dd049169d0e1d2",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0014_plans_by_key": {
        "postgresql upgrade": "95fdce3ea7f18f05",
        "postgresql downgrade": "e3fb6ea0730767b6",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0015_picks_together": {
        "postgresql upgrade": "259b06712cf06411",
        "postgresql downgrade": "bd83673260c02e59",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0016_compact_quota_record": {
        "postgresql upgrade": "88801d1a4eb39b51",
        "postgresql downgrade": "c2e50418d5aa423c",
        "sqlite upgrade": "75a858d763ede43b",
        "sqlite downgrade": "e0f9228de7e174fb",
    },
    "0017_one_bucket_claims": {
        "postgresql upgrade": "57ad6b02bc7da252",
        "postgresql downgrade": "a7c34a17ae132087",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0018_shared_bucket_claims": {
        "postgresql upgrade": "d008e0df2546daf4",
        "postgresql downgrade": "65985b13fd3e36a5",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0019_durable_pick_ups": {
        "postgresql upgrade": "8103117122bbbb21",
        "postgresql downgrade": "a651739f891b80a3",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
    "0020_queue_order": {
        "postgresql upgrade": "443b29c9d1c5d81a",
        "postgresql downgrade": "7245ba62cba179cc",
        "sqlite upgrade": "e3b0c44298fc1c14",
        "sqlite downgrade": "e3b0c44298fc1c14",
    },
}


def test_frozen_boundary_rules_match_moves() -> None:
    """The stage boundary installed at head is rendered from the rules in ``app.moves``."""
    head = _revision("0014_plans_by_key")
    assert boundary.finish_rule() == head.FINISH
    assert boundary.steps_rule() == head.STEPS
    assert {s.value: a.value for s, a in moves.STARTS.items()} == head.STARTS
    assert boundary.CLAIM_WRITES == head.CLAIM_WRITES
    assert set(head.ACTIVE) == {s.value for s in lifecycle.ACTIVE}
    assert boundary.next_stages() == head.NEXT_STAGE
    carrying = _revision("0009_stage_boundary")
    assert [(a.value, b.value) for a, b in lifecycle.CARRIES] == list(carrying.CARRIES)
    assert [(a.value, b.value) for a, b in lifecycle.CLAIM_STARTS] == list(carrying.CLAIM_STARTS)


def test_claim_probes_state_the_runnable_index_predicate() -> None:
    """The claim's probes of ``ix_tasks_runnable`` carry the index's own predicate (so that
    any plan, on any statistics, can read the index in order): the head's frozen lists give
    the predicate the model declares."""
    head = _revision("0011_lean_pick")
    index = next(i for i in Task.__table__.indexes if i.name == claim_task.RUNNABLE_INDEX)
    declared = str(index.dialect_options["postgresql"]["where"])
    assert claim_task.runnable_predicate(head.STARTS, head.ERRORS, head.ACTIVE) == declared


def test_every_revision_is_frozen() -> None:
    files = sorted(path.stem for path in VERSIONS.glob("0*.py"))
    assert files == list(GOLDEN)


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
@pytest.mark.parametrize("name", list(GOLDEN))
def test_what_each_revision_installs_is_frozen(name: str, dialect: str, direction: str) -> None:
    digest = hashlib.sha256(_installs(name, dialect, direction).encode()).hexdigest()[:16]
    assert digest == GOLDEN[name].get(f"{dialect} {direction}"), (
        f"{name} {dialect} {direction} now runs something else ({digest})")


async def test_downgrade_0006_leaves_no_stage_stranded(empty_pg: str) -> None:
    """A stage handed back (no holder, no lease) is one the old claim does not take over:
    downgrading ends its lease, so the old reaper takes it back; channels keep their order."""
    await migrate.upgrade(empty_pg)
    await _commit(empty_pg,
                  "INSERT INTO channels (channel_id, channel_name, turn) VALUES"
                  " ('UC-a', 'A', 7), ('UC-b', 'B', 3)",
                  "INSERT INTO tasks (channel_id, notion_page_id, title, status)"
                  " SELECT id, md5(channel_id), 'T', 'queued' FROM channels",
                  "UPDATE tasks SET status = 'claimed'",
                  "UPDATE tasks SET status = 'generating_assets'")
    await migrate.downgrade(empty_pg, "0005")
    leases = await _commit(empty_pg, "SELECT count(*) FROM tasks"
                                     " WHERE lease_expires_at <= now()")
    assert leases == [(2,)]
    order = await _commit(empty_pg, "SELECT channel_id FROM channels"
                                    " ORDER BY last_claimed_at")
    assert order == [("UC-b",), ("UC-a",)]
    await migrate.upgrade(empty_pg)


async def test_downgrade_0016_writes_every_start_back(empty_pg: str) -> None:
    """A merged entry goes back as as many starts at its time (the newest ``max_starts`` kept),
    so the old functions, which count one start per entry, let no more in."""
    await migrate.upgrade(empty_pg)
    await _commit(empty_pg,
                  "INSERT INTO quotas (stage, per_channel, max_starts, window_s)"
                  " VALUES ('video', false, 5, 3600)",
                  "INSERT INTO quota_usage (channel_id, quota_id, stage, starts, counts)"
                  " SELECT '00000000-0000-0000-0000-000000000000', id, 'video',"
                  " ARRAY['2026-01-01 10:00+00', '2026-01-01 10:01+00', '2026-01-01 10:02+00']"
                  "::timestamptz[], '{2,3,4}' FROM quotas")
    await migrate.downgrade(empty_pg, "0015")
    rows = await _commit(empty_pg, "SELECT array_to_string(ARRAY(SELECT to_char(s AT TIME ZONE"
                                   " 'UTC', 'MI') FROM unnest(starts) s), ',') FROM quota_usage")
    assert rows == [("01,02,02,02,02",)]
    await migrate.upgrade(empty_pg)
    rows = await _commit(empty_pg, "SELECT cardinality(starts), counts FROM quota_usage")
    assert rows == [(5, [])]
