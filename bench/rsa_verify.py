"""RSA verification: dkimpy's pure Python against OpenSSL (``verify.dkimfast``), in one run.

``python -m bench.rsa_verify [--rounds N]`` measures, in alternating rounds so that a busy
machine slows both alike, and in CPU time of the measuring thread only:

- one RSASSA-PKCS1-v1_5 SHA-256 verification with a 1024-, 2048- and 4096-bit key, through
  dkimpy's own ``RSASSA_PKCS1_v1_5_verify`` and through ``dkimfast.rsa_verify``;
- the whole authentication of a 10 KB Gmail forward (``Authenticator.check``: SPF, DKIM, ARC,
  DMARC; keys and policies from the test DNS server on loopback, cached after the first
  message), which verifies three RSA-2048 signatures: the author's DKIM signature and Google's
  ARC seal and ARC message signature. The same messages go through with dkimpy's verifier in
  its seam, then with ours; everything else (our canonicalization, body hashes) is the same.

Printed: µs per verification and ms per message for each, and dkimpy's time ÷ ours.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import dkim
import dkim.crypto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.results import table
from bench.world import GMAIL_IP, HELO, RICHARD_CAPTURE, RICHARD_GMAIL, make_keys, publish
from mailledger.config import load_settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import dkim_sign, gmail_forward
from mailledger.testing.mail import make_email
from mailledger.verify import dkimfast
from mailledger.verify.authenticate import Authenticator
from mailledger.verify.patches import install_patches
from mailledger.verify.results import PASS

Verify = Callable[[Any, bytes, dict[str, int]], bool]
DEFAULT_ROUNDS = 15
KEY_BITS = (1024, 2048, 4096)
CALLS = {1024: 400, 2048: 200, 4096: 60}  # verifications per round and verifier
MESSAGES = 20  # forwards per round and verifier
FROM_DOMAIN = "client.example"  # make_email's sender, Carol


def _verifiers() -> dict[str, Verify]:
    original: Verify = dkimfast.original_verify()  # type: ignore[assignment]
    return {"dkimpy": original, "openssl": dkimfast.rsa_verify}


def _alternating(rounds: int, runs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each run once per round, in turn; the median of its rounds' figures."""
    seen: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            seen[name].append(run())
    return {name: statistics.median(values) for name, values in seen.items()}


def _per_signature(bits: int, rounds: int) -> dict[str, float]:
    """µs per verification of one valid signature, each verifier."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = private.public_key().public_numbers()
    public = {"modulus": numbers.n, "publicExponent": numbers.e}
    digest = dkim.HashThrough(hashlib.sha256(b"a header section" * 40))
    signature = dkimfast.rsa_sign(digest, dkim.crypto.parse_private_key(_der(private)))
    calls = CALLS[bits]

    def run(verify: Verify) -> Callable[[], float]:
        def timed() -> float:
            started = time.thread_time()
            for _ in range(calls):
                if not verify(digest, signature, public):
                    raise RuntimeError("the benchmark's signature did not verify")
            return (time.thread_time() - started) / calls * 1e6

        return timed

    return _alternating(rounds, {name: run(v) for name, v in _verifiers().items()})


def _der(private: rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _forwards(count: int) -> tuple[Authenticator, list[tuple[str, bytes]], DNSServer]:
    """A started DNS server, an authenticator using it, and ``count`` 10 KB Gmail forwards."""
    keys = make_keys()
    dns = DNSServer().start()
    publish(dns, keys)
    settings = load_settings(environ={})
    authenticator = Authenticator(Resolver(dns.settings(timeout_seconds=2.0)), settings)
    line = "Please find the quantities and delivery dates for the spring order below.\r\n"
    mails = []
    for index in range(count):
        original = make_email(subject=f"Quote {index}", body=line * (10 * 1024 // len(line)))
        signed = dkim_sign(original, keys.client_rsa)
        mails.append(gmail_forward(signed, RICHARD_GMAIL, RICHARD_CAPTURE, keys.google))
    return authenticator, mails, dns


def _per_forward(rounds: int) -> dict[str, float]:
    """ms per whole authentication of a Gmail forward, each verifier in dkimpy's seam."""
    authenticator, mails, dns = _forwards(MESSAGES)
    before = dkim.RSASSA_PKCS1_v1_5_verify

    def check(envelope: str, data: bytes) -> None:
        outcome = authenticator.check(
            data, peer=f"{GMAIL_IP}:41000", helo=HELO, mail_from=envelope, from_domain=FROM_DOMAIN
        )
        if outcome.dkim[0].result != PASS or outcome.arc.result != PASS:
            raise RuntimeError(f"the benchmark's forward did not verify: {outcome}")

    def run(verify: Verify) -> Callable[[], float]:
        def timed() -> float:
            dkim.RSASSA_PKCS1_v1_5_verify = verify
            try:
                started = time.thread_time()
                for envelope, data in mails:
                    check(envelope, data)
                return (time.thread_time() - started) / len(mails) * 1e3
            finally:
                dkim.RSASSA_PKCS1_v1_5_verify = before

        return timed

    try:
        check(*mails[0])  # fills the resolver's cache: DNS is not what is measured
        return _alternating(rounds, {name: run(v) for name, v in _verifiers().items()})
    finally:
        dns.stop()


def measure(rounds: int = DEFAULT_ROUNDS) -> dict[str, Any]:
    """Both verifiers, per signature and per Gmail forward, with dkimpy's time ÷ ours."""
    install_patches()  # as the server runs; only the RSA seam differs between the two
    out: dict[str, Any] = {"rounds": rounds, "signature_us": {}, "forward_ms": {}}
    for bits in KEY_BITS:
        figures = _per_signature(bits, rounds)
        figures["ratio"] = round(figures["dkimpy"] / figures["openssl"], 1)
        out["signature_us"][f"rsa{bits}"] = {k: round(v, 1) for k, v in figures.items()}
    forward = _per_forward(rounds)
    out["forward_ms"] = {k: round(v, 3) for k, v in forward.items()}
    out["forward_ms"]["ratio"] = round(forward["dkimpy"] / forward["openssl"], 2)
    return out


def render(result: dict[str, Any]) -> str:
    """A table of both verifiers and their ratio."""
    rows = [
        [f"one RSA-{name[3:]} SHA-256 verification (µs)", f["dkimpy"], f["openssl"], f["ratio"]]
        for name, f in result["signature_us"].items()
    ]
    forward = result["forward_ms"]
    rows.append(
        [
            "Gmail forward, all checks, 3 RSA-2048 (ms)",
            forward["dkimpy"],
            forward["openssl"],
            forward["ratio"],
        ]
    )
    header = ["CPU per", "dkimpy (Python)", "ours (OpenSSL)", "dkimpy ÷ ours"]
    return table(rows, header)


def main() -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.rsa_verify")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()
    result = measure(args.rounds)
    print(f"RSA verification, dkimpy against OpenSSL (median of {args.rounds} rounds):")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
