"""A self-signed certificate and a server TLS context for tests (STARTTLS, implicit TLS).

Generated with ``cryptography`` in-process (no ``openssl`` binary needed): an ECDSA P-256 key,
fast to make, with the hostname and 127.0.0.1 as subject alternative names. Clients that
verify certificates will refuse it unless they load ``cert_path`` as their CA; opportunistic
TLS (RFC 7435) and most tests don't verify at all.
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_self_signed(hostname: str, directory: str | Path) -> tuple[Path, Path]:
    """Write ``<hostname>.crt`` and ``<hostname>.key`` (PEM) into ``directory``; return both."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(hostname),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / f"{hostname}.crt"
    key_path = folder / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def self_signed_context(
    hostname: str, directory: str | Path | None = None
) -> tuple[ssl.SSLContext, Path, Path]:
    """A server-side TLS context with a fresh self-signed certificate for ``hostname``.

    Returns ``(server_context, cert_path, key_path)``; the files are in ``directory`` (a new
    temporary directory when none is given), so a server under test can also be configured
    with them through ``[tls] cert_file``/``key_file``, and a client can trust ``cert_path``.
    """
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="tls-"))
    cert_path, key_path = write_self_signed(hostname, folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path, key_path


def trusting_client_context(cert_path: str | Path) -> ssl.SSLContext:
    """A client context that verifies the server against exactly this certificate."""
    return ssl.create_default_context(cafile=str(cert_path))
