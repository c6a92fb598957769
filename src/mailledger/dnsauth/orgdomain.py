"""Organizational domains for DMARC alignment (RFC 7489 §3.2).

The Public Suffix List comes bundled with the ``publicsuffixlist`` package, so the answer
never depends on fetching anything at run time, and is the same on every node.
"""

from __future__ import annotations

from functools import lru_cache

from publicsuffixlist import PublicSuffixList


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # Parsing the list takes a noticeable moment; one instance serves the whole process.
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The organizational domain of ``domain``: its public suffix plus one label.

    RFC 7489 §3.2: lowercase and strip the trailing dot; if the name is itself a public
    suffix (or shorter), the name is its own organizational domain. Names under a suffix the
    list doesn't know (``example.test``) fall back to the list's default rule ``*``.
    """
    name = domain.strip().rstrip(".").lower()
    if not name:
        return name
    private = _psl().privatesuffix(name)
    return private if private else name
