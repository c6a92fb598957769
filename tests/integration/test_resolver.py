"""The shared resolver against a real DNS server on 127.0.0.1, and the pyspf/dkimpy adapters."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest
import spf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailledger.config import DNSSettings
from mailledger.dnsauth.orgdomain import organizational_domain
from mailledger.dnsauth.resolver import (
    DNSResult,
    DNSTempError,
    Resolver,
    parse_nameserver,
    text_bytes,
)
from mailledger.testing.dnsserver import DNSServer

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(negative_ttl=300) as server:
        yield server


# -- plain lookups -------------------------------------------------------------------------


async def test_txt_mx_and_a_lookups(dns_server: DNSServer, resolver: Resolver) -> None:
    """Each record type comes back in its documented shape, through the async path."""
    dns_server.add("example.test", "TXT", "v=spf1 -all")
    dns_server.add("example.test", "TXT", ["hello ", "world"])
    dns_server.add("example.test", "MX", (20, "mx2.example.test"))
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "192.0.2.10")
    dns_server.add("mx1.example.test", "AAAA", "2001:db8::10")
    dns_server.add("10.2.0.192.in-addr.arpa", "PTR", "mx1.example.test.")

    txt = await resolver.txt("example.test")
    assert txt.status == "ok"
    assert sorted(txt.texts) == ["hello world", "v=spf1 -all"]
    mx = await resolver.mx("Example.TEST.")
    assert mx.exchanges == ((10, "mx1.example.test"), (20, "mx2.example.test"))
    assert (await resolver.query("mx1.example.test", "A")).records == ("192.0.2.10",)
    assert (await resolver.query("mx1.example.test", "AAAA")).records == ("2001:db8::10",)
    ptr = await resolver.query("10.2.0.192.in-addr.arpa", dns.rdatatype.PTR)
    assert ptr.records == ("mx1.example.test",)


def test_sync_lookups_match_async(dns_server: DNSServer, resolver: Resolver) -> None:
    """The blocking twins give the same results as the async calls."""
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns_server.add("example.test", "MX", (0, "."))
    assert resolver.txt_sync("example.test").texts == ("v=spf1 ip4:192.0.2.1 -all",)
    # RFC 7505 null MX: the exchange is the root.
    assert resolver.mx_sync("example.test").exchanges == ((0, "."),)


async def test_nxdomain_nodata_and_empty_non_terminal(
    dns_server: DNSServer, resolver: Resolver
) -> None:
    """A missing name is nxdomain; a name with other types, or only children, is nodata."""
    dns_server.add("example.test", "A", "192.0.2.1")
    dns_server.add("deep.under.example.test", "TXT", "x")
    assert (await resolver.query("missing.example.test", "A")).status == "nxdomain"
    assert (await resolver.query("example.test", "TXT")).status == "nodata"
    assert (await resolver.query("under.example.test", "TXT")).status == "nodata"
    assert resolver.query_sync("example.test", "MX").status == "nodata"


async def test_cname_is_followed(dns_server: DNSServer, resolver: Resolver) -> None:
    """An alias resolves to its target's records and names the canonical name."""
    dns_server.add("alias.example.test", "CNAME", "real.example.test.")
    dns_server.add("real.example.test", "TXT", "v=spf1 -all")
    result = await resolver.txt("alias.example.test")
    assert result.texts == ("v=spf1 -all",)
    assert result.canonical_name == "real.example.test"


def test_cname_loop_is_a_permanent_error(dns_server: DNSServer, resolver: Resolver) -> None:
    """A CNAME loop is an error in the data (RFC 1034 §3.6.2), not worth retrying."""
    dns_server.add("loop1.example.test", "CNAME", "loop2.example.test.")
    dns_server.add("loop2.example.test", "CNAME", "loop1.example.test.")
    result = resolver.query_sync("loop1.example.test", "A")
    assert result.status == "permerror"
    assert "CNAME" in result.detail


def test_malformed_names_are_permerror_without_a_query(
    dns_server: DNSServer, resolver: Resolver
) -> None:
    """A label over 63 octets or an empty label never reaches the wire."""
    assert resolver.query_sync("a" * 64 + ".example.test", "TXT").status == "permerror"
    assert resolver.query_sync("a..example.test", "TXT").status == "permerror"
    assert resolver.query_sync("example.test", "NOSUCHTYPE").status == "permerror"
    assert dns_server.query_count() == 0


# -- failures ------------------------------------------------------------------------------


async def test_timeout_is_temperror_quickly(dns_server: DNSServer, resolver: Resolver) -> None:
    """A server that never answers gives temperror within the budget, not an exception."""
    dns_server.timeout("slow.example.test")
    started = time.monotonic()
    result = await resolver.txt("slow.example.test")
    assert result.status == "temperror"
    assert "timeout" in result.detail
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    assert resolver.txt_sync("slow.example.test").status == "temperror"
    assert time.monotonic() - started < 2.0


def test_timeout_of_one_type_only(dns_server: DNSServer, resolver: Resolver) -> None:
    """A per-type timeout leaves the other types of the name answering."""
    dns_server.add("half.example.test", "TXT", "ok")
    dns_server.timeout("half.example.test", "SPF")
    assert resolver.txt_sync("half.example.test").texts == ("ok",)
    assert resolver.query_sync("half.example.test", "SPF").status == "temperror"


async def test_servfail_is_temperror(dns_server: DNSServer, resolver: Resolver) -> None:
    """SERVFAIL means try later (RFC 7208 §5 / RFC 7489 §6.6.2), never 'no record'."""
    dns_server.add("broken.example.test", "TXT", "present")
    dns_server.servfail("broken.example.test")
    result = await resolver.txt("broken.example.test")
    assert result.status == "temperror"
    assert "SERVFAIL" in result.detail


def test_temporary_failures_are_not_cached(dns_server: DNSServer, resolver: Resolver) -> None:
    """Once the server recovers, the next lookup sees the record."""
    dns_server.add("flaky.example.test", "TXT", "back")
    dns_server.servfail("flaky.example.test")
    assert resolver.txt_sync("flaky.example.test").status == "temperror"
    dns_server.heal("flaky.example.test")
    assert resolver.txt_sync("flaky.example.test").texts == ("back",)


def test_no_nameserver_listening_is_temperror() -> None:
    """A closed port (nothing listening on loopback) is a temporary error."""
    with DNSServer() as server:
        address = server.address
    result = Resolver(DNSSettings(nameservers=[address], timeout_seconds=0.5)).txt_sync("x.test")
    assert result.status == "temperror"


# -- cache ---------------------------------------------------------------------------------


async def test_cache_hit_does_not_query_again(dns_server: DNSServer, resolver: Resolver) -> None:
    """The second lookup, async or sync, is answered from the cache."""
    dns_server.add("cached.example.test", "TXT", "v=spf1 -all")
    first = await resolver.txt("cached.example.test")
    second = await resolver.txt("CACHED.example.test.")
    third = resolver.txt_sync("cached.example.test")
    assert first == second == third
    assert dns_server.query_count("cached.example.test", "TXT") == 1


def test_cache_honours_ttl_expiry(dns_server: DNSServer, resolver: Resolver) -> None:
    """A record with TTL 1 is asked for again once the second has passed."""
    dns_server.add("short.example.test", "TXT", "one", ttl=1)
    assert resolver.txt_sync("short.example.test").texts == ("one",)
    assert resolver.txt_sync("short.example.test").texts == ("one",)
    assert dns_server.query_count("short.example.test") == 1
    dns_server.remove("short.example.test", "TXT")
    dns_server.add("short.example.test", "TXT", "two", ttl=1)
    time.sleep(1.1)
    assert resolver.txt_sync("short.example.test").texts == ("two",)
    assert dns_server.query_count("short.example.test") == 2


def test_negative_answers_cached_by_soa_minimum() -> None:
    """NXDOMAIN is cached for the SOA minimum (RFC 2308 §5), then asked again."""
    with DNSServer(negative_ttl=1) as server:
        resolver = Resolver(server.settings(timeout_seconds=0.5))
        assert resolver.txt_sync("gone.example.test").status == "nxdomain"
        assert resolver.txt_sync("gone.example.test").ttl == 1
        assert server.query_count("gone.example.test") == 1
        time.sleep(1.1)
        server.add("gone.example.test", "TXT", "here now")
        assert resolver.txt_sync("gone.example.test").texts == ("here now",)
        assert server.query_count("gone.example.test") == 2


def test_cache_is_bounded(dns_server: DNSServer) -> None:
    """The least recently used entry is dropped when the cache is full."""
    resolver = Resolver(dns_server.settings(timeout_seconds=0.5), cache_size=2)
    for name in ("a", "b", "c"):
        dns_server.add(f"{name}.example.test", "TXT", name)
        resolver.txt_sync(f"{name}.example.test")
    assert resolver.cache_size == 2
    resolver.txt_sync("a.example.test")
    assert dns_server.query_count("a.example.test") == 2
    resolver.txt_sync("c.example.test")
    assert dns_server.query_count("c.example.test") == 1


async def test_cache_is_shared_between_threads_and_loop(
    dns_server: DNSServer, resolver: Resolver
) -> None:
    """Worker threads and the event loop hit one cache; concurrent use is safe."""
    for i in range(20):
        dns_server.add(f"n{i}.example.test", "A", f"192.0.2.{i + 1}")
    results = await asyncio.gather(
        *(asyncio.to_thread(resolver.query_sync, f"n{i}.example.test", "A") for i in range(20)),
        *(resolver.query(f"n{i}.example.test", "A") for i in range(20)),
    )
    assert all(r.status == "ok" for r in results)
    assert {r.records for r in results[:20]} == {(f"192.0.2.{i + 1}",) for i in range(20)}
    before = dns_server.query_count()
    await resolver.query("n5.example.test", "A")
    assert dns_server.query_count() == before


# -- wire details --------------------------------------------------------------------------


def test_long_txt_is_split_and_truncation_falls_back_to_tcp(
    dns_server: DNSServer, resolver: Resolver
) -> None:
    """A TXT over 255 octets is several strings; an answer too big for UDP comes over TCP."""
    value = "v=DKIM1; p=" + "A" * 3000
    dns_server.add("big.example.test", "TXT", value)
    response = dns.query.udp(
        dns.message.make_query("big.example.test", "TXT", use_edns=0, payload=4096),
        "127.0.0.1",
        port=dns_server.port,
        timeout=2,
    )
    strings = response.answer[0][0].strings
    assert [len(s) for s in strings] == [255] * 11 + [len(value) - 255 * 11]
    dns_server.reset_queries()
    result = resolver.txt_sync("big.example.test")
    assert result.texts == (value,)
    assert dns_server.query_count("big.example.test", transport="udp") == 1
    assert dns_server.query_count("big.example.test", transport="tcp") == 1


def test_txt_character_strings_are_kept_per_record(
    dns_server: DNSServer, resolver: Resolver
) -> None:
    """Each TXT record's strings come back as published, beside the joined text."""
    dns_server.add("split.example.test", "TXT", ["v=DKIM1; p=AB", "CD"])
    dns_server.add("split.example.test", "TXT", "x" * 300)
    result = resolver.txt_sync("split.example.test")
    by_text = dict(zip(result.texts, result.strings, strict=True))
    assert by_text == {
        "v=DKIM1; p=ABCD": (b"v=DKIM1; p=AB", b"CD"),
        "x" * 300: (b"x" * 255, b"x" * 45),
    }
    assert resolver.mx_sync("split.example.test").strings == ()


def test_plain_udp_query_gets_tc_bit(dns_server: DNSServer) -> None:
    """Without EDNS, an answer over 512 octets is truncated with TC set (RFC 1035 §4.2.1)."""
    dns_server.add("big.example.test", "TXT", "x" * 600)
    query = dns.message.make_query("big.example.test", "TXT")
    response = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert response.flags & dns.flags.TC
    assert not response.answer
    full = dns.query.tcp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert b"".join(full.answer[0][0].strings) == b"x" * 600
    assert full.flags & dns.flags.AA


def test_non_utf8_txt_bytes_round_trip(dns_server: DNSServer, resolver: Resolver) -> None:
    """Bytes that aren't UTF-8 survive decoding, so SPF can reject them as non-ASCII."""
    dns_server.add("odd.example.test", "TXT", b"v=spf1 \x96all")
    (record,) = resolver.txt_sync("odd.example.test").texts
    assert text_bytes(record) == b"v=spf1 \x96all"


def test_zone_text_and_spf_type(dns_server: DNSServer, resolver: Resolver) -> None:
    """Zone-file text is served as written, including type 99 (SPF) records."""
    dns_server.add_zone_text(
        """
        $ORIGIN zone.test.
        @      600 IN SPF "v=spf1 a -all"
        @          IN A   192.0.2.7
        www        IN CNAME @
        """
    )
    spf_result = resolver.query_sync("zone.test", "SPF")
    assert spf_result.texts == ("v=spf1 a -all",)
    assert spf_result.ttl == 600
    assert resolver.query_sync("www.zone.test", "A").records == ("192.0.2.7",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:53", ("::1", 53)),
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
    ],
)
def test_parse_nameserver(value: str, expected: tuple[str, int]) -> None:
    """Configured name servers accept HOST:PORT, [IPv6]:PORT and bare addresses."""
    assert parse_nameserver(value) == expected


@pytest.mark.parametrize("value", ["dns.example:53", "[::1]53", "127.0.0.1:0", "127.0.0.1:x"])
def test_parse_nameserver_rejects(value: str) -> None:
    """A name server given by name, or with a bad port, is refused at start."""
    with pytest.raises(ValueError):
        parse_nameserver(value)


# -- pyspf ---------------------------------------------------------------------------------


def test_spf_pass_and_fail_through_our_server(dns_server: DNSServer, resolver: Resolver) -> None:
    """pyspf answers from our server: ip4 match passes, anything else hits -all."""
    dns_server.add("example.test", "TXT", "v=spf1 ip4:192.0.2.0/24 include:_spf.example.test -all")
    dns_server.add("_spf.example.test", "TXT", "v=spf1 a:relay.example.test -all")
    dns_server.add("relay.example.test", "A", "198.51.100.5")
    assert resolver.spf_check("192.0.2.44", "a@example.test", "mx.example.test")[0] == "pass"
    assert resolver.spf_check("198.51.100.5", "a@example.test", "mx.example.test")[0] == "pass"
    assert resolver.spf_check("203.0.113.9", "a@example.test", "mx.example.test")[0] == "fail"
    assert dns_server.query_count("example.test", "TXT") == 1  # later checks hit the cache
    with resolver.spf_context():
        assert spf.check2("192.0.2.1", "b@example.test", "h.example.test")[0] == "pass"


def test_spf_timeout_is_temperror(dns_server: DNSServer, resolver: Resolver) -> None:
    """A DNS timeout during an SPF check gives temperror (RFC 7208 §4.4), not an exception."""
    dns_server.timeout("slow.example.test")
    assert resolver.spf_check("192.0.2.1", "a@slow.example.test", "h")[0] == "temperror"


def test_spf_without_a_bound_resolver_never_uses_system_dns(resolver: Resolver) -> None:
    """Outside spf_context, pyspf's lookups fail as temperror instead of asking elsewhere."""
    with resolver.spf_context():
        pass  # installs the adapter
    assert spf.check2("192.0.2.1", "a@example.test", "h.example.test")[0] == "temperror"


def test_two_resolvers_in_threads_keep_their_own_servers() -> None:
    """The pyspf hook is per context: concurrent checks each use their own resolver."""
    with DNSServer() as one, DNSServer() as two:
        one.add("example.test", "TXT", "v=spf1 +all")
        two.add("example.test", "TXT", "v=spf1 -all")
        results: dict[str, list[str]] = {"one": [], "two": []}

        def run(label: str, server: DNSServer) -> None:
            resolver = Resolver(server.settings(timeout_seconds=0.5), cache_size=0)
            for _ in range(20):
                results[label].append(resolver.spf_check("192.0.2.1", "a@example.test", "h")[0])

        threads = [
            threading.Thread(target=run, args=("one", one)),
            threading.Thread(target=run, args=("two", two)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {"one": ["pass"] * 20, "two": ["fail"] * 20}


# -- dkimpy --------------------------------------------------------------------------------

MESSAGE = (
    b"From: Client <client@example.test>\r\n"
    b"To: richard@acme.test\r\n"
    b"Subject: Quote\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Please find the quote attached.\r\n"
)


def _rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def _ed25519_key() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed), f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [(_rsa_key, b"rsa-sha256"), (_ed25519_key, b"ed25519-sha256")],
    ids=["rsa2048", "ed25519"],
)
def test_dkim_verifies_through_our_dnsfunc(
    dns_server: DNSServer, resolver: Resolver, make_key: object, algorithm: bytes
) -> None:
    """A signature made with a published key verifies; without the key it fails."""
    private, record = make_key()  # type: ignore[operator]
    dns_server.add("sel._domainkey.example.test", "TXT", record)
    signature = dkim.sign(MESSAGE, b"sel", b"example.test", private, signature_algorithm=algorithm)
    signed = signature + MESSAGE
    assert dkim.verify(signed, dnsfunc=resolver.dkim_dnsfunc)
    assert not dkim.verify(
        signed.replace(b"quote attached", b"invoice attached"), dnsfunc=resolver.dkim_dnsfunc
    )
    dns_server.remove("sel._domainkey.example.test")
    resolver.clear_cache()
    assert not dkim.verify(signed, dnsfunc=resolver.dkim_dnsfunc)


def test_dkim_key_timeout_raises_temp_error(dns_server: DNSServer, resolver: Resolver) -> None:
    """A key lookup that times out surfaces as DNSTempError, so the caller says temperror."""
    private, _record = _rsa_key()
    signed = dkim.sign(MESSAGE, b"sel", b"example.test", private) + MESSAGE
    dns_server.timeout("sel._domainkey.example.test")
    with pytest.raises(DNSTempError) as caught:
        dkim.verify(signed, dnsfunc=resolver.dkim_dnsfunc)
    assert caught.value.result.status == "temperror"


def test_dkim_dnsfunc_shapes(dns_server: DNSServer, resolver: Resolver) -> None:
    """dkimpy gets bytes for a record and None for a missing or non-ASCII name."""
    dns_server.add("k._domainkey.example.test", "TXT", "v=DKIM1; p=abc")
    assert resolver.dkim_dnsfunc(b"k._domainkey.example.test.") == b"v=DKIM1; p=abc"
    assert resolver.dkim_dnsfunc(b"none._domainkey.example.test.") is None
    assert resolver.dkim_dnsfunc("é._domainkey.example.test.".encode()) is None


# -- our package doesn't shadow the libraries ----------------------------------------------


def test_libraries_load_from_outside_our_source_tree() -> None:
    """`import dns` is dnspython, not mailledger.dns; spf and dkim are the installed ones."""
    import dns as dnspython

    for module in (dnspython, spf, dkim):
        assert module.__file__ is not None
        assert not Path(module.__file__).resolve().is_relative_to(SRC), module.__file__
    assert hasattr(dnspython, "resolver") and hasattr(dnspython.resolver, "Resolver")
    assert DNSResult.__module__ == "mailledger.dnsauth.resolver"


# -- organizational domains ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("a.b.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),
        ("Mail.Example.COM.", "example.com"),
        ("example.com", "example.com"),
        ("com", "com"),
        ("x.y.example.test", "example.test"),
        ("foo.bar.github.io", "bar.github.io"),
        ("mail.bücher.de", "bücher.de"),
    ],
)
def test_organizational_domain(domain: str, expected: str) -> None:
    """RFC 7489 §3.2: the public suffix plus one label; a suffix is its own org domain."""
    assert organizational_domain(domain) == expected
