"""Parsing a message: CPU per message of ``parse_message`` and of the parsers it could use.

``python -m bench.parse_speed [--rounds N] [--messages N]`` builds the bench's corpus (10 KB
signed Gmail forwards, one in five with a PDF: ``bench.world.make_messages``) and times, in
alternating rounds so that a busy machine slows each alike, in CPU time of this thread only:

- ``parse_message`` as processing calls it: the MIME bounds, the one parse, the addresses,
  the headers and the body (DESIGN §4);
- its parts: the bounds scan alone (``mimebounds.check``), the ``email`` parse alone
  (``compat32``, as ``parse_message`` does it) and the body and attachments taken from it
  (``extract_body``);
- the ``email`` package's parse with ``policy.default``, for the choice of policy;
- ``fast_mail_parser.parse_email`` (Rust, the mailparse crate), only when it is installed
  (it is not a dependency): it parses and decodes bodies and attachments, the work of the
  ``email`` parse and ``extract_body`` together.

Printed: µs per message for each, the median of the rounds.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Any

from bench.results import table
from bench.world import make_keys, make_messages
from mailledger.config import load_settings
from mailledger.mail import mimebounds
from mailledger.mail.content import extract_body
from mailledger.mail.parsing import _parse_bytes, parse_message

DEFAULT_ROUNDS = 9
DEFAULT_MESSAGES = 200
MESSAGE_BYTES = 10 * 1024


def corpus(count: int) -> list[bytes]:
    """``count`` bench forwards of about 10 KB, one in five with a PDF."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        return [mail.data for mail in make_messages(make_keys(), count, MESSAGE_BYTES, pool)]


def _runs(mails: list[bytes]) -> dict[str, Callable[[bytes], object]]:
    settings = load_settings(environ={})
    depth, parts = settings.capture.max_mime_depth, settings.capture.max_mime_parts
    received_at = datetime.now(UTC)
    compat = [_parse_bytes(raw) for raw in mails]
    compat_by_id = {id(raw): message for raw, message in zip(mails, compat, strict=True)}
    default_parser = BytesParser(policy=policy.default)
    runs: dict[str, Callable[[bytes], object]] = {
        "parse_message (all of it)": lambda raw: parse_message(
            raw, received_at=received_at, max_depth=depth, max_parts=parts
        ),
        "of which: MIME bounds scan": lambda raw: mimebounds.check(
            raw, max_depth=depth, max_parts=parts
        ),
        "of which: email parse, compat32": _parse_bytes,
        "of which: extract_body": lambda raw: extract_body(compat_by_id[id(raw)]),
        "email parse, policy.default": default_parser.parsebytes,
    }
    fast = _fast_mail_parser()
    if fast is not None:
        runs["fast_mail_parser.parse_email"] = fast
    return runs


def _fast_mail_parser() -> Callable[[bytes], object] | None:
    try:
        module = importlib.import_module("fast_mail_parser")
    except ImportError:
        return None
    parse: Callable[[bytes], object] = module.parse_email
    return parse


def measure(rounds: int = DEFAULT_ROUNDS, messages: int = DEFAULT_MESSAGES) -> dict[str, Any]:
    """µs per message of each run, the median of ``rounds`` alternating rounds."""
    mails = corpus(messages)
    runs = _runs(mails)
    seen: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.thread_time()
            for raw in mails:
                run(raw)
            seen[name].append((time.thread_time() - started) / len(mails) * 1e6)
    average = sum(map(len, mails)) / len(mails)
    return {
        "rounds": rounds,
        "messages": len(mails),
        "average_bytes": round(average),
        "us_per_message": {name: round(statistics.median(v), 1) for name, v in seen.items()},
    }


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.parse_speed")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    args = parser.parse_args()
    result = measure(args.rounds, args.messages)
    print(
        f"Parsing {result['messages']} forwards of {result['average_bytes']} bytes on average, "
        f"one in five with a PDF (median of {result['rounds']} rounds):"
    )
    rows = [[name, us] for name, us in result["us_per_message"].items()]
    print(table(rows, ["CPU per message", "µs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
