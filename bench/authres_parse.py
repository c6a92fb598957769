"""Reading an Authentication-Results header: authres's own parser beside ours, in one run.

``python -m bench.authres_parse [--rounds N] [--count N]`` times, in alternating rounds so a
busy machine slows both alike, the CPU of ``authres.AuthenticationResultsHeader.parse`` on
three headers as providers write them (Gmail's, Exchange Online's and a short one, as a
mailbox server stamps mail it receives): first with authres's own ``_parse_pattern`` and
``_parse_rfc5322_cfws``, then with ``verify.authresfast``'s, which processing installs. Mail
read by mailbox sync is judged on such a header; so is a tenant's gateway's mail.

Printed: µs per header for each, the median of the rounds, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import authres
import authres.core

from mailledger.verify import authresfast

HEADERS = [
    "Authentication-Results: mx.google.com;\r\n"
    "       dkim=pass header.i=@client.example header.s=s1 header.b=AbCdEf12;\r\n"
    "       spf=pass (google.com: domain of bob@client.example designates 192.0.2.1 as "
    "permitted sender) smtp.mailfrom=bob@client.example;\r\n"
    "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=client.example",
    # Exchange Online writes no authserv-id: read, as sync reads it, under a stand-in one.
    "Authentication-Results: protection.outlook.com; spf=pass (sender IP is 40.107.1.1)"
    " smtp.mailfrom=client.example; dkim=pass (signature was verified)"
    " header.d=client.example;dmarc=pass action=none"
    " header.from=client.example;compauth=pass reason=100",
    "Authentication-Results: mail.acme.com; dkim=pass header.d=client.example;"
    " dmarc=pass header.from=client.example",
]
DEFAULT_ROUNDS = 9
DEFAULT_COUNT = 300


def _parse_all() -> None:
    for header in HEADERS:
        authres.AuthenticationResultsHeader.parse(header)


def _cpu_per_header(run: Callable[[], None], count: int) -> float:
    started = time.thread_time()
    for _ in range(count):
        run()
    return (time.thread_time() - started) / (count * len(HEADERS))


def _with(parse_pattern: object, cfws: object) -> None:
    header = authres.core.AuthenticationResultsHeader
    header._parse_pattern = parse_pattern
    header._parse_rfc5322_cfws = cfws


def measure(rounds: int = DEFAULT_ROUNDS, count: int = DEFAULT_COUNT) -> dict[str, float]:
    """Median µs per header with authres's own methods and with ours."""
    own_pattern, own_cfws = authresfast.originals()
    theirs: list[float] = []
    ours: list[float] = []
    try:
        for _ in range(rounds):
            _with(own_pattern, own_cfws)
            theirs.append(_cpu_per_header(_parse_all, count))
            _with(authresfast.parse_pattern, authresfast.parse_cfws)
            ours.append(_cpu_per_header(_parse_all, count))
    finally:
        authresfast.install()
    return {
        "authres_us": round(statistics.median(theirs) * 1e6, 1),
        "ours_us": round(statistics.median(ours) * 1e6, 1),
    }


def render(out: dict[str, float], rounds: int) -> str:
    """One line: both parsers' CPU per header and their ratio."""
    return (
        f"Authentication-Results parse, CPU per header (median of {rounds} rounds): "
        f"authres's own {out['authres_us']} µs, with verify.authresfast {out['ours_us']} µs "
        f"({out['authres_us'] / out['ours_us']:.1f} times faster)"
    )


def main() -> int:
    """Run the measurement and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.authres_parse")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    args = parser.parse_args()
    print(render(measure(args.rounds, args.count), args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
