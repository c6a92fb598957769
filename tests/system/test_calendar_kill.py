"""A first calendar sync survives ``kill -9`` halfway: every occurrence is kept exactly once.

``mailledger calendar sync`` runs as a subprocess, as an operator runs it, and reads a
calendar of a few hundred meetings with a client from Radicale, a batch per transaction.
Once some batches are committed it is killed with SIGKILL; when its lease has lapsed the
command runs again and finishes: one row per occurrence, one meeting per occurrence, and
the sync token stored, with nothing twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailledger.calendar.passes import BATCH
from mailledger.cli.demo import seed_demo
from mailledger.config import load_settings
from mailledger.store import calendars
from mailledger.store.engine import make_engine, make_sessionmaker, reading
from mailledger.store.models import Activity, CalendarAccount, CalendarEvent, Tenant, utcnow
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.ports import free_port
from mailledger.testing.radicale import Radicale
from mailledger.testing.servers import write_config

pytestmark = pytest.mark.slow

USER = "richard"
PASSWORD = "calendar secret"
EVENTS = 600
# How long the test waits for the command to commit its first batches, or to finish.
PATIENCE_SECONDS = 120.0


@pytest.fixture
def radicale() -> Iterator[Radicale]:
    with Radicale({USER: PASSWORD}) as server:
        yield server


def _meeting(n: int, start: datetime) -> str:
    begin = start + timedelta(hours=n)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//app//EN\r\nBEGIN:VEVENT\r\n"
        f"UID:meeting-{n}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{begin:%Y%m%dT%H%M%SZ}\r\n"
        f"DTEND:{begin + timedelta(minutes=30):%Y%m%dT%H%M%SZ}\r\n"
        f"SUMMARY:Call {n}\r\nORGANIZER:mailto:richard@acme.example\r\n"
        "ATTENDEE:mailto:carol@client.example\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def test_a_first_sync_killed_halfway_keeps_every_occurrence_once(
    tmp_path: Path, radicale: Radicale
) -> None:
    """SIGKILL after a few batches, run again: exactly EVENTS rows and meetings."""
    work = radicale.make_calendar(USER, "work", "Work")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    for n in range(EVENTS):
        assert radicale.put(USER, f"{work}m{n}.ics", _meeting(n, start)).status == 201
    database = f"sqlite:///{tmp_path / 'calendar.db'}"
    key_file = tmp_path / "secret.key"
    ensure_key_file(key_file)
    config = write_config(
        tmp_path / "calendar.toml",
        database_url=database,
        blob_dir=tmp_path / "blobs",
        capture_port=free_port(),
        secrets={"key_file": str(key_file)},
        calendar={"lease_seconds": 2.0},
    )
    settings = load_settings(config)
    engine = make_engine(database)
    from mailledger.store.migrate import upgrade

    upgrade(database)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        seed_demo(session)
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        account_id = calendars.add_account(
            session,
            SecretBox.from_file(settings.secrets.key_file),
            calendars.CalendarRequest(
                tenant=tenant, username=USER, url=work, login=USER, password=PASSWORD
            ),
            calendar_url=work,
            calendar_name="Work",
            now=utcnow(),
        ).id
    # The first pass runs at the lowest priority: on a busy machine (the whole suite on two
    # cores) it committed every batch before this process got the CPU to see the first one.
    command = [
        "nice", "-n", "19", sys.executable, "-m", "mailledger", "--config", str(config),
        "calendar", "sync", str(account_id),
    ]  # fmt: skip
    env = {**os.environ, "MAILLEDGER_CONFIG": str(config)}

    def rows() -> int:
        # As a reader: a write transaction would queue for the lock behind the pass it watches.
        with reading(sessions) as session:
            return int(session.scalar(select(func.count()).select_from(CalendarEvent)) or 0)

    output = tmp_path / "first-run.log"
    with output.open("wb") as log:
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + PATIENCE_SECONDS
    # Killed at its first committed batch: waiting for more let a fast machine finish the
    # whole pass before the signal landed.
    while rows() < BATCH:
        assert first.poll() is None, output.read_text(errors="replace")
        assert time.monotonic() < deadline, "the first batches were never committed"
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = rows()
    assert 0 < killed_at < EVENTS, f"the pass was not caught halfway ({killed_at} rows)"

    # The dead pass's lease lapses; then the command takes the account and finishes.
    while True:
        with sessions() as session:
            expires = session.get_one(CalendarAccount, account_id).claim_expires_at
        if expires is None or expires < utcnow():
            break
        assert time.monotonic() < deadline, "the dead pass's lease never lapsed"
        time.sleep(0.1)
    again = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=PATIENCE_SECONDS, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
    with sessions() as session:
        total = session.scalar(select(func.count()).select_from(CalendarEvent))
        distinct = session.scalar(
            select(func.count()).select_from(
                select(CalendarEvent.href, CalendarEvent.recurrence_id).distinct().subquery()
            )
        )
        meetings = session.scalar(
            select(func.count()).select_from(Activity).where(Activity.kind == "meeting")
        )
        account = session.get_one(CalendarAccount, account_id)
        assert account.sync_token and account.claimed_by is None
    assert total == distinct == EVENTS
    assert meetings == EVENTS
    engine.dispose()
