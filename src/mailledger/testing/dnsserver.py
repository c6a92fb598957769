"""A small authoritative DNS server on 127.0.0.1 for tests (UDP and TCP, same port).

Built on dnspython's wire format and rdata classes rather than on dnslib: dnspython is already
a dependency (the resolver uses it), parses zone-file text, and the records the tests publish
are then encoded by the same library the resolver decodes them with, so a test can't pass on
an encoding quirk one side has and the other doesn't.

It runs in background threads (``socketserver``), so it serves a pytest-asyncio test's event
loop and synchronous code (pyspf, dkimpy in worker threads) alike. Records can be changed
while it runs; names can be made to time out (never answered) or to answer SERVFAIL.
"""

from __future__ import annotations

import socketserver
import struct
import textwrap
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.zone

from mailledger.config import DNSSettings

# RFC 1035 §3.3: a <character-string> holds at most 255 octets.
MAX_CHARACTER_STRING: Final = 255
# RFC 1035 §4.2.1: without EDNS a UDP answer is at most 512 octets.
CLASSIC_UDP_SIZE: Final = 512
MAX_CNAME_CHAIN: Final = 16
_TEXT_TYPES: Final = (dns.rdatatype.TXT, dns.rdatatype.SPF)

TxtValue = str | bytes | Sequence[str | bytes]
MxValue = tuple[int, str]
Value = TxtValue | MxValue


@dataclass(frozen=True, slots=True)
class LoggedQuery:
    """One question the server received (name lowercased, without the final dot)."""

    name: str
    rdtype: str
    transport: str


def _name(value: str | dns.name.Name) -> dns.name.Name:
    if isinstance(value, dns.name.Name):
        return value.canonicalize()
    return dns.name.from_text(value.strip().rstrip(".") + ".").canonicalize()


def _rdtype(value: str | int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(value)


def split_character_strings(data: bytes) -> list[bytes]:
    """Split TXT data into 255-octet character-strings (RFC 7208 §3.3 / RFC 1035 §3.3.14)."""
    if not data:
        return [b""]
    return [data[i : i + MAX_CHARACTER_STRING] for i in range(0, len(data), MAX_CHARACTER_STRING)]


def _txt_rdata(rdtype: dns.rdatatype.RdataType, value: TxtValue) -> dns.rdata.Rdata:
    parts: list[bytes] = []
    pieces: Iterable[str | bytes] = [value] if isinstance(value, str | bytes) else value
    for piece in pieces:
        raw = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
        parts.extend(split_character_strings(raw))
    # A TXT record needs at least one string (RFC 1035 §3.3.14; dnspython can neither build
    # nor parse one without), so an empty list is published as one empty string.
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, rdtype, parts or [b""])


def make_rdata(rdtype: str | int, value: Value) -> dns.rdata.Rdata:
    """Build one record from a convenient Python value.

    TXT/SPF: a str (UTF-8) or bytes, split into 255-octet strings as needed, or a sequence of
    them for explicit strings. MX: ``(preference, exchange)`` or ``"10 mx.example."``.
    Anything else: zone-file presentation text; relative names are taken from the root.
    """
    kind = _rdtype(rdtype)
    if kind in _TEXT_TYPES:
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int):
            raise TypeError("TXT values are strings, not (preference, exchange)")
        return _txt_rdata(kind, value)
    if isinstance(value, tuple) and kind == dns.rdatatype.MX:
        preference, exchange = value
        # An empty exchange is the root, as in a null MX (RFC 7505).
        target = dns.name.from_text(exchange.rstrip(".") + ".") if exchange else dns.name.root
        return dns.rdata.from_text(dns.rdataclass.IN, kind, f"{int(preference)} {target}")
    if not isinstance(value, str):
        raise TypeError(f"a {dns.rdatatype.to_text(kind)} value is presentation text")
    return dns.rdata.from_text(
        dns.rdataclass.IN, kind, value, origin=dns.name.root, relativize=False
    )


class _Zone:
    """Name → type → rrset, plus the names whose questions fail, all under one lock."""

    def __init__(self, negative_ttl: int) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self.timeouts: set[tuple[dns.name.Name, int | None]] = set()
        self.servfails: set[tuple[dns.name.Name, int | None]] = set()
        self.negative_ttl = negative_ttl

    def fault(self, name: dns.name.Name, rdtype: int) -> str | None:
        for kind, table in (("timeout", self.timeouts), ("servfail", self.servfails)):
            if (name, rdtype) in table or (name, None) in table:
                return kind
        return None

    def exists(self, name: dns.name.Name) -> bool:
        # RFC 8020: a name with descendants exists (empty non-terminal) and answers NODATA.
        return name in self.nodes or any(other.is_subdomain(name) for other in self.nodes)

    def soa_for(self, name: dns.name.Name) -> dns.rrset.RRset:
        """RFC 2308 §3: negative answers carry the zone's SOA; its MINIMUM bounds caching."""
        probe = name
        while True:
            node = self.nodes.get(probe)
            if node and dns.rdatatype.SOA in node:
                return node[dns.rdatatype.SOA]
            if len(probe) <= 1:
                break
            probe = probe.parent()
        apex = dns.name.Name(name.labels[-3:]) if len(name.labels) > 3 else name
        ttl = self.negative_ttl
        rrset = dns.rrset.RRset(apex, dns.rdataclass.IN, dns.rdatatype.SOA)
        soa_text = f"ns.{apex} hostmaster.{apex} 1 3600 600 86400 {ttl}"
        rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, soa_text), ttl)
        return rrset

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The authoritative response, or None when the question must go unanswered."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name.canonicalize(), int(question.rdtype)
        with self.lock:
            fault = self.fault(qname, qtype)
            if fault == "timeout":
                return None
            if fault == "servfail":
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            if question.rdclass != dns.rdataclass.IN:
                response.set_rcode(dns.rcode.REFUSED)
                return response
            self._resolve(response, question.name, qtype)
        return response

    def _resolve(self, response: dns.message.Message, asked: dns.name.Name, qtype: int) -> None:
        owner, seen = asked, {asked.canonicalize()}
        for _ in range(MAX_CNAME_CHAIN):
            node = self.nodes.get(owner.canonicalize(), {})
            if qtype == dns.rdatatype.ANY and node:
                response.answer.extend(self._copy(owner, rrset) for rrset in node.values())
                return
            if qtype in node:
                response.answer.append(self._copy(owner, node[qtype]))
                return
            cname = node.get(dns.rdatatype.CNAME)
            if cname is not None and qtype != dns.rdatatype.CNAME:
                response.answer.append(self._copy(owner, cname))
                target: dns.name.Name = cname[0].target
                if target.canonicalize() in seen:
                    return  # a loop: answer the chain so far and let the resolver decide
                seen.add(target.canonicalize())
                owner = target
                continue
            if not self.exists(owner.canonicalize()):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self.soa_for(owner.canonicalize()))
            return

    @staticmethod
    def _copy(owner: dns.name.Name, rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype)
        for rdata in rrset:
            out.add(rdata, rrset.ttl)
        return out


def _wire(response: dns.message.Message, limit: int) -> bytes:
    """Render within ``limit`` octets, or truncated with TC set (RFC 2181 §9)."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        data, sock = self.request
        owner = self.server.owner
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        owner.log(query, "udp")
        response = owner.zone.answer(query)
        if response is None:
            return
        limit = max(CLASSIC_UDP_SIZE, query.payload) if query.edns >= 0 else CLASSIC_UDP_SIZE
        sock.sendto(_wire(response, limit), self.client_address)


class _TCPHandler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def _read(self, size: int) -> bytes | None:
        buf = b""
        stop = self.server.owner.stopping
        while len(buf) < size:
            if stop.is_set():
                return None
            try:
                chunk = self.request.recv(size - len(buf))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def handle(self) -> None:
        owner = self.server.owner
        self.request.settimeout(0.1)
        # RFC 7766 §6.2.1: a client may send several queries on one connection.
        while True:
            header = self._read(2)
            if header is None:
                return
            data = self._read(struct.unpack("!H", header)[0])
            if data is None:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                return
            owner.log(query, "tcp")
            response = owner.zone.answer(query)
            if response is None:
                # Hold the connection open and silent, as a dead server would, until stopped.
                owner.stopping.wait()
                return
            wire = _wire(response, 65535)
            self.request.sendall(struct.pack("!H", len(wire)) + wire)


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], owner: DNSServer) -> None:
        self.owner = owner
        super().__init__(address, _UDPHandler)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], owner: DNSServer) -> None:
        self.owner = owner
        super().__init__(address, _TCPHandler)


class DNSServer:
    """Authoritative answers for whatever names a test publishes, on 127.0.0.1:PORT.

    Use as a context manager; ``address`` is ``"127.0.0.1:PORT"`` for ``DNSSettings``.
    """

    def __init__(self, *, negative_ttl: int = 60, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.zone = _Zone(negative_ttl)
        self.stopping = threading.Event()
        self._log: list[LoggedQuery] = []
        self._log_lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind UDP and TCP on one free port and serve from background threads."""
        if self._servers:
            return self
        for _ in range(20):
            tcp = _TCPServer((self.host, 0), self)
            port = tcp.server_address[1]
            try:
                udp = _UDPServer((self.host, port), self)
            except OSError:
                tcp.server_close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP on " + self.host)
        self.port = int(port)
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"test-dns-{type(server).__name__}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets; pending silent TCP answers are released."""
        self.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, the form ``DNSSettings.nameservers`` takes."""
        return f"{self.host}:{self.port}"

    def settings(self, timeout_seconds: float = 2.0) -> DNSSettings:
        """Resolver settings that use this server and nothing else."""
        return DNSSettings(nameservers=[self.address], timeout_seconds=timeout_seconds)

    # -- records -------------------------------------------------------------------------

    def add(self, name: str, rdtype: str | int, value: Value, ttl: int = 300) -> None:
        """Publish one record (added to any others of that name and type)."""
        self.add_rdata(name, make_rdata(rdtype, value), ttl)

    def add_rdata(self, name: str | dns.name.Name, rdata: dns.rdata.Rdata, ttl: int) -> None:
        """Publish one dnspython rdata; the rrset keeps the lowest TTL it has been given."""
        owner = _name(name)
        with self.zone.lock:
            node = self.zone.nodes.setdefault(owner, {})
            rrset = node.get(rdata.rdtype)
            if rrset is None:
                rrset = node[rdata.rdtype] = dns.rrset.RRset(owner, rdata.rdclass, rdata.rdtype)
            rrset.add(rdata, ttl)

    def add_zone_text(self, text: str, origin: str = ".", default_ttl: int = 300) -> None:
        """Publish records written as a zone file (``$ORIGIN``, ``$TTL``, relative names)."""
        zone = dns.zone.from_text(
            f"$TTL {default_ttl}\n{textwrap.dedent(text)}",
            origin=_name(origin),
            relativize=False,
            check_origin=False,
        )
        for name, rdataset in zone.iterate_rdatasets():
            for rdata in rdataset:
                self.add_rdata(name, rdata, rdataset.ttl)

    def remove(self, name: str, rdtype: str | int | None = None) -> None:
        """Withdraw the records of one type at ``name``, or all of them."""
        owner = _name(name)
        with self.zone.lock:
            node = self.zone.nodes.get(owner)
            if node is None:
                return
            if rdtype is None:
                node.clear()
            else:
                node.pop(_rdtype(rdtype), None)
            if not node:
                del self.zone.nodes[owner]

    def clear(self) -> None:
        """Withdraw every record and fault."""
        with self.zone.lock:
            self.zone.nodes.clear()
            self.zone.timeouts.clear()
            self.zone.servfails.clear()

    # -- faults --------------------------------------------------------------------------

    def timeout(self, name: str, rdtype: str | int | None = None) -> None:
        """Never answer questions for ``name`` (of one type, or any), over UDP or TCP."""
        key = (_name(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self.zone.lock:
            self.zone.timeouts.add(key)

    def servfail(self, name: str, rdtype: str | int | None = None) -> None:
        """Answer SERVFAIL for ``name`` (of one type, or any)."""
        key = (_name(name), None if rdtype is None else int(_rdtype(rdtype)))
        with self.zone.lock:
            self.zone.servfails.add(key)

    def heal(self, name: str | None = None) -> None:
        """Answer normally again for ``name`` (or every name)."""
        owner = None if name is None else _name(name)
        with self.zone.lock:
            for table in (self.zone.timeouts, self.zone.servfails):
                for key in [k for k in table if owner is None or k[0] == owner]:
                    table.discard(key)

    # -- what was asked ------------------------------------------------------------------

    def log(self, query: dns.message.Message, transport: str) -> None:
        """Record a received question (called by the handlers)."""
        for q in query.question:
            entry = LoggedQuery(
                q.name.to_text(omit_final_dot=True).lower(),
                dns.rdatatype.to_text(q.rdtype),
                transport,
            )
            with self._log_lock:
                self._log.append(entry)

    @property
    def queries(self) -> list[LoggedQuery]:
        """Every question received so far, oldest first."""
        with self._log_lock:
            return list(self._log)

    def query_count(
        self, name: str | None = None, rdtype: str | None = None, transport: str | None = None
    ) -> int:
        """How many questions matched (any of the filters left out matches everything)."""
        want = None if name is None else name.strip().rstrip(".").lower()
        return sum(
            1
            for q in self.queries
            if (want is None or q.name == want)
            and (rdtype is None or q.rdtype == rdtype.upper())
            and (transport is None or q.transport == transport)
        )

    def reset_queries(self) -> None:
        """Forget the questions received so far."""
        with self._log_lock:
            self._log.clear()
