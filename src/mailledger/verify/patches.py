"""The library internals we replace, installed once at start-up by every entry point.

Three libraries are changed in place, never as a side effect of importing one of our modules:

- dkimpy (``verify.dkimfast``): byte/integer conversions, RSA signing and RSA verification
  through C and OpenSSL, relaxed header canonicalization computed once per field, each key
  record read once, and the signed fields chosen without lowering names again and again.
  Same results (verification: the same verdicts, checked against dkimpy's own), less CPU.
- authres (``verify.authresfast``): its header parser compiles each grammar pattern once and
  skips the white-space loop where there is none; the same results, a fifth of the time.
- pyspf (``dnsauth.resolver``): every DNS lookup of an SPF check goes through our resolver, so
  configured name servers, time budgets and the cache apply (pyspf has no resolver parameter).

The entry points call :func:`install_patches` before anything runs: the ``mailledger``
command (``cli.main``), ``python -m mailledger.service.server``, each processing process
(``capture.workerpool``), and the test suite's conftest. pyproject.toml bounds the versions
of these libraries (and aiosmtpd, whose SMTP class we subclass) to the ones this was read on.
"""

from __future__ import annotations

from mailledger.dnsauth.resolver import install_spf_lookup
from mailledger.verify import authresfast, dkimfast


def install_patches() -> None:
    """Install dkimpy's and authres's fast paths and pyspf's DNS hook (idempotent)."""
    dkimfast.install()
    authresfast.install()
    install_spf_lookup()
