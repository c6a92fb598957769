"""The benchmark harness runs end to end with tiny counts (figures themselves are unchecked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailledger.testing.postgres import find_bindir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
def test_bench_smoke_run_writes_every_headline_figure(tmp_path: Path) -> None:
    """`python -m bench.run --smoke` finishes, prints the table and writes the JSON keys."""
    out = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--no-profile", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # A hang guard, not a speed check: it also starts PostgreSQL and, when found, Haraka.
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "full msg/s" in done.stdout
    report = json.loads(out.read_text())
    for key in (
        "intake_ratio_50",
        "p99_accept_ms_50",
        "relay_ratio",
        "rss_growth_10mb_ratio",
        "cpu_per_msg_ratio",
    ):
        assert isinstance(report[key], float), key
    # Mailbox sync backfilled every message into an activity, beside mbsync's copy.
    backfill = report["sync_backfill"]
    assert backfill["sync"]["activities"] == backfill["messages"] == backfill["mbsync"]["messages"]
    # Every message the smoke run sent was answered and processed, none left behind.
    for row in report["sessions"]:
        assert row["full"]["accepted"] == row["full"]["messages"]
        assert row["full"]["states"]["unfinished"] == 0
    assert report["relay"]["delivered"] == report["relay"]["messages"]
    # The same phase on PostgreSQL, when its programs are installed (CI installs them).
    if find_bindir() is not None:
        for key in ("intake_ratio_50_postgres", "cpu_per_msg_ratio_postgres"):
            assert isinstance(report[key], float), key
        for row in report["postgres"]["sessions"]:
            assert row["full"]["accepted"] == row["full"]["messages"]
            assert row["full"]["states"]["unfinished"] == 0
    else:
        assert report["intake_ratio_50_postgres"] is None
        assert "PostgreSQL not found" in done.stdout
    # Haraka beside us when one is installed; its SPF check passed every message it queued,
    # asking the bench's DNS server.
    if report["haraka"] is None:
        assert report["haraka_ratio_50"] is None
        assert "Haraka not found: install with `npm install -g Haraka@3.3.4`" in done.stdout
    else:
        assert isinstance(report["haraka_ratio_50"], float)
        queued = sum(row["haraka"]["accepted"] for row in report["haraka"]["sessions"])
        assert report["haraka"]["verdicts"]["spf"] == {"Pass": queued}
        assert report["haraka"]["verdicts"]["dkim"].get("pass", 0) > 0
        assert report["haraka"]["dns_queries"] > 0
