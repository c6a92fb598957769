"""Haraka beside mailledger: the peer a user would otherwise pick, run the way the bench runs us.

Haraka (MIT, Node.js) is a comparison point only, never a dependency, and the bench installs
nothing: it runs the ``haraka`` named by the ``HARAKA`` environment variable or found on
``PATH`` (``npm install -g Haraka@3.3.4``). The configuration written here gives it what the
issue's comparison names: SPF (``spf``), DKIM verification (``dkim``, signing off), and a
queue of ours that writes each message to a file and fsyncs it before the ``250``
(``bench/haraka/plugins/bench_queue.js``). No ARC, no DMARC, no parsing into a database.
``bench_world.js``, loaded first, points node's resolver at the bench's DNS server on loopback
and treats the bench's "Gmail" address as public, so SPF is evaluated as for real mail.
Haraka runs one process per core (``nodes=cpus``), as its performance notes advise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import phase
from bench.world import HOSTNAME, RICHARD_CAPTURE, Mail
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.ports import free_port
from mailledger.testing.servers import ServerProcess

VERSION = "3.3.4"
NOT_FOUND = f"Haraka not found: install with `npm install -g Haraka@{VERSION}`"
PLUGINS = Path(__file__).parent / "haraka" / "plugins"
# Loaded in this order: the world first (DNS, address), then the checks, then delivery.
PLUGIN_ORDER = ("bench_world", "spf", "dkim", "rcpt_to.in_host_list", "bench_queue")
READY_TIMEOUT_SECONDS = 60.0
# One Haraka process per core, as its performance notes advise; mailledger uses every core too.
NODES = "cpus"
_QUEUED = re.compile(r"\[bench_queue\] queued \S+ spf=(\S+) dkim=(\S+)")


def find() -> str | None:
    """The ``haraka`` command: ``$HARAKA`` when set, else the one on ``PATH``."""
    named = os.environ.get("HARAKA")
    if named:
        return named if Path(named).exists() else shutil.which(named)
    return shutil.which("haraka")


def version(command: str) -> str:
    """The version of the Haraka installation ``command`` belongs to, read from its package."""
    package = Path(command).resolve().parent.parent / "package.json"
    match = (
        re.search(r'"version"\s*:\s*"([^"]+)"', package.read_text()) if package.exists() else None
    )
    return match.group(1) if match else "unknown"


def write_config(command: str, root: Path, port: int, dns_address: str) -> Path:
    """A Haraka directory in ``root``: ``haraka -i``'s defaults, then ours; returns ``root``.

    ``dns_address`` is the bench's DNS server (``127.0.0.1:PORT``); messages go to
    ``root/spool``.
    """
    # argv from the caller's Haraka and a path of ours, no shell.
    subprocess.run([command, "-i", str(root)], check=True, capture_output=True)
    config = root / "config"
    shutil.copytree(PLUGINS, root / "plugins", dirs_exist_ok=True)
    files = {
        "smtp.ini": f"listen=127.0.0.1:{port}\nnodes={NODES}\n",
        "plugins": "\n".join(PLUGIN_ORDER) + "\n",
        "me": f"{HOSTNAME}\n",
        "host_list": RICHARD_CAPTURE.split("@", 1)[1] + "\n",
        "databytes": "26214400\n",
        # Haraka's default level; its per-message lines are part of what it costs.
        "log.ini": "[main]\nlevel=info\ntimestamps=false\nformat=default\n",
        "dkim.ini": "[sign]\nenabled=false\n\n[verify]\nenabled=true\n",
        # The defaults, with DNS answers from loopback coming back at once.
        "spf.ini": "[main]\nlookup_timeout=29\ndns_timeout=8\n",
        "bench_world.ini": f"[main]\ndns_server={dns_address}\n",
        "bench_queue.ini": f"[main]\nspool_dir={root / 'spool'}\n",
    }
    for name, text in files.items():
        (config / name).write_text(text, encoding="utf-8")
    return root


def server(command: str, root: Path, port: int, log: Path) -> ServerProcess:
    """Haraka with the directory :func:`write_config` wrote, ready when ``port`` answers."""
    return ServerProcess(
        [command, "-c", str(root)],
        port=port,
        log=log,
        name="Haraka",
        ready_timeout_seconds=READY_TIMEOUT_SECONDS,
    )


def verdicts(log: Path) -> dict[str, dict[str, int]]:
    """How many queued messages got each SPF and DKIM verdict, from Haraka's log.

    The proof that the checks ran: a message queued without them would log ``none``.
    """
    spf: Counter[str] = Counter()
    dkim: Counter[str] = Counter()
    for match in _QUEUED.finditer(log.read_text(encoding="utf-8", errors="replace")):
        spf[match.group(1)] += 1
        dkim[re.sub(r"\(.*", "", match.group(2))] += 1
    return {"spf": dict(spf), "dkim": dict(dkim)}


def measure(
    work: Path,
    dns: DNSServer,
    bare: ServerProcess,
    batches: list[tuple[int, list[Mail]]],
) -> dict[str, Any] | None:
    """Haraka over the session ``batches``, each sent to ``bare`` first, side by side.

    None, after saying how to install it, when no Haraka is found. ``verdicts`` counts the
    SPF and DKIM results Haraka logged for the messages it queued, and ``dns_queries`` the
    questions the bench's DNS server answered meanwhile (Haraka's, since only Haraka and the
    bare server run): the proof that its checks ran and asked our DNS server.
    """
    command = find()
    if command is None:
        print(NOT_FOUND, flush=True)
        return None
    started = time.monotonic()
    port = free_port()
    root = write_config(command, work, port, dns.address)
    log = work / "haraka.log"
    asked = len(dns.queries)
    rows = []
    haraka = server(command, root, port, log)
    try:
        # Not a with block: a Haraka that fails to answer must still be stopped.
        haraka.start()
        for sessions, mails in batches:
            ref = phase.measure(bare.port, bare.pid, mails, sessions, None)
            got = phase.measure(port, haraka.pid, mails, sessions, None)
            rows.append({"bare": ref, "haraka": got})
            print(
                f"  {sessions:>2} sessions on Haraka {version(command)}: "
                f"bare {ref['msgs_per_s']}/s, Haraka {got['msgs_per_s']}/s",
                flush=True,
            )
    finally:
        if haraka.running:
            haraka.stop()
    return {
        "version": version(command),
        "nodes": NODES,
        "sessions": rows,
        "verdicts": verdicts(log),
        "dns_queries": len(dns.queries) - asked,
        "seconds": round(time.monotonic() - started, 1),
    }
