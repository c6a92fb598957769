"""SPF records as text to edit: their terms, our include merged in, and their lookup cost.

pyspf answers "does this address pass?"; a DNS admin also needs to know why a record is
broken and what to publish instead, which needs the record's terms and the DNS lookups each
one costs through nested includes (RFC 7208 §4.6.4). That is this module.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from mailledger.dnsauth.resolver import DNSResult, Resolver

# RFC 7208 §4.6.4: at most 10 terms that cause DNS queries, and at most 2 "void" lookups
# (NXDOMAIN or an empty answer), counted over the whole evaluation, nested includes too.
MAX_LOOKUPS: Final = 10
MAX_VOID_LOOKUPS: Final = 2
MAX_DEPTH: Final = 20
_LOOKUP_MECHANISMS: Final = frozenset({"include", "a", "mx", "ptr", "exists"})
_MECHANISMS: Final = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_TERM_RE: Final = re.compile(r"^([+\-~?]?)([a-z][a-z0-9_.\-]*)(?:([:=/])(.*))?$", re.IGNORECASE)


class SpfSyntaxError(ValueError):
    """A record pyspf would call permerror for its syntax (RFC 7208 §4.6)."""


@dataclass(frozen=True, slots=True)
class Term:
    """One mechanism (``~all``, ``include:x``) or modifier (``redirect=x``) of a record."""

    text: str
    qualifier: str
    name: str
    argument: str = ""
    modifier: bool = False

    @property
    def domain(self) -> str:
        """The domain-spec of include/a/mx/exists/redirect, without any CIDR length."""
        return self.argument.split("/", 1)[0].lower().rstrip(".")


def is_spf(text: str) -> bool:
    """RFC 7208 §4.5: an SPF record starts with exactly ``v=spf1``, then a space or the end."""
    return re.match(r"^v=spf1(\s|$)", text, re.IGNORECASE) is not None


def spf_records(result: DNSResult) -> list[str]:
    """The SPF records among a name's TXT records (RFC 7208 §4.5)."""
    return [t for t in result.texts if is_spf(t)]


def parse_terms(text: str) -> list[Term]:
    """The terms after ``v=spf1``; :class:`SpfSyntaxError` names the first bad one."""
    if not is_spf(text):
        raise SpfSyntaxError("not an SPF record (it must start with v=spf1)")
    terms: list[Term] = []
    for piece in text.split()[1:]:
        match = _TERM_RE.match(piece)
        if match is None:
            raise SpfSyntaxError(f"bad term {piece!r}")
        qualifier, name, sep, argument = match.groups()
        name = name.lower()
        if sep == "=":
            if qualifier:
                raise SpfSyntaxError(f"a modifier takes no qualifier: {piece!r}")
            terms.append(Term(piece, "", name, argument or "", modifier=True))
            continue
        if name not in _MECHANISMS:
            raise SpfSyntaxError(f"unknown mechanism {piece!r}")
        if name in ("include", "exists", "ip4", "ip6") and sep != ":":
            raise SpfSyntaxError(f"{name} needs an argument: {piece!r}")
        arg = (argument or "") if sep == ":" else (f"/{argument}" if sep == "/" else "")
        terms.append(Term(piece, qualifier or "+", name, arg))
    redirects = [t for t in terms if t.modifier and t.name == "redirect"]
    if len(redirects) > 1:
        raise SpfSyntaxError("redirect= appears more than once (RFC 7208 §6)")
    return terms


def _all_term(terms: list[Term]) -> Term | None:
    return next((t for t in terms if not t.modifier and t.name == "all"), None)


def _insert_before_all(terms: list[str], new: list[str]) -> list[str]:
    """Put mechanisms before ``all`` and the modifiers, where they are still evaluated."""
    for index, text in enumerate(terms):
        bare = text.lstrip("+-~?").lower()
        if bare == "all" or "=" in text:
            return [*terms[:index], *new, *terms[index:]]
    return [*terms, *new]


def merged_record(existing: str | None, include_domain: str) -> str:
    """The record to have: the existing one with ``include:`` ours added, else a new one.

    A domain must have one SPF record (RFC 7208 §3.2), so ours is merged in, never added as
    a second record. A new record ends in ``~all``: the domain's other senders are unknown.
    """
    include = f"include:{include_domain}"
    if not existing:
        return f"v=spf1 {include} ~all"
    pieces = existing.split()
    if any(p.lower() in (include.lower(), f"+{include.lower()}") for p in pieces[1:]):
        return " ".join(pieces)
    return " ".join(["v=spf1", *_insert_before_all(pieces[1:], [include])])


def combined_record(records: list[str], include_domain: str) -> str:
    """One record out of several (RFC 7208 §3.2 allows one), with our include in it.

    Records come back from DNS in no fixed order, so they are taken sorted; of their ``all``
    terms the most lenient is kept, so merging never fails mail one of them let pass.
    """
    mechanisms: list[str] = []
    alls: list[str] = []
    modifiers: list[str] = []
    for record in sorted(records):
        for piece in record.split()[1:]:
            bare = piece.lstrip("+-~?").lower()
            if bare == "all":
                alls.append(piece)
            elif "=" in piece:
                name = piece.split("=")[0].lower()
                if not any(m.split("=")[0].lower() == name for m in modifiers):
                    modifiers.append(piece)
            elif piece.lower() not in (m.lower() for m in mechanisms):
                mechanisms.append(piece)
    leniency = {"+": 0, "?": 1, "~": 2, "-": 3}
    final_all = min(alls, key=lambda t: leniency.get(t[0], 0), default="")
    if final_all:
        # redirect= is ignored when the record has an all mechanism (RFC 7208 §6.1).
        modifiers = [m for m in modifiers if not m.lower().startswith("redirect=")]
    tail = [final_all] if final_all else ([] if modifiers else ["~all"])
    return merged_record(" ".join(["v=spf1", *mechanisms, *tail, *modifiers]), include_domain)


# --- walking the include tree -----------------------------------------------------------------


@dataclass(slots=True)
class TermCost:
    """What one top-level term costs, and its addresses when it can be flattened."""

    term: Term
    lookups: int = 0
    voids: int = 0
    loop: str = ""
    # For an include made only of ip4/ip6 terms (nested too): those terms; else None.
    flat: list[str] | None = None


@dataclass(slots=True)
class SpfWalk:
    """A record evaluated as a worst case (no term matches): lookups, voids, loops, errors."""

    domain: str
    terms: list[TermCost] = field(default_factory=list)
    lookups: int = 0
    voids: int = 0
    loops: list[str] = field(default_factory=list)
    # Temporary DNS failures met on the way: the counts are then incomplete.
    failures: list[str] = field(default_factory=list)
    # Permanent problems in nested records (an include without an SPF record, bad syntax).
    problems: list[str] = field(default_factory=list)
    # Every domain whose SPF record is reached through include/redirect.
    reached: set[str] = field(default_factory=set)

    def reaches(self, domain: str) -> bool:
        """Whether the record includes ``domain``'s SPF record, directly or nested."""
        return domain.lower().rstrip(".") in self.reached


class _Walker:
    def __init__(self, resolver: Resolver, walk: SpfWalk) -> None:
        self.resolver = resolver
        self.walk = walk

    def _lookup(self, name: str, rdtype: str, cost: TermCost) -> DNSResult:
        result = self.resolver.query_sync(name, rdtype)
        if result.status == "temperror":
            self.walk.failures.append(f"could not look up {name}: {result.detail or 'timeout'}")
        elif result.status in ("nxdomain", "nodata"):
            cost.voids += 1
        return result

    def record_of(self, domain: str, cost: TermCost, via: str) -> str | None:
        result = self._lookup(domain, "TXT", cost)
        if result.status != "ok":
            if result.status != "temperror":
                # RFC 7208 §5.2: include of a domain without an SPF record is a permerror.
                self.walk.problems.append(f"{via} names {domain}, which has no SPF record")
            return None
        records = spf_records(result)
        if len(records) != 1:
            if not records:
                self.walk.problems.append(f"{via} names {domain}, which has no SPF record")
            else:
                self.walk.problems.append(
                    f"{via} names {domain}, which has {len(records)} SPF records"
                )
            return None
        return records[0]

    def terms(
        self, domain: str, text: str, path: tuple[str, ...], cost: TermCost
    ) -> list[str] | None:
        """Count the lookups of one record into ``cost``; return its flat ip terms if any."""
        try:
            terms = parse_terms(text)
        except SpfSyntaxError as exc:
            self.walk.problems.append(f"the SPF record of {domain}: {exc}")
            return None
        flat: list[str] | None = []
        has_all = _all_term(terms) is not None
        for term in terms:
            if term.modifier:
                if term.name == "redirect" and not has_all:
                    flat = None
                    self.follow(term, domain, path, cost)
                continue
            if term.name in ("ip4", "ip6"):
                if flat is not None:
                    if term.qualifier == "+":
                        flat.append(term.text.lstrip("+"))
                    else:
                        flat = None
                continue
            if term.name == "all":
                if term.qualifier == "+":
                    flat = None
                continue
            if term.name == "include":
                sub = self.follow(term, domain, path, cost)
                if flat is not None and sub is not None:
                    flat.extend(sub)
                else:
                    flat = None
                continue
            flat = None
            self.mechanism(term, domain, cost)
        return flat

    def follow(
        self, term: Term, domain: str, path: tuple[str, ...], cost: TermCost
    ) -> list[str] | None:
        cost.lookups += 1
        target = term.domain
        if "%" in target:
            return None  # macros (RFC 7208 §7) expand per message; nothing to follow here
        if target in path:
            cost.loop = " → ".join([*path, target])
            return None
        if len(path) >= MAX_DEPTH:
            return None
        text = self.record_of(target, cost, f"{term.text} (in {domain})")
        if text is None:
            return None
        self.walk.reached.add(target)
        return self.terms(target, text, (*path, target), cost)

    def mechanism(self, term: Term, domain: str, cost: TermCost) -> None:
        cost.lookups += 1
        target = term.domain or domain
        if term.name == "ptr" or "%" in target:
            return  # ptr needs the sender's address; macros need the message
        if term.name == "mx":
            self._lookup(target, "MX", cost)
        elif term.name == "exists":
            self._lookup(target, "A", cost)
        else:  # a: an address of either family will do for the set-up check
            first = self.resolver.query_sync(target, "A")
            if first.status == "ok":
                return
            if first.status == "temperror":
                self.walk.failures.append(
                    f"could not look up {target}: {first.detail or 'timeout'}"
                )
                return
            self._lookup(target, "AAAA", cost)


def walk_record(resolver: Resolver, domain: str, text: str) -> SpfWalk:
    """Count the record's DNS-querying terms and void lookups through every include."""
    name = domain.lower().rstrip(".")
    walk = SpfWalk(name)
    walker = _Walker(resolver, walk)
    try:
        terms = parse_terms(text)
    except SpfSyntaxError as exc:
        walk.problems.append(f"the SPF record of {name}: {exc}")
        return walk
    has_all = _all_term(terms) is not None
    for term in terms:
        cost = TermCost(term)
        if term.modifier:
            if term.name == "redirect" and not has_all:
                walker.follow(term, name, (name,), cost)
        elif term.name == "include":
            cost.flat = walker.follow(term, name, (name,), cost)
        elif term.name in _LOOKUP_MECHANISMS:
            walker.mechanism(term, name, cost)
        walk.terms.append(cost)
        walk.lookups += cost.lookups
        walk.voids += cost.voids
        if cost.loop:
            walk.loops.append(cost.loop)
    return walk


def repaired_record(walk: SpfWalk, include_domain: str) -> tuple[str, list[str]]:
    """The record that fixes what the walk found, and what was changed (for the reason).

    ``+all`` becomes ``~all``; terms that loop or only produce void lookups are dropped; our
    include is added; then, while over the lookup limit, includes made only of addresses are
    replaced by those addresses ("flattened"; they must be refreshed if the provider changes).
    """
    ours = include_domain.lower().rstrip(".")
    kept: list[TermCost] = []
    changes: list[str] = []
    for cost in walk.terms:
        term = cost.term
        if not term.modifier and term.name == "all" and term.qualifier == "+":
            kept.append(TermCost(Term("~all", "~", "all")))
            changes.append("+all replaced by ~all")
        elif cost.loop:
            changes.append(f"{term.text} removed (loop)")
        elif cost.voids and term.name in ("include", "redirect", "a", "mx", "exists"):
            changes.append(f"{term.text} removed (names that do not exist)")
        else:
            kept.append(cost)
    texts = [c.term.text for c in kept]
    has_all = any(not c.term.modifier and c.term.name == "all" for c in kept)
    has_redirect = any(c.term.modifier and c.term.name == "redirect" for c in kept)
    if not has_all and not has_redirect:
        texts.append("~all")
    if not walk.reaches(ours) or any(
        c.loop or c.voids for c in walk.terms if c.term.domain == ours
    ):
        texts = _insert_before_all(texts, [f"include:{ours}"])
        changes.append(f"include:{ours} added")
        kept_cost = sum(c.lookups for c in kept) + 1
    else:
        kept_cost = sum(c.lookups for c in kept)
    # Flatten the costliest address-only includes (never ours: our addresses change).
    candidates = sorted(
        (
            c
            for c in kept
            if c.flat is not None and c.term.name == "include" and c.term.domain != ours
        ),
        key=lambda c: -c.lookups,
    )
    for cost in candidates:
        if kept_cost <= MAX_LOOKUPS:
            break
        index = texts.index(cost.term.text)
        texts[index : index + 1] = list(dict.fromkeys(cost.flat or []))
        kept_cost -= cost.lookups
        changes.append(f"{cost.term.text} flattened to its addresses")
    return " ".join(["v=spf1", *texts]), changes


def probe_address(value: str) -> str:
    """An address to evaluate SPF for: the address itself, or a network's first address."""
    return str(ipaddress.ip_network(value, strict=False).network_address)
