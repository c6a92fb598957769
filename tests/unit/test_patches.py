"""Library patches are installed by entry points at start-up, never by importing our modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

IMPORT_EVERYTHING = textwrap.dedent(
    """
    import authres.core, dkim, dkim.crypto, spf
    def seams():
        return (dkim.crypto.int2str, dkim.RSASSA_PKCS1_v1_5_sign,
                dkim.RSASSA_PKCS1_v1_5_verify, spf.DNSLookup,
                authres.core.AuthenticationResultsHeader._parse_pattern)
    before = seams()
    import mailledger.service.server, mailledger.cli.main, mailledger.capture.worker
    import mailledger.domains.signing, mailledger.verify.signatures, mailledger.relay.worker
    after_import = seams()
    from mailledger.verify.patches import install_patches
    install_patches()
    installed = seams()
    print(before == after_import, all(a is not b for a, b in zip(before, installed)))
    """
)


def test_importing_changes_no_library_and_install_patches_does() -> None:
    """Importing every layer changes no library; install_patches replaces every seam."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "True"]


def test_spf_check_without_the_hook_is_refused() -> None:
    """An SPF check in a process that skipped install_patches fails loudly, not via pyspf's DNS."""
    script = textwrap.dedent(
        """
        from mailledger.dnsauth.resolver import Resolver
        try:
            Resolver().spf_check("192.0.2.1", "a@example.com", "example.com")
        except RuntimeError as exc:
            print("refused:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("refused: pyspf's DNS hook is not installed")
