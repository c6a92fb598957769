"""The capture listener and durable intake alone, against the bare aiosmtpd listener.

``python -m bench.intake_only`` runs the server as ``make bench`` does, with processing in a
process of its own (``[processing] worker_processes = 1``), and charges the server only the
CPU of its own process (every thread, not the processing child): that is the listener, the
intake writer and the idle periodic passes. The bare server gets the same load in the same
run, in alternating rounds, so a busy machine slows both alike. Printed: CPU ms per message
and end of DATA → 250 p50/p99 for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.load import prepare, run_load
from bench.procstat import process_cpu_seconds
from bench.results import ms, percentile, table
from bench.servers import bare_server, full_server, write_full_config
from bench.world import GMAIL_IP, HOSTNAME, RICHARD_CAPTURE, make_keys, make_messages, publish, seed
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.ports import free_port
from mailledger.testing.tls import write_self_signed

KB = 1024


def _round(port: int, pid: int, work: list[tuple[str, bytes]], sessions: int) -> dict[str, Any]:
    cpu0 = process_cpu_seconds(pid)
    load = asyncio.run(run_load(port, RICHARD_CAPTURE, list(work), sessions, GMAIL_IP))
    cpu = process_cpu_seconds(pid) - cpu0
    accepted = load.accepted
    if len(accepted) != len(work):
        raise RuntimeError(f"only {len(accepted)} of {len(work)} accepted")
    return {
        "cpu_ms_per_msg": cpu / len(work) * 1000,
        "msgs_per_s": len(work) / load.seconds,
        "accept": [s.data_to_reply for s in accepted],
    }


def _spy(pid: int, out: Path, *, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy sampling the server process only (not the processing child), until SIGINT.

    With ``gil`` only the thread holding the GIL is sampled: Python's CPU, not its waits.
    """
    spy = Path(sys.executable).with_name("py-spy")
    extra = ["--gil"] if gil else []
    argv = [str(spy), "record", "--rate", "250", "--format", "raw", "-o", str(out), *extra]
    proc = subprocess.Popen([*argv, "--pid", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the first round
    return proc


def _summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    accept = [x for r in rounds for x in r["accept"]]
    cpu = sorted(r["cpu_ms_per_msg"] for r in rounds)
    return {
        "cpu_ms_per_msg": round(percentile(cpu, 50), 3),
        "msgs_per_s": round(sum(r["msgs_per_s"] for r in rounds) / len(rounds), 1),
        **{f"accept_{k}_ms": v for k, v in ms(accept).items()},
    }


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.intake_only")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=600, help="per round")
    parser.add_argument("--size", type=int, default=10 * KB, help="message bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile", type=Path, help="also record the server process with py-spy (raw stacks)"
    )
    parser.add_argument("--gil", action="store_true", help="profile only the GIL holder")
    return parser.parse_args()


def main() -> int:
    """Alternate bare and full rounds; print CPU per message and time to 250 for both."""
    args = _args()
    with (
        tempfile.TemporaryDirectory(prefix="mailledger-intake-") as tmp,
        DNSServer() as dns,
        ProcessPoolExecutor(2) as pool,
    ):
        work_dir = Path(tmp)
        keys = make_keys()
        publish(dns, keys)
        ports = {name: free_port() for name in ("capture", "submission", "mx", "metrics", "bare")}
        cert, key = write_self_signed(HOSTNAME, work_dir / "tls")
        seed(f"sqlite:///{work_dir / 'mailledger.db'}", work_dir / "dkim", dns)
        config = write_full_config(work_dir, dns, ports, cert, key)
        # Distinct messages in every round: the blob store keeps identical bytes only once.
        mails = make_messages(keys, args.messages * args.rounds, args.size, pool)
        rounds = [
            prepare(mails[n * args.messages : (n + 1) * args.messages]) for n in range(args.rounds)
        ]
        results: dict[str, list[dict[str, Any]]] = {"bare": [], "full": []}
        with (
            bare_server(ports["bare"], work_dir / "bare.log") as bare,
            full_server(config, ports["capture"], work_dir / "server.log") as full,
        ):
            spy = _spy(full.pid, args.profile, gil=args.gil) if args.profile else None
            for n, work in enumerate(rounds):
                for name, port, pid in (
                    ("bare", ports["bare"], bare.pid),
                    ("full", ports["capture"], full.pid),
                ):
                    got = _round(port, pid, work, args.sessions)
                    results[name].append(got)
                    print(
                        f"  round {n + 1} {name}: {got['cpu_ms_per_msg']:.3f} CPU ms/msg, "
                        f"{got['msgs_per_s']:.1f} msg/s",
                        flush=True,
                    )
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
    bare_s, full_s = _summary(results["bare"]), _summary(results["full"])
    header = ["server", "CPU ms/msg (median round)", "250/s", "250 ms p50", "p95", "p99"]
    columns = ("cpu_ms_per_msg", "msgs_per_s", "accept_p50_ms", "accept_p95_ms", "accept_p99_ms")
    rows = [
        [name, *(s[k] for k in columns)]
        for name, s in (("bare aiosmtpd", bare_s), ("listener+intake", full_s))
    ]
    print(
        f"\n{args.sessions} sessions, {args.size // KB} KB, {args.messages} messages x "
        f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}"
    )
    print(table([[str(c) for c in r] for r in rows], header))
    print(
        "CPU ratio listener+intake / bare: "
        f"{full_s['cpu_ms_per_msg'] / bare_s['cpu_ms_per_msg']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
