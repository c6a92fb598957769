"""The shipped list of free-mail domains (``mailledger/data/freemail.txt``).

Anyone can have an address at these, so such a domain says nothing about which company a
sender works for (DESIGN §5): matching never maps one to a company, and the directory refuses
to give one to a company.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def free_mail_domains() -> frozenset[str]:
    """Every domain on the shipped list, lowercased."""
    text = resources.files("mailledger").joinpath("data/freemail.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )
