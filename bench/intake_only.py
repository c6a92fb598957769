"""The capture listener and durable intake alone, against the bare aiosmtpd listener.

``python -m bench.intake_only`` runs the server as ``make bench`` does, with processing in a
process of its own (``[processing] worker_processes = 1``), and charges the server only the
CPU of its own process (every thread, not the processing child) and of its listener processes
(``--listener-processes``, ``[service] listener_processes``): that is the listeners, the intake
writers and the idle periodic passes. The bare server gets the same load in the same
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
from bench.procstat import process_cpu_seconds, tree
from bench.results import ms, percentile, table
from bench.servers import READY_TIMEOUT_SECONDS, bare_server, write_full_config
from bench.world import GMAIL_IP, HOSTNAME, RICHARD_CAPTURE, make_keys, make_messages, publish, seed
from mailledger.service.listeners import PROCESS_TITLE
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.ports import free_port
from mailledger.testing.servers import ServerProcess
from mailledger.testing.tls import write_self_signed

KB = 1024


def _listeners(pid: int) -> list[int]:
    """The server process and its listener processes (not the processing processes)."""
    found = [pid]
    for child in tree(pid)[1:]:
        try:
            name = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if name == PROCESS_TITLE.decode():
            found.append(child)
    return found


def _wait_for_listeners(pid: int, count: int) -> None:
    """Until the server and its listener processes (``count`` in all) are up."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while len(_listeners(pid)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} listener processes did not start")
        time.sleep(0.1)
    time.sleep(1.0)  # accepting, not just started


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_seconds(pid)
        except OSError:
            continue
    return total


def _round(port: int, pid: int, work: list[tuple[str, bytes]], sessions: int) -> dict[str, Any]:
    pids = _listeners(pid)
    cpu0 = _cpu(pids)
    load = asyncio.run(run_load(port, RICHARD_CAPTURE, list(work), sessions, GMAIL_IP))
    cpu = _cpu(pids) - cpu0
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
    parser.add_argument(
        "--listener-processes",
        type=int,
        default=None,
        help="[service] listener_processes for the full server (default: the config's)",
    )

    return parser.parse_args()


def _full_server(config: Path, port: int, log: Path, args: argparse.Namespace) -> ServerProcess:
    """``bench.servers.full_server``, with ``--listener-processes`` when given."""
    env = {}
    if args.listener_processes is not None:
        env["MAILLEDGER_SERVICE__LISTENER_PROCESSES"] = str(args.listener_processes)
    return ServerProcess.for_config(
        config,
        port=port,
        log=log,
        name="full server",
        ready_timeout_seconds=READY_TIMEOUT_SECONDS,
        env=env,
    )


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
        seed(f"sqlite:///{work_dir / 'mailledger.db'}", work_dir / "secret.key", dns)
        config = write_full_config(work_dir, dns, ports, cert, key)
        # Distinct messages in every round: the blob store keeps identical bytes only once.
        mails = make_messages(keys, args.messages * args.rounds, args.size, pool)
        rounds = [
            prepare(mails[n * args.messages : (n + 1) * args.messages]) for n in range(args.rounds)
        ]
        results: dict[str, list[dict[str, Any]]] = {"bare": [], "full": []}
        with (
            bare_server(ports["bare"], work_dir / "bare.log") as bare,
            _full_server(config, ports["capture"], work_dir / "server.log", args) as full,
        ):
            _wait_for_listeners(full.pid, args.listener_processes or 1)
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
