"""Input validation: lengths from the schema contract, page-id normalisation, defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.lifecycle import PriorityLevel, TaskStatus
from app.schemas import ChannelCreate, TaskCreate, TaskUpdate

PAGE = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d"


def _task(**kw: object) -> TaskCreate:
    values: dict[str, object] = {"notion_page_id": PAGE, "channel": "UCx", "title": "T"}
    return TaskCreate.model_validate(values | kw)


@pytest.mark.parametrize("raw", [PAGE, PAGE.replace("-", ""), PAGE.upper(), f"  {PAGE} "])
def test_page_id_normalised(raw: str) -> None:
    assert _task(notion_page_id=raw).notion_page_id == "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"


@pytest.mark.parametrize("raw", ["", "xyz", PAGE[:-1], PAGE + "0", "g" * 32])
def test_bad_page_id_names_the_field(raw: str) -> None:
    with pytest.raises(ValidationError, match="notion_page_id"):
        _task(notion_page_id=raw)


def test_defaults() -> None:
    task = _task()
    assert task.priority is PriorityLevel.normal and task.status is TaskStatus.queued


@pytest.mark.parametrize(("field", "limit"), [("title", 255), ("topic", 500)])
def test_lengths(field: str, limit: int) -> None:
    _task(**{field: "x" * limit})
    with pytest.raises(ValidationError, match=field):
        _task(**{field: "x" * (limit + 1)})


def test_title_required_and_not_blank() -> None:
    with pytest.raises(ValidationError, match="title"):
        _task(title="   ")


def test_priority_any_case_and_unknown_refused() -> None:
    assert _task(priority="High").priority is PriorityLevel.high
    with pytest.raises(ValidationError, match="priority"):
        _task(priority="urgent")


def test_new_task_is_draft_or_queued_only() -> None:
    assert _task(status="draft").status is TaskStatus.draft
    with pytest.raises(ValidationError, match="status"):
        _task(status="published")


def test_unknown_fields_refused() -> None:
    with pytest.raises(ValidationError, match="colour"):
        _task(colour="red")


def test_update_and_channel() -> None:
    assert TaskUpdate(title="New").model_dump(exclude_unset=True) == {"title": "New"}
    with pytest.raises(ValidationError, match="max_concurrent"):
        ChannelCreate(channel_id="UCx", channel_name="X", max_concurrent=0)
