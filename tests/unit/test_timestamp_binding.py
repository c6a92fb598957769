"""A timestamp bound on the driver's cursor is stored as SQLAlchemy would store it.

``store.precompiled`` writes SQLite's text for an aware timestamp itself (SQLAlchemy's
conversion was the costliest step of binding processing's rows); rows written either way
are compared and sorted as text, so the text must not differ by a character.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from mailledger.store.models import UTCDateTime
from mailledger.store.precompiled import _bind_processor

_SQLITE = sqlite.dialect()


def _sqlalchemys(value: object) -> object:
    process = UTCDateTime().dialect_impl(_SQLITE).bind_processor(_SQLITE)
    assert process is not None
    return process(value)


def test_the_same_text_as_sqlalchemy() -> None:
    ours = _bind_processor(UTCDateTime(), _SQLITE)
    assert ours is not None
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
    rng = random.Random(9)
    values = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 2, 16, 40, 13, tzinfo=UTC),
    ]
    for _ in range(2000):
        values.append(
            datetime(
                rng.randrange(1, 10000),
                rng.randrange(1, 13),
                rng.randrange(1, 29),
                rng.randrange(24),
                rng.randrange(60),
                rng.randrange(60),
                rng.choice([0, rng.randrange(1000000)]),
                tzinfo=rng.choice(zones),
            )
        )
    for value in values:
        assert ours(value) == _sqlalchemys(value), value
    assert ours(None) is None


def test_a_naive_timestamp_is_still_refused() -> None:
    ours = _bind_processor(UTCDateTime(), _SQLITE)
    assert ours is not None
    with pytest.raises(ValueError, match="naive datetime"):
        ours(datetime(2026, 1, 1))


def test_postgresql_keeps_sqlalchemys_conversion() -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    ours = _bind_processor(UTCDateTime(), dialect)
    assert ours is not None
    with pytest.raises(ValueError, match="naive datetime"):
        ours(datetime(2026, 1, 1))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert ours(when) == when
