"""Timestamps are aware UTC on both backends; naive ones are refused before they are stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from modelport.db.engine import create_engine, create_session_factory
from modelport.registry.tables import Model
from tests.helpers import run

BERLIN_SUMMER = timezone(timedelta(hours=2))
NEW_YORK_WINTER = timezone(timedelta(hours=-5))


async def _store(url: str, models: list[Model]) -> None:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            session.add_all(models)
            await session.commit()
    finally:
        await engine.dispose()


async def _created_at_by_name(url: str) -> dict[str, datetime]:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            rows = await session.execute(select(Model.name, Model.created_at))
            return {name: created_at for name, created_at in rows}
    finally:
        await engine.dispose()


async def _names_in_time_order(url: str, since: datetime) -> list[str]:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            query = select(Model.name).where(Model.created_at >= since).order_by(Model.created_at)
            return list(await session.scalars(query))
    finally:
        await engine.dispose()


def test_datetimes_come_back_aware_in_utc(database_url: str) -> None:
    written = datetime(2024, 7, 1, 14, 30, 5, 123456, tzinfo=BERLIN_SUMMER)
    run(_store(database_url, [Model(name="berlin", task="regression", created_at=written)]))

    (read,) = run(_created_at_by_name(database_url)).values()

    assert read.tzinfo is not None
    assert read.utcoffset() == timedelta(0)
    assert read == written
    assert (read.hour, read.minute, read.microsecond) == (12, 30, 123456)


def test_default_timestamps_are_aware_utc(database_url: str) -> None:
    before = datetime.now(UTC)
    run(_store(database_url, [Model(name="now", task="regression")]))

    (read,) = run(_created_at_by_name(database_url)).values()

    assert read.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= read <= datetime.now(UTC) + timedelta(seconds=1)


def test_ordering_and_filters_follow_the_instant_not_the_wall_clock(database_url: str) -> None:
    # 23:30 in New York is 04:30 UTC the next day: later than 02:00 UTC that day.
    late_evening_new_york = datetime(2024, 1, 1, 23, 30, tzinfo=NEW_YORK_WINTER)
    early_morning_utc = datetime(2024, 1, 2, 2, 0, tzinfo=UTC)
    run(
        _store(
            database_url,
            [
                Model(name="new-york", task="regression", created_at=late_evening_new_york),
                Model(name="utc", task="regression", created_at=early_morning_utc),
            ],
        )
    )

    assert run(_names_in_time_order(database_url, since=datetime(2024, 1, 1, tzinfo=UTC))) == [
        "utc",
        "new-york",
    ]
    since = datetime(2024, 1, 2, 5, 0, tzinfo=BERLIN_SUMMER)  # 03:00 UTC
    assert run(_names_in_time_order(database_url, since=since)) == ["new-york"]


def test_naive_datetimes_are_refused(database_url: str) -> None:
    naive = datetime(2024, 7, 1, 14, 30)

    with pytest.raises(StatementError, match="naive datetime"):
        run(_store(database_url, [Model(name="naive", task="regression", created_at=naive)]))

    assert run(_created_at_by_name(database_url)) == {}
