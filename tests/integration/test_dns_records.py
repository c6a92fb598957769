"""The records customers and we publish: SPF merging, TXT splitting, zone lines, the command."""

from __future__ import annotations

import json
from pathlib import Path

import dns.zone
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.domains.records import relay_mechanisms, service_spf, tenant_records
from mailledger.domains.spfrecord import SpfSyntaxError, combined_record, merged_record, parse_terms
from mailledger.domains.zonetext import character_strings, txt_value, zone_line
from mailledger.store.directory import find_tenant
from mailledger.store.secretbox import SecretBox
from mailledger.testing.dnsserver import DNSServer

INCLUDE = "_spf.capture.example"


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, f"v=spf1 include:{INCLUDE} ~all"),
        ("v=spf1 -all", f"v=spf1 include:{INCLUDE} -all"),
        ("v=spf1 mx a:out.example ~all", f"v=spf1 mx a:out.example include:{INCLUDE} ~all"),
        ("v=spf1 ip4:192.0.2.1", f"v=spf1 ip4:192.0.2.1 include:{INCLUDE}"),
        ("v=spf1 mx redirect=x.example", f"v=spf1 mx include:{INCLUDE} redirect=x.example"),
        ("v=spf1 mx exp=why.example -all", f"v=spf1 mx include:{INCLUDE} exp=why.example -all"),
        (f"v=spf1  include:{INCLUDE}   -all", f"v=spf1 include:{INCLUDE} -all"),
    ],
)
def test_our_include_is_merged_into_the_existing_record(
    existing: str | None, expected: str
) -> None:
    """Ours goes before all and the modifiers, where it is evaluated; never twice."""
    assert merged_record(existing, INCLUDE) == expected


def test_several_records_combine_into_one() -> None:
    """Two records become one, whatever order DNS returned them in."""
    a, b = "v=spf1 mx -all", "v=spf1 ip4:192.0.2.9 mx ~all"
    expected = f"v=spf1 ip4:192.0.2.9 mx include:{INCLUDE} ~all"
    assert combined_record([a, b], INCLUDE) == combined_record([b, a], INCLUDE) == expected


@pytest.mark.parametrize(
    "record",
    ["v=spf10 -all", "v=spf1 bogus:x -all", "v=spf1 include -all", "v=spf1 ~redirect=x"],
)
def test_malformed_spf_terms_are_named(record: str) -> None:
    """Syntax errors (RFC 7208 §4.6) are caught before counting lookups."""
    with pytest.raises(SpfSyntaxError):
        parse_terms(record)


def test_character_strings_split_at_255_bytes_never_inside_a_character() -> None:
    """RFC 1035 §3.3: strings of at most 255 octets; UTF-8 sequences stay whole."""
    assert [len(s) for s in character_strings("x" * 600)] == [255, 255, 90]
    pieces = character_strings("a" * 254 + "é" + "b")
    assert pieces == ["a" * 254, "éb"]
    assert character_strings("") == [""]
    assert txt_value('say "hi"\\') == '"say \\"hi\\"\\\\"'


def test_zone_lines_parse_back_to_the_same_record() -> None:
    """A printed line, read by a zone-file parser, gives back the record joined exactly."""
    value = "v=DKIM1; k=rsa; p=" + "A" * 392
    line = zone_line("s1._domainkey.acme.example", "TXT", value)
    zone = dns.zone.from_text(line, origin=".", relativize=False, check_origin=False)
    (_name, rdataset), *_ = list(zone.iterate_rdatasets())
    (rdata,) = list(rdataset)
    assert [len(s) for s in rdata.strings] == [255, 155]
    assert b"".join(rdata.strings).decode() == value


def test_service_spf_from_relay_addresses(settings: Settings) -> None:
    """Our include lists each relay address or network and ends in -all."""
    assert relay_mechanisms(["192.0.2.10", "2001:db8::1", "198.51.100.0/28"]) == [
        "ip4:192.0.2.10",
        "ip6:2001:db8::1",
        "ip4:198.51.100.0/28",
    ]
    service = settings.service.model_copy(update={"relay_addresses": ["192.0.2.10"]})
    assert service_spf(settings.model_copy(update={"service": service})) == (
        "v=spf1 ip4:192.0.2.10 -all"
    )


@pytest.fixture
def live(settings: Settings, dns_server: DNSServer, tmp_path: Path) -> Settings:
    """Settings with the test DNS server, a relay address and a key directory."""
    return settings.model_copy(
        update={
            "dns": dns_server.settings(timeout_seconds=0.3),
            "service": settings.service.model_copy(update={"relay_addresses": ["192.0.2.10"]}),
            "relay": settings.relay.model_copy(update={"dkim_key_dir": str(tmp_path / "dkim")}),
        }
    )


def test_tenant_records_merge_the_live_spf_record(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, demo: DemoAddresses
) -> None:
    """The SPF suggestion is their current record plus ours; keys and DMARC follow."""
    dns_server.add("acme.example", "TXT", "v=spf1 mx -all")
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        box = SecretBox.from_file(live.secrets.key_file)
        key = keys.create_key(session, tenant, "acme.example", box)
        records = tenant_records(session, tenant, live, Resolver(live.dns))
    by_kind = {r.kind: r for r in records}
    assert [r.kind for r in records] == ["spf", "dkim", "dmarc", "mx"]
    assert by_kind["spf"].value == f"v=spf1 mx include:{INCLUDE} -all"
    assert by_kind["spf"].note == "replaces the current record"
    assert by_kind["dkim"].name == f"{key.selector}._domainkey.acme.example"
    assert by_kind["dkim"].as_dict()["strings"] == character_strings(key.public_record)
    assert by_kind["dmarc"].value == "v=DMARC1; p=none; adkim=r; aspf=r"
    assert by_kind["mx"].zone() == "acme.capture.example.\t3600\tIN\tMX\t10 mx.capture.example."

    dns_server.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=quarantine")
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        again = tenant_records(session, tenant, live, Resolver(live.dns))
    assert "dmarc" not in {r.kind for r in again}  # theirs stays


def test_records_command_formats(
    dns_server: DNSServer,
    demo: DemoAddresses,
    live: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dns records` prints text, zone-file lines (which parse) and JSON; --service ours."""
    config = tmp_path / "records.toml"
    config.write_text(
        f'[database]\nurl = "{live.database.url}"\n'
        f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout_seconds = 0.3\n'
        f'[relay]\ndkim_key_dir = "{tmp_path / "dkim"}"\n'
        f'[secrets]\nkey_file = "{live.secrets.key_file}"\n'
        '[service]\nrelay_addresses = ["192.0.2.10"]\n',
        encoding="utf-8",
    )

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *argv])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    assert run("dkim", "keygen", "acme", "acme.example", "--algorithm", "ed25519")[0] == 0
    code, text = run("dns", "records", "acme", "--format", "zone")
    assert code == 0, text
    zone = dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)
    names = sorted({n.to_text() for n, _ in zone.iterate_rdatasets()})
    assert names[0] == "_dmarc.acme.example." and "acme.capture.example." in names
    code, text = run("dns", "records", "acme", "--format", "json")
    data = json.loads(text)
    assert {d["kind"] for d in data} == {"spf", "dkim", "dmarc", "mx"}
    assert next(d for d in data if d["kind"] == "dkim")["value"].startswith("v=DKIM1; k=ed25519")
    code, text = run("dns", "records", "acme")
    assert code == 0 and f"include:{INCLUDE} ~all" in text and "(new record)" in text
    code, text = run("dns", "records", "--service", "--format", "zone")
    assert code == 0
    assert f'{INCLUDE}.\t3600\tIN\tTXT\t"v=spf1 ip4:192.0.2.10 -all"' in text
    assert "acme.capture.example.\t3600\tIN\tMX\t10 mx.capture.example." in text
    code, text = run("dns", "records")
    assert code == 1 and "name a tenant, or give --service" in text
