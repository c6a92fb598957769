"""Mailbox sync backfill rate: messages/s and CPU per message, beside mbsync, in one run.

``python -m bench.sync_backfill [--messages N]`` fills a Dovecot mailbox (Debian's
dovecot-imapd, on loopback) with N messages of about 10 KB, then

- ``mbsync`` (Debian's isync) copies the mailbox to a Maildir: the reference, a C program
  that only copies;
- our engine backfills the same mailbox (``sync.passes``: batched FETCH, blobs fsynced, the
  intake rows committed per batch) and the capture worker records every message as an
  activity through the whole pipeline (parse, verdicts, matching, dedupe, record).

The rate of each is N over its wall time; CPU per message is the process's own CPU time
(mbsync's, or this process's) over N; Dovecot's CPU is in neither. Two ratios are printed,
ours over mbsync's: with every activity recorded (fetch, then the capture worker), and the
fetch into the store alone (what sync adds before the shared processing pipeline).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from mailledger.cli.demo import seed_demo
from mailledger.config import load_settings
from mailledger.logs import configure_logging
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base
from mailledger.store.secretbox import ensure_key_file
from mailledger.testing.dovecot import Dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.syncing import activity_count, add_account, process_received, syncer

MBSYNC = "/usr/bin/mbsync"
USER = "bench@mail.test.example"
PASSWORD = "bench password"
DEFAULT_MESSAGES = 2000
BODY_BYTES = 10 * 1024


def _message(n: int) -> bytes:
    """About 10 KB from a client, with the provider's verdicts on top (so it is recorded)."""
    line = f"Line {n:06d} of the order details, quantities and delivery dates.\r\n"
    body = line * (BODY_BYTES // len(line))
    results = (
        b"Authentication-Results: mx.provider.example; dkim=pass header.d=client.example;"
        b" dmarc=pass header.from=client.example\r\n"
    )
    return results + make_email(
        subject=f"Order {n}", message_id=f"order-{n}@client.example", body=body
    )


def _mbsync(server: Dovecot, work: Path) -> dict[str, Any]:
    """mbsync copying INBOX to a Maildir: wall time and its own CPU."""
    maildir = work / "mbsync-maildir"
    maildir.mkdir()
    config = work / "mbsyncrc"
    config.write_text(
        f"IMAPAccount bench\nHost {server.host}\nPort {server.port}\nUser {USER}\n"
        f'Pass "{PASSWORD}"\nSSLType None\nAuthMechs LOGIN\n\n'
        "IMAPStore remote\nAccount bench\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\n\n"
        "Channel copy\nFar :remote:\nNear :local:\nPatterns INBOX\nSync Pull\nCreate Near\n"
        f"SyncState {work}/mbsync-state/\n",
        encoding="utf-8",
    )
    (work / "mbsync-state").mkdir()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([MBSYNC, "-q", "-c", str(config), "-a"], check=True, timeout=3600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    copied = sum(1 for sub in ("new", "cur") for _ in (maildir / "INBOX" / sub).iterdir())
    return {"seconds": wall, "cpu_seconds": cpu, "messages": copied}


def _ours(server: Dovecot, work: Path, messages: int) -> dict[str, Any]:
    """Our backfill and processing into activities: wall time and this process's CPU."""
    database = f"sqlite:///{work / 'sync.db'}"
    env = {
        "MAILLEDGER_DATABASE__URL": database,
        "MAILLEDGER_STORAGE__BLOB_DIR": str(work / "blobs"),
        "MAILLEDGER_SECRETS__KEY_FILE": str(work / "secret.key"),
        "MAILLEDGER_DNS__NAMESERVERS": '["127.0.0.1:9"]',
        "MAILLEDGER_LOGGING__LEVEL": '"warning"',
    }
    settings = load_settings(None, env)
    configure_logging(settings.logging)
    ensure_key_file(settings.secrets.key_file)
    engine = make_engine(database)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    blobs = BlobStore(settings.storage.blob_dir)
    with sessions.begin() as session:
        seed_demo(session)
    account = add_account(sessions, settings, server, USER)
    cpu_before = time.process_time()
    started = time.perf_counter()
    result = syncer(sessions, blobs, settings, server).run(account)
    fetched_at = time.perf_counter()
    process_received(sessions, blobs, settings)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    recorded = activity_count(sessions)
    engine.dispose()
    if result.problem is not None:
        raise RuntimeError(f"the backfill failed: {result.problem}")
    return {
        "seconds": wall,
        "fetch_seconds": fetched_at - started,
        "cpu_seconds": cpu,
        "messages": result.fetched,
        "activities": recorded,
    }


def measure(work: Path, messages: int = DEFAULT_MESSAGES) -> dict[str, Any]:
    """Both backfills of one mailbox of ``messages`` messages; the figures and the ratio."""
    work.mkdir(parents=True, exist_ok=True)
    with Dovecot() as server:
        server.add_user(USER, PASSWORD)
        server.append_many(USER, "INBOX", (_message(n) for n in range(messages)))
        reference = _mbsync(server, work)
        ours = _ours(server, work, messages)
    out: dict[str, Any] = {"messages": messages}
    for name, run in (("mbsync", reference), ("sync", ours)):
        out[name] = run | {
            "msgs_per_s": round(messages / run["seconds"], 1) if run["seconds"] else None,
            "cpu_ms_per_msg": round(run["cpu_seconds"] * 1000 / messages, 3),
        }
    fetch = out["sync"]["fetch_seconds"]
    out["sync"]["fetch_msgs_per_s"] = round(messages / fetch, 1) if fetch else None
    out["fetch_ratio"] = (
        round(out["sync"]["fetch_msgs_per_s"] / out["mbsync"]["msgs_per_s"], 3)
        if out["mbsync"]["msgs_per_s"] and out["sync"]["fetch_msgs_per_s"]
        else None
    )
    out["rate_ratio"] = (
        round(out["sync"]["msgs_per_s"] / out["mbsync"]["msgs_per_s"], 3)
        if out["mbsync"]["msgs_per_s"]
        else None
    )
    return out


def render(result: dict[str, Any]) -> str:
    """One line per backfill, and the ratio."""
    mb, ours = result["mbsync"], result["sync"]
    return (
        f"  mbsync: {mb['msgs_per_s']} msgs/s, {mb['cpu_ms_per_msg']} ms CPU/msg "
        f"({mb['messages']} copied)\n"
        f"  sync:   {ours['msgs_per_s']} msgs/s, {ours['cpu_ms_per_msg']} ms CPU/msg "
        f"with every activity recorded ({ours['activities']} activities)\n"
        f"  sync fetch into the store alone: {ours['fetch_msgs_per_s']} msgs/s\n"
        f"  sync / mbsync rate: {result['rate_ratio']} with activities, "
        f"{result['fetch_ratio']} fetch alone"
    )


def main() -> int:
    """Run the measurement and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.sync_backfill")
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    args = parser.parse_args()
    if not Path(MBSYNC).exists():
        print("mbsync is not installed (apt-get install isync)")
        return 2
    with tempfile.TemporaryDirectory(prefix="mailledger-sync-bench-") as tmp:
        result = measure(Path(tmp), args.messages)
    print(f"sync backfill of {args.messages} messages of ~10 KB from Dovecot:")
    print(render(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
