"""SPF verdicts kept for as long as every DNS answer they were computed from is still cached.

pyspf computes check_host() (RFC 7208 §4) in Python from the sender's record and every record
it includes: about a fifth of a forward's sender checks, redone for each message although
the same forwarder sends from the same address and IP again and again. Its result is a
function of the check's inputs (IP, sender, HELO, receiver, strictness) and of the DNS
answers it was given, nothing else: except the ``%{t}`` macro (the time of the check),
which only an explanation can use, and then the verdict is not kept.

So a verdict is kept with the answers it used, each the resolver's cached answer object.
It is given again only while looking each of them up in the resolver's cache gives the very
same object: an expired answer, a cleared cache or a new answer makes it computed afresh,
and so asks DNS exactly as a check without this would. Nothing else is spent either: a
check whose answers are all cached asks no question, so the message's DNS budget is the
same. Temporary errors, checks that ran out of DNS budget and checks that saw an uncached
answer are never kept.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mailledger.dnsauth.lru import LockedLRU

DEFAULT_SPF_VERDICTS = 1024  # (IP, sender, HELO) combinations remembered
# The macro that expands to the time of the check (RFC 7208 §7.3): a record with it is not
# a function of its DNS answers alone.
_TIME_MACRO = b"%{t"

SPFKey = tuple[str, str, str, str | None, object]  # ip, sender, helo, receiver, strict
# (name, type) as pyspf asked, and the answer object the resolver gave.
Answer = tuple[str, str, object]


@dataclass(frozen=True, slots=True)
class _Kept:
    verdict: tuple[str, str]
    answers: tuple[Answer, ...]


class _Recording:
    """The answers one check was given; ``keepable`` is False once one must not be reused."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.keepable = True


_recording: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar(
    "mailledger_spf_recording", default=None
)


def record_answer(name: str, qtype: str, answer: object, texts: Iterator[bytes]) -> None:
    """Note an answer given to pyspf in the check being recorded (if any)."""
    recording = _recording.get()
    if recording is None:
        return
    recording.answers.append((name, qtype, answer))
    if any(_TIME_MACRO in text.lower() for text in texts):
        recording.keepable = False


def record_unkeepable() -> None:
    """The check being recorded met something its verdict must not be reused after."""
    recording = _recording.get()
    if recording is not None:
        recording.keepable = False


class SPFVerdicts:
    """A bounded LRU of SPF verdicts, each valid while its answers are the cached ones."""

    def __init__(self, max_entries: int = DEFAULT_SPF_VERDICTS) -> None:
        self._kept: LockedLRU[SPFKey, _Kept] = LockedLRU(max_entries)

    def get(self, key: SPFKey, current: Callable[[str, str], object]) -> tuple[str, str] | None:
        """The kept verdict, if ``current(name, type)`` still gives each answer it used."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        if all(current(name, qtype) is answer for name, qtype, answer in kept.answers):
            return kept.verdict
        return None

    @contextmanager
    def recording(self, key: SPFKey) -> Iterator[Callable[[tuple[str, str], bool], None]]:
        """Record the answers of the check run inside; the check hands its verdict to ``keep``.

        ``keep(verdict, final)``: ``final`` False (a temporary error) keeps nothing.
        """
        recording = _Recording()
        token = _recording.set(recording)

        def keep(verdict: tuple[str, str], final: bool) -> None:
            if final and recording.keepable:
                self._kept.put(key, _Kept(verdict, tuple(recording.answers)))

        try:
            yield keep
        finally:
            _recording.reset(token)

    def clear(self) -> None:
        """Forget every verdict."""
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)
