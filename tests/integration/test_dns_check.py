"""The live DNS check against the test DNS server: each broken set-up is named in one line with
the record that fixes it, and publishing that record makes the check pass."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.domains.check import RecordCheck, all_ok, check_tenant
from mailledger.store.directory import find_tenant
from mailledger.store.models import DkimKey
from mailledger.store.secretbox import SecretBox
from mailledger.testing.cli import exit_and_output
from mailledger.testing.dnsserver import DNSServer

RELAY = "192.0.2.10"
INCLUDE = "_spf.capture.example"
DOMAIN = "acme.example"
CAPTURE = "acme.capture.example"
TXT = dns.rdatatype.TXT


def _settings(settings: Settings, nameserver: str, tmp_path: Path) -> Settings:
    service = settings.service.model_copy(
        update={
            "relay_addresses": [RELAY],
            "spf_include_domain": INCLUDE,
            "hostname": "mx.capture.example",
        }
    )
    relay = settings.relay.model_copy(update={"dkim_key_dir": str(tmp_path / "dkim")})
    dns_settings = settings.dns.model_copy(
        update={"nameservers": [nameserver], "timeout_seconds": 0.3}
    )
    return settings.model_copy(update={"service": service, "relay": relay, "dns": dns_settings})


@pytest.fixture
def live(settings: Settings, dns_server: DNSServer, tmp_path: Path) -> Settings:
    """Settings whose resolver asks only the test DNS server."""
    return _settings(settings, dns_server.address, tmp_path)


@pytest.fixture
def key(sessions: sessionmaker[Session], demo: DemoAddresses, live: Settings) -> DkimKey:
    """acme.example's RSA key, selector s1."""
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        box = SecretBox.from_file(live.secrets.key_file)
        made = keys.create_key(session, tenant, DOMAIN, box, selector="s1")
        session.expunge(made)
    return made


def _clean(server: DNSServer, key: DkimKey) -> None:
    """Everything right: our include, the customer's SPF, DKIM, DMARC and the capture MX."""
    server.add(INCLUDE, "TXT", f"v=spf1 ip4:{RELAY} -all")
    server.add(DOMAIN, "TXT", f"v=spf1 include:{INCLUDE} ~all")
    server.add(DOMAIN, "TXT", "google-site-verification=abc")
    server.add(f"s1._domainkey.{DOMAIN}", "TXT", key.public_record)
    server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject; rua=mailto:d@acme.example")
    server.add(CAPTURE, "MX", (10, "mx.capture.example"))


def _check(sessions: sessionmaker[Session], live: Settings) -> dict[str, RecordCheck]:
    """A fresh check (a new resolver, so nothing cached), keyed by record kind."""
    with sessions.begin() as session:
        results = check_tenant(session, find_tenant(session, "acme"), live, Resolver(live.dns))
    by_kind = {r.kind: r for r in results}
    assert len(by_kind) == len(results) == 4, results
    return by_kind


def _publish(server: DNSServer, fix: str) -> None:
    """Publish a fix line the way an admin would: it replaces the name's records of its type,
    except that a new SPF record leaves the name's other TXT records (site verifications)."""
    zone = dns.zone.from_text(fix, origin=".", relativize=False, check_origin=False)
    for name, rdataset in zone.iterate_rdatasets():
        owner = name.to_text()
        kept: list[bytes] = []
        new_text = b"".join(next(iter(rdataset)).strings) if rdataset.rdtype == TXT else b""
        if new_text.lower().startswith(b"v=spf1"):
            node = server.zone.nodes.get(name, {})
            texts = [b"".join(rd.strings) for rd in node.get(TXT, [])]
            kept = [t for t in texts if not t.lower().startswith(b"v=spf1")]
        server.remove(owner, rdataset.rdtype)
        for text in kept:
            server.add(owner, "TXT", text)
    server.add_zone_text(fix)


def _fix_and_pass(
    server: DNSServer, sessions: sessionmaker[Session], live: Settings, kind: str
) -> None:
    result = _check(sessions, live)[kind]
    assert result.fix, result
    _publish(server, result.fix)
    after = _check(sessions, live)
    assert all_ok(after.values()), after


def test_clean_domain_passes_and_verifies_the_key(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """All four records are ok, and the check marks the key verified for signing."""
    _clean(dns_server, key)
    results = _check(sessions, live)
    assert all(r.status == "ok" for r in results.values()), results
    assert results["spf"].reason == (
        f"includes {INCLUDE}; 1/10 lookups, 0/2 void; passes for {RELAY}"
    )
    assert results["dkim"].reason.endswith("; signing uses it")
    assert results["dmarc"].reason == "p=reject; relayed mail passes: SPF and DKIM aligned"
    assert all(r.fix == "" for r in results.values())
    with sessions() as session:
        assert keys.signing_key(session, DOMAIN) is not None


def test_existing_spf_record_gets_our_include_merged_in(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """A record without our include is fixed by the same record with include: added."""
    _clean(dns_server, key)
    dns_server.remove(DOMAIN, "TXT")
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx ip4:198.51.100.0/24 -all")
    dns_server.add(DOMAIN, "MX", (10, "mail.acme.example"))
    dns_server.add("mail.acme.example", "A", "198.51.100.5")
    spf = _check(sessions, live)["spf"]
    assert spf.status == "wrong"
    assert spf.reason == f"our include:{INCLUDE} is missing; SPF {RELAY} gets fail"
    assert spf.fix == (
        f'{DOMAIN}.\t3600\tIN\tTXT\t"v=spf1 mx ip4:198.51.100.0/24 include:{INCLUDE} -all"'
    )
    _fix_and_pass(dns_server, sessions, live, "spf")


def test_no_spf_record(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """A domain without SPF is told to publish a new record with our include."""
    _clean(dns_server, key)
    dns_server.remove(DOMAIN, "TXT")
    spf = _check(sessions, live)["spf"]
    assert (spf.status, spf.reason) == ("missing", f"no SPF record at {DOMAIN}")
    assert f'"v=spf1 include:{INCLUDE} ~all"' in spf.fix
    _fix_and_pass(dns_server, sessions, live, "spf")


def test_two_spf_records_are_merged_into_one(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """Two SPF records are a permerror; the fix is one record holding both and our include."""
    _clean(dns_server, key)
    dns_server.add(DOMAIN, "TXT", "v=spf1 ip4:203.0.113.7 -all")
    spf = _check(sessions, live)["spf"]
    assert spf.status == "wrong"
    assert spf.reason.startswith(f"2 SPF records at {DOMAIN} (permerror: one is allowed)")
    # One record: both records' terms, our include, and the softer of their two all terms.
    assert f'"v=spf1 include:{INCLUDE} ip4:203.0.113.7 ~all"' in spf.fix
    _fix_and_pass(dns_server, sessions, live, "spf")


def test_include_chain_over_the_lookup_limit_is_flattened(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """Lookups are counted through nested includes; the fix flattens the address-only chain."""
    _clean(dns_server, key)
    dns_server.remove(DOMAIN, "TXT")
    nested = " ".join(f"include:n{i}.esp.example" for i in range(10))
    dns_server.add("esp.example", "TXT", f"v=spf1 {nested} -all")
    for i in range(10):
        dns_server.add(f"n{i}.esp.example", "TXT", f"v=spf1 ip4:203.0.113.{i} -all")
    dns_server.add(DOMAIN, "TXT", f"v=spf1 include:esp.example include:{INCLUDE} -all")
    spf = _check(sessions, live)["spf"]
    assert spf.status == "wrong"
    assert spf.reason.startswith(
        "12 DNS-querying terms through includes (over 10: permerror, RFC 7208 §4.6.4)"
    )
    assert "ip4:203.0.113.0 ip4:203.0.113.1" in spf.fix
    assert f"ip4:203.0.113.9 include:{INCLUDE} -all" in spf.fix
    _fix_and_pass(dns_server, sessions, live, "spf")


def test_void_lookups_over_two(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """Three terms naming nothing are three void lookups; the fix drops them."""
    _clean(dns_server, key)
    dns_server.remove(DOMAIN, "TXT")
    dns_server.add(
        DOMAIN,
        "TXT",
        f"v=spf1 a:gone1.acme.example mx:gone2.acme.example a:gone3.acme.example "
        f"include:{INCLUDE} ~all",
    )
    spf = _check(sessions, live)["spf"]
    assert spf.status == "wrong"
    assert spf.reason.startswith("3 void lookups (over 2: permerror, RFC 7208 §4.6.4)")
    assert f'"v=spf1 include:{INCLUDE} ~all"' in spf.fix
    _fix_and_pass(dns_server, sessions, live, "spf")


def test_plus_all_and_redirect_loop(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """+all is named as letting anyone pass; a redirect= loop is shown as its path."""
    _clean(dns_server, key)
    dns_server.remove(DOMAIN, "TXT")
    dns_server.add(DOMAIN, "TXT", f"v=spf1 include:{INCLUDE} +all")
    spf = _check(sessions, live)["spf"]
    assert spf.reason == "+all lets every host on the internet pass as this domain"
    assert f'"v=spf1 include:{INCLUDE} ~all"' in spf.fix
    _fix_and_pass(dns_server, sessions, live, "spf")

    dns_server.remove(DOMAIN, "TXT")
    dns_server.add(DOMAIN, "TXT", "v=spf1 redirect=spf.loop.example")
    dns_server.add("spf.loop.example", "TXT", f"v=spf1 redirect={DOMAIN}")
    spf = _check(sessions, live)["spf"]
    assert spf.status == "wrong"
    assert spf.reason.startswith(
        f"loop: {DOMAIN} → spf.loop.example → {DOMAIN}; our include:{INCLUDE} is missing"
    )
    _fix_and_pass(dns_server, sessions, live, "spf")


def test_our_include_not_published_points_at_our_record(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """When the customer's record is right but SPF fails, the fix is our include record."""
    _clean(dns_server, key)
    dns_server.remove(INCLUDE, "TXT")
    dns_server.add(INCLUDE, "TXT", "v=spf1 ip4:192.0.2.99 -all")
    spf = _check(sessions, live)["spf"]
    assert (
        spf.reason == f"SPF does not pass: {RELAY} gets softfail; is {INCLUDE} published as below?"
    )
    assert spf.fix == f'{INCLUDE}.\t3600\tIN\tTXT\t"v=spf1 ip4:{RELAY} -all"'
    _fix_and_pass(dns_server, sessions, live, "spf")


@pytest.mark.parametrize(
    "case",
    [
        ("other", "the key at s1._domainkey.acme.example does not match our private key"),
        ("truncated", "the key at s1._domainkey.acme.example is split badly: p= stops after"),
        ("two-records", "2 TXT records at s1._domainkey.acme.example"),
        ("missing", "no DKIM key record at s1._domainkey.acme.example"),
    ],
)
def test_dkim_wrong_key_split_badly_or_missing(
    dns_server: DNSServer,
    sessions: sessionmaker[Session],
    live: Settings,
    key: DkimKey,
    case: tuple[str, str],
) -> None:
    """Each broken key record is named; publishing the fix verifies the key."""
    published, reason = case
    _clean(dns_server, key)
    name = f"s1._domainkey.{DOMAIN}"
    dns_server.remove(name, "TXT")
    if published == "other":
        other = keys.generate_key_material("rsa").public_b64
        dns_server.add(name, "TXT", keys.key_record("rsa", other))
    elif published == "truncated":
        dns_server.add(name, "TXT", key.public_record[:255])
    elif published == "two-records":
        dns_server.add(name, "TXT", key.public_record[:255])
        dns_server.add(name, "TXT", key.public_record[255:])
    results = _check(sessions, live)
    assert results["dkim"].status == ("missing" if published == "missing" else "wrong")
    assert results["dkim"].reason.startswith(reason)
    # Without a verified key DMARC still passes here, through aligned SPF.
    assert results["dmarc"].status == "ok"
    with sessions() as session:
        assert keys.signing_key(session, DOMAIN) is None
    _fix_and_pass(dns_server, sessions, live, "dkim")
    with sessions() as session:
        assert keys.signing_key(session, DOMAIN) is not None


def test_domain_without_a_key_is_told_to_make_one(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, demo: DemoAddresses
) -> None:
    """No key generated yet is a missing DKIM record with the command that makes one."""
    dns_server.add(DOMAIN, "TXT", f"v=spf1 include:{INCLUDE} ~all")
    dkim = _check(sessions, live)["dkim"]
    assert dkim.status == "missing"
    assert (
        dkim.reason == f"no DKIM key for {DOMAIN} yet: run `mailledger dkim keygen acme {DOMAIN}`"
    )


def test_dmarc_absent_gets_a_suggestion(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """No DMARC record: the fix is a p=none record to start with."""
    _clean(dns_server, key)
    dns_server.remove(f"_dmarc.{DOMAIN}", "TXT")
    dmarc = _check(sessions, live)["dmarc"]
    assert (dmarc.status, dmarc.reason) == ("missing", f"no DMARC record at _dmarc.{DOMAIN}")
    assert dmarc.fix == f'_dmarc.{DOMAIN}.\t3600\tIN\tTXT\t"v=DMARC1; p=none; adkim=r; aspf=r"'
    _fix_and_pass(dns_server, sessions, live, "dmarc")


def test_dmarc_reject_without_aligned_pass_would_reject_their_mail(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """p=reject with neither SPF nor DKIM passing aligned is named; p=none is the stopgap, and
    fixing SPF and DKIM instead makes p=reject safe again."""
    _clean(dns_server, key)
    dns_server.remove(DOMAIN, "TXT")
    dns_server.add(DOMAIN, "TXT", "v=spf1 ip4:198.51.100.1 -all")
    dns_server.remove(f"s1._domainkey.{DOMAIN}", "TXT")
    results = _check(sessions, live)
    dmarc = results["dmarc"]
    assert dmarc.status == "wrong"
    assert dmarc.reason.startswith(
        f"p=reject would reject mail we relay as {DOMAIN}: neither aligned SPF "
        f"(SPF {RELAY} gets fail) nor aligned DKIM (no verified key) passes"
    )
    assert dmarc.fix == (
        f'_dmarc.{DOMAIN}.\t3600\tIN\tTXT\t"v=DMARC1; p=none; rua=mailto:d@acme.example"'
    )
    _publish(dns_server, dmarc.fix)
    assert _check(sessions, live)["dmarc"].status == "ok"
    _publish(dns_server, results["spf"].fix)
    _publish(dns_server, results["dkim"].fix)
    _publish(dns_server, f'_dmarc.{DOMAIN}. 300 IN TXT "v=DMARC1; p=reject"')
    assert all_ok(_check(sessions, live).values())


def test_malformed_dmarc(
    dns_server: DNSServer, sessions: sessionmaker[Session], live: Settings, key: DkimKey
) -> None:
    """A DMARC record with a bad policy is named and replaced."""
    _clean(dns_server, key)
    dns_server.remove(f"_dmarc.{DOMAIN}", "TXT")
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=block")
    dmarc = _check(sessions, live)["dmarc"]
    assert dmarc.reason == (
        f"malformed DMARC record at _dmarc.{DOMAIN}: p=block is not none, quarantine or reject"
    )
    _fix_and_pass(dns_server, sessions, live, "dmarc")


@pytest.mark.parametrize(
    "case",
    [
        (None, f"no MX record for {CAPTURE}"),
        ([(10, "mail.other.example")], f"MX of {CAPTURE} points at mail.other.example, not"),
        ([(10, "mx.capture.example"), (20, "backup.example")], "also points at backup.example"),
        ([(0, "")], "null MX (RFC 7505)"),
    ],
)
def test_capture_mx(
    dns_server: DNSServer,
    sessions: sessionmaker[Session],
    live: Settings,
    key: DkimKey,
    case: tuple[list[tuple[int, str]] | None, str],
) -> None:
    """The capture domain must point at our host, and only at it."""
    mx, reason = case
    _clean(dns_server, key)
    dns_server.remove(CAPTURE, "MX")
    for value in mx or []:
        dns_server.add(CAPTURE, "MX", value)
    result = _check(sessions, live)["mx"]
    assert result.status == ("missing" if mx is None else "wrong")
    assert reason in result.reason
    assert result.fix == f"{CAPTURE}.\t3600\tIN\tMX\t10 mx.capture.example."
    _fix_and_pass(dns_server, sessions, live, "mx")


def test_unreachable_name_server_says_so_quickly(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path, key: DkimKey
) -> None:
    """A name server that never answers gives 'could not look up …: timeout' lines, fast."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        dead = _settings(settings, f"127.0.0.1:{silent.getsockname()[1]}", tmp_path)
        started = time.monotonic()
        results = _check(sessions, dead)
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert [r.status for r in results.values()] == ["error"] * 4
    assert results["spf"].reason.startswith(f"could not look up {DOMAIN}: timeout")
    assert results["mx"].reason.startswith(f"could not look up {CAPTURE}: timeout")
    assert not all_ok(results.values())


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def config(live: Settings, tmp_path: Path) -> Path:
    """A configuration file for the CLI: the test database, DNS server and key directory."""
    path = tmp_path / "dns.toml"
    path.write_text(
        f"""
[database]
url = "{live.database.url}"
[storage]
blob_dir = "{tmp_path / "blobs"}"
[dns]
nameservers = {live.dns.nameservers!r}
timeout_seconds = 0.3
[relay]
dkim_key_dir = "{live.relay.dkim_key_dir}"
[secrets]
key_file = "{live.secrets.key_file}"
[service]
hostname = "mx.capture.example"
spf_include_domain = "{INCLUDE}"
relay_addresses = ["{RELAY}"]
""".replace("'", '"'),
        encoding="utf-8",
    )
    return path


def test_check_command_exit_status_and_output(
    dns_server: DNSServer,
    key: DkimKey,
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dns check` prints one line per record plus the fix, and exits 0 only when all is ok."""
    _clean(dns_server, key)
    dns_server.remove(f"_dmarc.{DOMAIN}", "TXT")
    code, text = exit_and_output(config, capsys, "dns", "check", "acme")
    assert code == 1
    lines = text.splitlines()
    assert lines[0] == "DNS check of acme (tenant acme): 1 problem(s)"
    assert any(line.startswith("missing  dmarc _dmarc.acme.example") for line in lines)
    assert any(
        line.strip() == f'publish: _dmarc.{DOMAIN}.\t3600\tIN\tTXT\t"v=DMARC1; p=none; '
        'adkim=r; aspf=r"'
        for line in lines
    )
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none")
    code, text = exit_and_output(config, capsys, "dns", "check", "acme")
    assert code == 0, text
    assert text.splitlines()[0] == "DNS check of acme (tenant acme): all records ok"

    code, text = exit_and_output(config, capsys, "dns", "check", DOMAIN, "--json")
    assert code == 0
    assert '"kind": "mx"' not in text and '"kind": "dkim"' in text
    code, text = exit_and_output(config, capsys, "dns", "check", CAPTURE, "--json")
    assert code == 0
    assert '"kind": "mx"' in text and '"kind": "spf"' not in text
    code, text = exit_and_output(config, capsys, "dns", "check", "nobody")
    assert code == 1 and "no tenant named 'nobody'" in text


def test_keygen_rotate_list_retire_commands(
    dns_server: DNSServer,
    demo: DemoAddresses,
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """keygen prints the record; rotate switches signing only after the check sees the new
    record; the old key keeps verifying until retired."""
    code, text = exit_and_output(
        config, capsys, "dkim", "keygen", "acme", DOMAIN, "--selector", "one"
    )
    assert code == 0, text
    assert f"one._domainkey.{DOMAIN}.\t3600\tIN\tTXT\t" in text
    code, text = exit_and_output(config, capsys, "dkim", "keygen", "acme", "client.example")
    assert code == 1 and "not a customer domain of tenant 'acme'" in text
    code, text = exit_and_output(
        config, capsys, "dkim", "rotate", "acme", DOMAIN, "--selector", "two"
    )
    assert code == 0, text

    code, text = exit_and_output(config, capsys, "dkim", "list", "acme", "--json")
    rows = {row["selector"]: row for row in json.loads(text)}
    assert rows["one"]["active"] and not rows["two"]["active"]
    assert rows["one"]["verified_at"] is None
    assert {row["private_key"] for row in rows.values()} == {"database"}
    assert "PRIVATE KEY" not in text

    dns_server.add(INCLUDE, "TXT", f"v=spf1 ip4:{RELAY} -all")
    dns_server.add(DOMAIN, "TXT", f"v=spf1 include:{INCLUDE} ~all")
    dns_server.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=none")
    dns_server.add(CAPTURE, "MX", (10, "mx.capture.example"))
    dns_server.add(f"one._domainkey.{DOMAIN}", "TXT", rows["one"]["record"])
    code, text = exit_and_output(config, capsys, "dns", "check", "acme")
    assert code == 1  # the new key is not published yet
    assert f"missing  dkim  two._domainkey.{DOMAIN}" in text
    assert "signing uses it" in text

    dns_server.add(f"two._domainkey.{DOMAIN}", "TXT", rows["two"]["record"])
    code, text = exit_and_output(config, capsys, "dns", "check", "acme")
    assert code == 0, text
    assert "signing switched to it" in text
    code, text = exit_and_output(config, capsys, "dkim", "list", "acme", "--json")
    rows = {row["selector"]: row for row in json.loads(text)}
    assert rows["two"]["active"] and not rows["one"]["active"]
    assert rows["one"]["verified_at"] is not None  # still published, still verifying

    code, text = exit_and_output(config, capsys, "dkim", "retire", "acme", DOMAIN, "two")
    assert code == 1 and "is the active key" in text
    code, text = exit_and_output(config, capsys, "dkim", "retire", "acme", DOMAIN, "one")
    assert code == 0, text
    dns_server.remove(f"one._domainkey.{DOMAIN}")
    code, text = exit_and_output(config, capsys, "dns", "check", "acme")
    assert code == 0, text
    code, text = exit_and_output(config, capsys, "dkim", "list", "acme")
    assert "one" in text and "two" in text


def test_check_command_tells_a_dns_failure_from_a_wrong_record(
    dns_server: DNSServer,
    key: DkimKey,
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 1 means "a record is wrong"; DNS failing (SERVFAIL, time-out) is exit 2, said apart."""
    _clean(dns_server, key)
    assert exit_and_output(config, capsys, "dns", "check", "acme")[0] == 0

    dns_server.servfail(f"_dmarc.{DOMAIN}")
    capsys.readouterr()
    code = main(["--config", str(config), "dns", "check", "acme"])
    captured = capsys.readouterr()
    assert code == 2
    assert any(line.startswith("error    dmarc") for line in captured.out.splitlines())
    assert "DNS failed for 1 of 4 record(s)" in captured.err
    assert "says nothing about whether they are right" in captured.err

    dns_server.heal()
    dns_server.timeout(CAPTURE, "MX")
    code, text = exit_and_output(config, capsys, "dns", "check", "acme", "--json")
    assert code == 2
    assert '"lookup_failed": true' in text and "timeout" in text

    dns_server.heal()
    dns_server.remove(f"_dmarc.{DOMAIN}", "TXT")
    code, text = exit_and_output(config, capsys, "dns", "check", "acme")
    assert code == 1 and "DNS failed" not in text


def test_name_server_that_is_not_an_address_is_a_configuration_error(
    config: Path, capsys: pytest.CaptureFixture[str], demo: DemoAddresses
) -> None:
    """`nameservers = ["not-an-ip"]` is exit 2 with the line check-config prints, no traceback."""
    broken = config.with_name("broken.toml")
    text = config.read_text(encoding="utf-8")
    broken.write_text(
        re.sub(r"nameservers = .*", 'nameservers = ["not-an-ip"]', text), encoding="utf-8"
    )
    for argv in (["dns", "check", "acme"], ["dns", "records", "acme"]):
        code, out = exit_and_output(broken, capsys, *argv)
        assert code == 2
        assert out.startswith("mailledger: [dns] nameservers: 'not-an-ip' is not an IP address")
        assert "Traceback" not in out
