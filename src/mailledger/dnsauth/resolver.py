"""The one resolver every SPF, DKIM, ARC, DMARC and MX lookup goes through (DESIGN §7).

Tests and operators point it at any name server, so nothing in the verification path ever
does DNS on its own: pyspf and dkimpy are handed adapters (``spf_check``/``spf_context`` and
``dkim_dnsfunc``) that answer from here. Failures never escape as dnspython exceptions; they
become a :class:`DNSResult` status in the RFC 8601 vocabulary (a timeout is ``temperror``).

This module lives in ``mailledger.dns``; ``import dns.resolver`` below is dnspython because
imports are absolute.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
import spf

from mailledger.config import DNSSettings
from mailledger.dnsauth.lru import LockedLRU
from mailledger.dnsauth.spfverdicts import (
    SPFVerdicts,
    record_answer,
    record_unkeepable,
)

Status = Literal["ok", "nxdomain", "nodata", "temperror", "permerror"]
# TXT/SPF, A/AAAA, PTR/CNAME/NS and other types are strings; MX is (preference, exchange).
Record = str | tuple[int, str]

# RFC 2308 §5: negative answers are cached for min(SOA TTL, SOA MINIMUM). Without an SOA we
# still keep them briefly, so a burst of checks for one missing name asks once.
DEFAULT_NEGATIVE_TTL: Final = 30
MAX_NEGATIVE_TTL: Final = 3 * 3600
MAX_POSITIVE_TTL: Final = 86400
DEFAULT_CACHE_SIZE: Final = 10_000
# RFC 6891 §6.2.5 / DNS flag day 2020: a payload size that avoids IP fragmentation.
EDNS_PAYLOAD: Final = 1232

_R = TypeVar("_R", bound=dns.resolver.BaseResolver)


@dataclass(frozen=True, slots=True)
class DNSResult:
    """One lookup's outcome, cacheable and safe to share between threads.

    ``records`` holds TXT/SPF records as one string each (the record's character-strings
    joined, RFC 7208 §3.3 / RFC 6376 §3.6.2.2) decoded as UTF-8 with ``surrogateescape``, so
    ``record.encode("utf-8", "surrogateescape")`` gives back the exact bytes; MX records as
    ``(preference, exchange)``; A/AAAA as address text; PTR/CNAME/NS as lowercase names
    without the final dot (the root, as in a null MX, is ``"."``).

    ``strings`` keeps, for TXT/SPF answers, each record's character-strings as published
    (RFC 1035 §3.3.14), in the order of ``records``: how a long record was split is lost in
    the joined text, and the DNS set-up check reports it.
    """

    name: str
    rdtype: str
    status: Status
    records: tuple[Record, ...] = ()
    ttl: int = 0
    canonical_name: str = ""
    detail: str = ""
    strings: tuple[tuple[bytes, ...], ...] = ()

    @property
    def ok(self) -> bool:
        """True when the name has records of the asked type."""
        return self.status == "ok"

    @property
    def texts(self) -> tuple[str, ...]:
        """The string records (TXT, SPF, addresses, names), for callers that want one type."""
        return tuple(r for r in self.records if isinstance(r, str))

    @property
    def exchanges(self) -> tuple[tuple[int, str], ...]:
        """The MX records as (preference, exchange), in preference order (RFC 5321 §5.1)."""
        return tuple(sorted(r for r in self.records if isinstance(r, tuple)))


class DNSTempError(Exception):
    """A lookup failed temporarily; raised only where a library's callback can't return it.

    dkimpy maps both ``None`` and its own ``DnsTimeoutError`` to a plain failed signature, so
    the DKIM adapter raises this instead: it is not a ``dkim.DKIMException``, passes through
    ``dkim.verify`` and ``dkim.arc_verify``, and the caller reports ``temperror``.
    """

    def __init__(self, result: DNSResult) -> None:
        super().__init__(f"{result.name}/{result.rdtype}: {result.detail or result.status}")
        self.result = result


class DNSBudgetExhaustedError(Exception):
    """This message has asked every DNS question it may (``[verify] max_dns_queries``).

    Like :class:`DNSTempError` it is not a ``dkim.DKIMException``, so it passes through dkimpy
    to the caller, which records the checks left as not done; pyspf gets a ``PermError``.
    """


# The questions still allowed in the current context (thread or task); None: no cap. One
# mutable cell so every lookup made inside ``query_budget`` draws on the same count.
_query_budget: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "mailledger_dns_query_budget", default=None
)


@contextlib.contextmanager
def query_budget(limit: int) -> Iterator[None]:
    """Cap the DNS questions sent inside this block: the bound on one message's checks.

    Only questions that go to the network count; cached and malformed ones are free.
    """
    token = _query_budget.set([limit])
    try:
        yield
    finally:
        _query_budget.reset(token)


def _spend_query() -> None:
    remaining = _query_budget.get()
    if remaining is None:
        return
    if remaining[0] <= 0:
        raise DNSBudgetExhaustedError("DNS query limit for this message reached")
    remaining[0] -= 1


def text_bytes(record: str) -> bytes:
    """The exact bytes of a TXT record held in a :class:`DNSResult`."""
    return record.encode("utf-8", "surrogateescape")


def parse_nameserver(value: str) -> tuple[str, int]:
    """Split ``"host:port"``, ``"[v6]:port"``, ``"host"`` or a bare IPv6 address.

    Name servers must be addresses: resolving the resolver's own servers would need DNS.
    """
    text = value.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected [IPv6]:PORT")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host = text
    ipaddress.ip_address(host)  # raises ValueError naming the bad host
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port out of range")
    return host, port


def _name_text(name: dns.name.Name) -> str:
    # Names are case-insensitive (RFC 4343) and compression can copy the question's case into
    # an answer, so they are compared and returned in lowercase.
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _record(rd: dns.rdata.Rdata) -> Record:
    value: Any = rd
    if rd.rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return b"".join(value.strings).decode("utf-8", "surrogateescape")
    if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(value.address)
    if rd.rdtype == dns.rdatatype.MX:
        return (int(value.preference), _name_text(value.exchange))
    if rd.rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return _name_text(value.target)
    return rd.to_text()


def _negative_ttl(response: dns.message.Message | None) -> int:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section, else a default."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                soa: Any = rrset[0]
                return max(0, min(int(rrset.ttl), int(soa.minimum), MAX_NEGATIVE_TTL))
    return DEFAULT_NEGATIVE_TTL


class _TTLCache:
    """A bounded LRU of results with expiry times, shared by the sync and async paths."""

    def __init__(self, max_entries: int) -> None:
        self._entries: LockedLRU[tuple[str, int], tuple[float, DNSResult]] = LockedLRU(max_entries)

    def get(self, key: tuple[str, int]) -> DNSResult | None:
        now = time.monotonic()
        entry = self._entries.get(key, lambda kept: kept[0] > now)
        return entry[1] if entry is not None else None

    def put(self, key: tuple[str, int], result: DNSResult) -> None:
        if result.ttl <= 0:
            return
        self._entries.put(key, (time.monotonic() + result.ttl, result))

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class _Question:
    qname: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    key: tuple[str, int]
    name: str
    type_text: str


@functools.lru_cache(maxsize=4096)
def _question(name: str, rdtype: str | int) -> _Question | DNSResult:
    """The parsed question, or why it cannot be asked; remembered, as the same names recur.

    A forwarded message asks about ten cached names, and parsing each with dnspython cost
    more than the cache lookup itself.
    """
    try:
        kind = dns.rdatatype.RdataType.make(rdtype)
    except (dns.exception.DNSException, ValueError) as exc:
        return DNSResult(str(name), str(rdtype), "permerror", detail=f"bad type: {exc}")
    type_text = dns.rdatatype.to_text(kind)
    try:
        qname = dns.name.from_text(name.strip().rstrip(".") + ".")
    except (dns.exception.DNSException, ValueError) as exc:
        # RFC 7208 §4.3: a malformed domain is not a DNS failure; retrying won't help.
        return DNSResult(name, type_text, "permerror", detail=f"bad name: {exc}")
    text = _name_text(qname)
    return _Question(qname, kind, (text, int(kind)), text, type_text)


# The resolver pyspf's lookups go to in the current context (thread or task). pyspf has no
# per-query hook, only the module global ``spf.DNSLookup``; a context variable lets several
# resolvers (tests, tenants) share that one global safely. ``asyncio.to_thread`` copies the
# context, so a binding made before handing the check to a worker thread still applies.
_spf_resolver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar(
    "mailledger_spf_resolver", default=None
)
_spf_install_lock = threading.Lock()


def _spf_dnslookup(
    name: str, qtype: str, strict: object = True, timeout: float | None = None
) -> list[tuple[tuple[str, str], Any]]:
    """Stands in for ``spf.DNSLookup``: answers from the resolver bound to this context."""
    resolver = _spf_resolver.get()
    if resolver is None:
        # Never fall back to pyspf's own DNS: that would bypass configured name servers.
        raise spf.TempError("DNS: no mailledger resolver is bound for this SPF check")
    return resolver.spf_lookup(name, qtype, timeout)


def install_spf_lookup() -> None:
    """Route every pyspf lookup through the bound :class:`Resolver` (idempotent)."""
    with _spf_install_lock:
        if spf.DNSLookup is not _spf_dnslookup:
            spf.DNSLookup = _spf_dnslookup


class Resolver:
    """Cached DNS lookups with one time budget, for async code and worker threads alike."""

    def __init__(
        self, settings: DNSSettings | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        settings = settings or DNSSettings()
        self.timeout_seconds = settings.timeout_seconds
        self._cache = _TTLCache(cache_size)
        self._spf_verdicts = SPFVerdicts()
        self._config_error = ""
        servers = [parse_nameserver(v) for v in settings.nameservers]
        self._sync = self._make(dns.resolver.Resolver, servers)
        self._async = self._make(dns.asyncresolver.Resolver, servers)

    def _make(self, kind: type[_R], servers: list[tuple[str, int]]) -> _R:
        if servers:
            resolver = kind(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
        else:
            try:
                resolver = kind(configure=True)  # the system's resolv.conf
            except dns.resolver.NoResolverConfiguration as exc:
                resolver = kind(configure=False)
                self._config_error = f"no name servers configured: {exc}"
        resolver.timeout = self.timeout_seconds
        resolver.lifetime = self.timeout_seconds
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = None  # ours is shared between the sync and async resolvers
        return resolver

    def clear_cache(self) -> None:
        """Forget every cached answer (operators changing records, tests)."""
        self._cache.clear()
        self._spf_verdicts.clear()

    @property
    def cache_size(self) -> int:
        """How many answers are cached now."""
        return len(self._cache)

    # -- the lookups ---------------------------------------------------------------------

    def _to_ask(self, name: str, rdtype: str | int) -> _Question | DNSResult:
        """The question to send, or the result already known without sending one.

        Known: a malformed name or type, a cached answer, or no usable resolver configuration.
        """
        q = _question(name, rdtype)
        if isinstance(q, DNSResult):
            return q
        cached = self._cache.get(q.key)
        if cached is not None:
            return cached
        if self._config_error:
            return DNSResult(q.name, q.type_text, "temperror", detail=self._config_error)
        return q

    def _keep(self, q: _Question, result: DNSResult) -> DNSResult:
        self._cache.put(q.key, result)
        return result

    def _lifetime(self, lifetime: float | None) -> float:
        if lifetime is None:
            return self.timeout_seconds
        return max(0.001, min(lifetime, self.timeout_seconds))

    def query_sync(
        self, name: str, rdtype: str | int, *, lifetime: float | None = None
    ) -> DNSResult:
        """Blocking lookup, for pyspf, dkimpy and other code already in a worker thread.

        Inside :func:`query_budget`, a question past the cap raises
        :class:`DNSBudgetExhaustedError`.
        """
        q = self._to_ask(name, rdtype)
        if isinstance(q, DNSResult):
            return q
        _spend_query()
        try:
            answer = self._sync.resolve(
                q.qname,
                q.rdtype,
                raise_on_no_answer=False,
                lifetime=self._lifetime(lifetime),
                search=False,
            )
        except (dns.exception.DNSException, OSError) as exc:
            return self._keep(q, self._from_exception(q, exc))
        return self._keep(q, self._from_answer(q, answer))

    async def query(
        self, name: str, rdtype: str | int, *, lifetime: float | None = None
    ) -> DNSResult:
        """Lookup on the running event loop; shares the cache with :meth:`query_sync`."""
        q = self._to_ask(name, rdtype)
        if isinstance(q, DNSResult):
            return q
        try:
            answer = await self._async.resolve(
                q.qname,
                q.rdtype,
                raise_on_no_answer=False,
                lifetime=self._lifetime(lifetime),
                search=False,
            )
        except (dns.exception.DNSException, OSError) as exc:
            return self._keep(q, self._from_exception(q, exc))
        return self._keep(q, self._from_answer(q, answer))

    async def txt(self, name: str) -> DNSResult:
        """TXT records of ``name``, each one joined into a single string."""
        return await self.query(name, "TXT")

    async def mx(self, name: str) -> DNSResult:
        """MX records of ``name`` as (preference, exchange)."""
        return await self.query(name, "MX")

    def txt_sync(self, name: str) -> DNSResult:
        """Blocking twin of :meth:`txt`."""
        return self.query_sync(name, "TXT")

    def mx_sync(self, name: str) -> DNSResult:
        """Blocking twin of :meth:`mx`."""
        return self.query_sync(name, "MX")

    @staticmethod
    def _from_answer(q: _Question, answer: dns.resolver.Answer) -> DNSResult:
        canonical = _name_text(answer.canonical_name)
        if answer.rrset is None:
            ttl = _negative_ttl(answer.response)
            return DNSResult(q.name, q.type_text, "nodata", ttl=ttl, canonical_name=canonical)
        ttl = max(0, min(int(answer.chaining_result.minimum_ttl), MAX_POSITIVE_TTL))
        records = tuple(_record(rd) for rd in answer.rrset)
        strings = tuple(
            tuple(bytes(s) for s in getattr(rd, "strings", ()))
            for rd in answer.rrset
            if rd.rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF)
        )
        return DNSResult(q.name, q.type_text, "ok", records, ttl, canonical, strings=strings)

    @staticmethod
    def _from_exception(q: _Question, exc: BaseException) -> DNSResult:
        if isinstance(exc, dns.resolver.NXDOMAIN):
            nxdomain: Any = exc  # dnspython leaves NXDOMAIN.response untyped
            try:
                response: dns.message.Message | None = nxdomain.response(q.qname)
            except KeyError:
                response = None
            return DNSResult(q.name, q.type_text, "nxdomain", ttl=_negative_ttl(response))
        if isinstance(exc, dns.resolver.NoAnswer):
            return DNSResult(q.name, q.type_text, "nodata", ttl=DEFAULT_NEGATIVE_TTL)
        if isinstance(exc, dns.resolver.YXDOMAIN):
            return DNSResult(q.name, q.type_text, "permerror", detail="YXDOMAIN")
        if isinstance(exc, dns.resolver.NoNameservers):
            errors = [e[3] for e in exc.kwargs.get("errors", [])]
            if errors and all(isinstance(e, dns.message.ChainTooLong) for e in errors):
                # RFC 1034 §3.6.2: a CNAME loop is an error in the data, not a transient one.
                return DNSResult(
                    q.name, q.type_text, "permerror", detail="CNAME chain loops or is too long"
                )
            return DNSResult(q.name, q.type_text, "temperror", detail=str(exc))
        if isinstance(exc, dns.exception.Timeout):
            return DNSResult(q.name, q.type_text, "temperror", detail=f"timeout: {exc}")
        # Unknown faults are temporary (STYLE: network errors, no configuration, bad packets).
        return DNSResult(q.name, q.type_text, "temperror", detail=f"{type(exc).__name__}: {exc}")

    # -- pyspf ---------------------------------------------------------------------------

    def spf_lookup(
        self, name: str, qtype: str, timeout: float | None = None
    ) -> list[tuple[tuple[str, str], Any]]:
        """One lookup in the shape of ``spf.DNSLookup``: ``[((name, qtype), data), ...]``.

        CNAMEs are followed here (the answer is filed under the asked name, as pyspf's own
        dnspython driver does). TXT/SPF data is a one-element tuple of bytes, MX is
        ``(preference, exchange)``. No data, NXDOMAIN and permanent errors (a CNAME loop, a
        malformed name) give ``[]``, which pyspf counts as a void lookup (RFC 7208 §4.6.4);
        a temporary error raises ``spf.TempError``.
        """
        try:
            result = self.query_sync(name, qtype, lifetime=timeout)
        except DNSBudgetExhaustedError as exc:
            record_unkeepable()
            # Like pyspf's own lookup limits (RFC 7208 §4.6.4): the record asks too much.
            raise spf.PermError(str(exc)) from exc
        if result.status == "temperror":
            record_unkeepable()
            raise spf.TempError(f"DNS {result.detail or 'temporary failure'}")
        record_answer(name, qtype, result, (text_bytes(r) for r in result.texts))
        if result.status != "ok":
            return []
        key = (name, qtype)
        if qtype in ("TXT", "SPF"):
            return [(key, (text_bytes(r),)) for r in result.texts]
        return [(key, r) for r in result.records]

    @contextlib.contextmanager
    def spf_context(self) -> Iterator[Resolver]:
        """Make pyspf queries made inside this block (this thread or task) use this resolver."""
        if spf.DNSLookup is not _spf_dnslookup:
            # Without the hook pyspf would ask its own DNS, bypassing our name servers.
            raise RuntimeError(
                "pyspf's DNS hook is not installed: entry points call "
                "mailledger.verify.patches.install_patches() at start-up"
            )
        token = _spf_resolver.set(self)
        try:
            yield self
        finally:
            _spf_resolver.reset(token)

    def spf_check(
        self,
        ip: str,
        sender: str,
        helo: str,
        *,
        receiver: str | None = None,
        strict: bool | int = True,
        querytime: float | None = None,
    ) -> tuple[str, str]:
        """RFC 7208 check_host() through this resolver: (result, explanation). Blocking.

        ``querytime`` bounds the whole check (RFC 7208 §4.6.4 suggests 20 s); by default it
        is four times the per-lookup timeout, so a check never runs unbounded. The same
        check again, while every answer it used is still the cached one, gives the verdict
        computed then (``spfverdicts``).
        """
        key = (ip, sender, helo, receiver, strict)
        kept = self._spf_verdicts.get(key, self._to_ask)
        if kept is not None:
            return kept
        budget = querytime if querytime is not None else 4 * self.timeout_seconds
        with self._spf_verdicts.recording(key) as keep, self.spf_context():
            q = spf.query(
                i=ip, s=sender, h=helo, receiver=receiver, strict=strict, querytime=budget
            )
            result, _code, explanation = q.check()
            verdict = str(result), str(explanation)
            keep(verdict, verdict[0] != "temperror")
        return verdict

    # -- dkimpy --------------------------------------------------------------------------

    def dkim_dnsfunc(self, name: bytes, timeout: float = 5) -> bytes | None:
        """``dnsfunc`` for ``dkim.verify``/``dkim.arc_verify``: the key record's text or None.

        None (no record, or a name that isn't ASCII) makes dkimpy fail the signature, which is
        right for a missing key (RFC 6376 §6.1.2 PERMFAIL). A temporary failure raises
        :class:`DNSTempError` instead, because dkimpy turns its own timeout error into the
        same plain failure and the caller could not report ``temperror``. dkimpy's
        ``timeout`` is honoured only when shorter than ours.
        """
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        result = self.query_sync(text, "TXT", lifetime=timeout)
        if result.status == "temperror":
            raise DNSTempError(result)
        if result.status != "ok" or not result.texts:
            return None
        # RFC 6376 §3.6.2.2: several records at one selector are undefined; take the first.
        return text_bytes(result.texts[0])
