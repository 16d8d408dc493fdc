"""The pure halves of the Notion sync: page JSON → task fields, labels ↔ statuses, the push
body, the schema check, and what a status edit asks for."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.errors import BadPage
from app.lifecycle import GATES, LABELS, PriorityLevel, TaskStatus
from app.notion import mapping
from app.notion.mapping import PropertyNames
from app.notion.status_edits import Kind, read_edit
from tests.notion_fake import DEFAULT_SCHEMA, FakeNotion, PropertySpec, rich_text, select, status

NAMES = PropertyNames.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
PAGE_ID = "0f5e1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"


def page(**props: Any) -> dict[str, Any]:
    values = {"Title": {"type": "title", "title": [{"plain_text": "A "}, {"plain_text": "video"}]},
              "Channel": rich_text("UCabc"), "Status": status("Queued")} | props
    return {"object": "page", "id": PAGE_ID, "last_edited_time": "2026-11-22T10:00:00.000Z",
            "properties": values}


def test_a_page_becomes_task_fields() -> None:
    view = mapping.read_page(page(Topic=rich_text("space"), Priority=select("HIGH"),
                                  Channel=select("UCsel"), Error=rich_text("old"),
                                  **{"Story Direction": rich_text("slow"),
                                     "YouTube URL": {"type": "url", "url": "https://y.tu/x"}}),
                             NAMES)

    assert view.page_id == PAGE_ID.replace("-", "")
    task = view.task
    assert (task.title, task.topic, task.story_direction, task.channel, task.priority) == (
        "A video", "space", "slow", "UCsel", PriorityLevel.high)
    assert (view.status_label, view.asked, view.error, view.youtube_url) == (
        "Queued", TaskStatus.queued, "old", "https://y.tu/x")
    assert view.last_edited.isoformat() == "2026-11-22T10:00:00+00:00"


def test_empty_optional_fields_take_defaults() -> None:
    view = mapping.read_page(page(Priority=select(None), Status=status(None),
                                  Topic=rich_text("")), NAMES)
    assert (view.task.priority, view.task.topic, view.status_label, view.asked) == (
        PriorityLevel.normal, None, None, None)


@pytest.mark.parametrize(("props", "field", "reason"), [
    ({"Title": rich_text("")}, "Title", "missing"),
    ({"Title": rich_text("x" * 256)}, "Title", "at most 255"),
    ({"Topic": rich_text("x" * 501)}, "Topic", "at most 500"),
    ({"Channel": select(None)}, "Channel", "missing"),
    ({"Channel": rich_text("U" * 65)}, "Channel", "at most 64"),
    ({"Priority": select("Urgent")}, "Priority", "'high', 'normal' or 'low'"),
    ({"Topic": {"type": "number", "number": 3}}, "Topic", "unsupported property type"),
])
def test_bad_fields_name_the_page_and_property(props: dict[str, Any], field: str,
                                               reason: str) -> None:
    with pytest.raises(BadPage) as bad:
        mapping.read_page(page(**props), NAMES)
    assert (bad.value.page_id, bad.value.field) == (PAGE_ID.replace("-", ""), field)
    assert reason in bad.value.reason
    assert str(bad.value).startswith(f"page {PAGE_ID.replace('-', '')}: {field}: ")


@pytest.mark.parametrize(("raw", "field"), [
    ({"id": "not-a-page-id"}, "id"),
    ({"id": PAGE_ID + "00"}, "id"),
    ({"last_edited_time": "yesterday"}, "last_edited_time"),
])
def test_malformed_ids_and_timestamps(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(BadPage) as bad:
        mapping.read_page(page() | raw, NAMES)
    assert bad.value.field == field


def test_every_label_maps_back_to_its_status_in_any_case() -> None:
    for state, label in LABELS.items():
        assert mapping.status_for_label(label) is state
        assert mapping.status_for_label(f" {label.upper()} ") is state
    assert mapping.status_for_label("Someday") is None
    assert mapping.status_for_label(None) is None


def test_last_error_line() -> None:
    assert mapping.last_error_line(None) == mapping.last_error_line("") == ""
    assert mapping.last_error_line("first\nsecond\n") == "second"
    assert len(mapping.last_error_line("old\n" + "x" * 5000)) == mapping.MAX_TEXT


def test_push_properties() -> None:
    props = mapping.push_properties(NAMES, TaskStatus.generating_sfx, "a\nb", "https://y.tu/x")
    assert props == {"Status": {"status": {"name": "Generating SFX"}},
                     "Error": {"rich_text": [{"type": "text", "text": {"content": "b"}}]},
                     "YouTube URL": {"url": "https://y.tu/x"}}
    quiet = PropertyNames(**{**NAMES.__dict__, "error": "", "status_type": "select"})
    assert mapping.push_properties(quiet, TaskStatus.draft, None, None) == {
        "Status": {"select": {"name": "Draft"}}, "YouTube URL": {"url": None}}
    assert mapping.push_properties(NAMES, TaskStatus.draft, None, None)["Error"] == {
        "rich_text": []}


def schema(**changes: PropertySpec | str | None) -> dict[str, Any]:
    specs = {**DEFAULT_SCHEMA, **changes}
    notion = FakeNotion(default_data_source=False)
    ds = notion.add_data_source(schema={k: v for k, v in specs.items() if v is not None})
    return notion.data_source(ds)


def test_schema_check_names_the_property_and_variable() -> None:
    assert mapping.check_schema(schema(), NAMES).status_type == "status"
    as_select = schema(Status=PropertySpec("select", ("Draft", "Queued")))
    assert mapping.check_schema(as_select, NAMES).status_type == "select"
    with pytest.raises(ValueError, match=r"no property 'Channel' \(NOTION_PROP_CHANNEL\)"):
        mapping.check_schema(schema(Channel=None), NAMES)
    with pytest.raises(ValueError, match=r"'YouTube URL' .* is rich_text, expected url"):
        mapping.check_schema(schema(**{"YouTube URL": "rich_text"}), NAMES)
    without_error = PropertyNames(**{**NAMES.__dict__, "error": ""})
    assert mapping.check_schema(schema(Error=None), without_error).error == ""


S = TaskStatus


@pytest.mark.parametrize(("label", "current", "shown", "linked", "kind"), [
    (None, None, None, False, Kind.none),              # empty status: a draft
    ("Draft", None, None, False, Kind.none),
    ("Queued", None, None, False, Kind.queue),
    ("Assets Approved", None, None, False, Kind.refuse),  # new tasks start as draft/queued
    ("Someday", None, None, False, Kind.refuse),
    ("Queued", S.draft, S.draft, True, Kind.queue),
    ("Draft", S.queued, S.queued, True, Kind.unqueue),
    ("Draft", S.queued, None, False, Kind.none),        # an imported task, an older page
    ("Queued", S.generating_assets, S.queued, True, Kind.none),  # page not yet updated
    ("Queued", S.queued, None, False, Kind.none),       # already there
    ("Someday", S.draft, None, True, Kind.none),        # refused before, not pushed yet
    ("Published", S.uploading, S.uploading, True, Kind.refuse),  # a worker's move
    ("Queued", S.asset_error, S.asset_error, True, Kind.refuse),
    ("Video Approved", S.assets_ready, S.assets_ready, True, Kind.refuse),
    *[(LABELS[g.approved], g.waiting, g.waiting, True, Kind.approve) for g in GATES],
])
def test_status_edits(label: str | None, current: TaskStatus | None,
                      shown: TaskStatus | None, linked: bool, kind: Kind) -> None:
    edit = read_edit(label=label, asked=mapping.status_for_label(label), current=current,
                     shown=shown, linked=linked)
    assert edit.kind is kind
    assert bool(edit.reason) is (kind is Kind.refuse)
    if kind is Kind.approve:
        assert current is not None and edit.gate == {g.waiting: g.name for g in GATES}[current]
