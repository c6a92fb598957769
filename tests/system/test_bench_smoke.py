"""The benchmark harness runs end to end with tiny counts (figures themselves are unchecked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
        timeout=120,
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
