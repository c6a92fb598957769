"""The live DNS check: each record a tenant needs, looked up now, judged, with the fix.

One :class:`RecordCheck` per record (SPF, each DKIM key, DMARC per customer domain; the capture
domain's MX), each ``ok``, ``missing``, ``wrong`` or ``error`` (we could not look it up), with
a one-line reason and the zone-file line that fixes it. Lookups go through the one resolver
with its timeouts, so a dead name server gives "could not look up …: timeout", never a hang.
This check is also the only place a DKIM key becomes verified for signing.

"A record is wrong" and "we could not look" are different problems for whoever runs the
check: the first needs a DNS change, the second needs nothing but another try (or a working
name server). A verdict that DNS itself failed (time-out, SERVFAIL) says so in
``lookup_failed``, and ``mailledger dns check`` gives it an exit status of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy.orm import Session

from mailledger.config import Settings
from mailledger.dnsauth.orgdomain import organizational_domain
from mailledger.dnsauth.resolver import DNSResult, Resolver
from mailledger.domains.keys import (
    DkimKeyError,
    domain_keys,
    record_check,
    record_name,
    settle_active,
    verify_key_published,
)
from mailledger.domains.records import DMARC_SUGGESTION, mx_value, service_spf
from mailledger.domains.spfrecord import (
    MAX_LOOKUPS,
    MAX_VOID_LOOKUPS,
    combined_record,
    merged_record,
    probe_address,
    repaired_record,
    spf_records,
    walk_record,
)
from mailledger.domains.zonetext import zone_line
from mailledger.store.models import Tenant
from mailledger.verify.dmarc import aligned
from mailledger.verify.dmarc import parse_record as parse_dmarc

Status = Literal["ok", "missing", "wrong", "error"]
_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """One record's verdict: what is wrong, in one line, and the zone-file line that fixes it."""

    kind: str  # spf, dkim, dmarc, mx
    domain: str
    name: str
    status: Status
    reason: str
    fix: str = ""
    # DNS failed (time-out, SERVFAIL): the record's state is unknown, not wrong.
    lookup_failed: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing needs doing for this record."""
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        """The verdict for ``--json``."""
        return {
            "kind": self.kind,
            "domain": self.domain,
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "fix": self.fix,
            "lookup_failed": self.lookup_failed,
        }


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The SPF verdict and whether every relay address passes (for DMARC)."""

    check: RecordCheck
    passes: bool
    summary: str


def _lookup_failure(kind: str, domain: str, result: DNSResult) -> RecordCheck:
    detail = result.detail or result.status
    return RecordCheck(
        kind,
        domain,
        result.name,
        "error",
        f"could not look up {result.name}: {detail}",
        lookup_failed=True,
    )


# --- SPF --------------------------------------------------------------------------------------


def _evaluate(resolver: Resolver, domain: str, settings: Settings) -> tuple[list[str], list[str]]:
    """check_host() for each relay address (RFC 7208 §4); returns (failures, temp errors)."""
    failures: list[str] = []
    errors: list[str] = []
    for value in settings.service.relay_addresses:
        ip = probe_address(value)
        result, explanation = resolver.spf_check(ip, f"postmaster@{domain}", domain)
        if result == "temperror":
            errors.append(f"could not evaluate SPF for {ip}: {explanation or 'timeout'}")
        elif result != "pass":
            failures.append(f"{ip} gets {result}")
    return failures, errors


def check_spf(resolver: Resolver, domain: str, settings: Settings) -> SpfOutcome:
    """The domain's one SPF record: present, including ours, within limits, passing."""
    include = settings.service.spf_include_domain.lower().rstrip(".")
    found = resolver.txt_sync(domain)
    if found.status in ("temperror", "permerror"):
        return SpfOutcome(_lookup_failure("spf", domain, found), False, "SPF not looked up")
    records = spf_records(found)
    if not records:
        fix = zone_line(domain, "TXT", merged_record(None, include))
        check = RecordCheck("spf", domain, domain, "missing", f"no SPF record at {domain}", fix)
        return SpfOutcome(check, False, "no SPF record")
    problems: list[str] = []
    if len(records) > 1:
        # RFC 7208 §4.5: more than one record is a permerror for every receiver.
        problems.append(f"{len(records)} SPF records at {domain} (permerror: one is allowed)")
        text = combined_record(records, include)
    else:
        text = records[0]
    walk = walk_record(resolver, domain, text)
    if walk.failures:
        check = RecordCheck("spf", domain, domain, "error", walk.failures[0], lookup_failed=True)
        return SpfOutcome(check, False, "SPF not evaluated")
    if any(c.term.name == "all" and c.term.qualifier == "+" for c in walk.terms):
        problems.append("+all lets every host on the internet pass as this domain")
    problems.extend(f"loop: {loop}" for loop in walk.loops)
    if not walk.reaches(include):
        problems.append(f"our include:{include} is missing")
    if walk.lookups > MAX_LOOKUPS:
        problems.append(
            f"{walk.lookups} DNS-querying terms through includes "
            f"(over {MAX_LOOKUPS}: permerror, RFC 7208 §4.6.4)"
        )
    if walk.voids > MAX_VOID_LOOKUPS:
        problems.append(
            f"{walk.voids} void lookups (over {MAX_VOID_LOOKUPS}: permerror, RFC 7208 §4.6.4)"
        )
    problems.extend(walk.problems)
    failures, errors = _evaluate(resolver, domain, settings)
    if errors and not problems:
        check = RecordCheck("spf", domain, domain, "error", errors[0], lookup_failed=True)
        return SpfOutcome(check, False, errors[0])
    passes = not failures and not errors
    summary = "SPF passes" if passes else "SPF " + ", ".join(failures or errors)
    repaired, _changes = repaired_record(walk, include)
    fix = zone_line(domain, "TXT", repaired)
    if failures and not problems:
        # Their record is right; what fails is our include (not published or out of date).
        reason = f"SPF does not pass: {', '.join(failures)}; is {include} published as below?"
        fix = zone_line(include, "TXT", service_spf(settings))
        return SpfOutcome(RecordCheck("spf", domain, domain, "wrong", reason, fix), False, summary)
    if problems:
        if failures:
            problems.append("SPF " + ", ".join(failures))
        reason = "; ".join(problems)
        return SpfOutcome(RecordCheck("spf", domain, domain, "wrong", reason, fix), passes, summary)
    relays = ", ".join(probe_address(a) for a in settings.service.relay_addresses)
    evaluated = f"passes for {relays}" if relays else "not evaluated: no [service] relay_addresses"
    reason = (
        f"includes {include}; {walk.lookups}/{MAX_LOOKUPS} lookups, "
        f"{walk.voids}/{MAX_VOID_LOOKUPS} void; {evaluated}"
    )
    return SpfOutcome(RecordCheck("spf", domain, domain, "ok", reason), passes, summary)


# --- DKIM -------------------------------------------------------------------------------------


def check_dkim(
    session: Session, tenant: Tenant, domain: str, resolver: Resolver
) -> tuple[list[RecordCheck], bool]:
    """Every unretired key of the domain; records what was seen and switches signing to the
    newest verified key (rotation). Returns the verdicts and whether signing can use a key.
    """
    keys = domain_keys(session, tenant, domain)
    if not keys:
        reason = (
            f"no DKIM key for {domain} yet: run `mailledger dkim keygen {tenant.name} {domain}`"
        )
        check = RecordCheck("dkim", domain, f"_domainkey.{domain}", "missing", reason)
        return [check], False
    before = next((k.id for k in keys if k.active), None)
    results: list[tuple[int, RecordCheck]] = []
    for key in keys:
        name = record_name(key.selector, domain)
        try:
            seen = verify_key_published(resolver, key)
        except DkimKeyError as exc:
            results.append((key.id, RecordCheck("dkim", domain, name, "error", str(exc))))
            continue
        record_check(key, seen)
        failed = seen.status == "error"  # judge_key_record: the lookup failed
        results.append(
            (
                key.id,
                RecordCheck(
                    "dkim", domain, name, seen.status, seen.reason, seen.fix, lookup_failed=failed
                ),
            )
        )
    active = settle_active(session, tenant, domain)
    checks: list[RecordCheck] = []
    for key_id, seen_check in results:
        check = seen_check
        if active is not None and key_id == active.id and check.ok:
            note = "; signing switched to it" if key_id != before else "; signing uses it"
            check = replace(check, reason=check.reason + note)
        checks.append(check)
    usable = active is not None and active.verified_at is not None
    return checks, usable


# --- DMARC ------------------------------------------------------------------------------------


def _dmarc_problem(tags: dict[str, str]) -> str:
    """What makes a DMARC record unusable (RFC 7489 §6.3), or ""."""
    if tags.get("p") not in _POLICIES:
        return (
            f"p={tags.get('p', '')!s} is not none, quarantine or reject"
            if "p" in tags
            else "no p= tag"
        )
    if "sp" in tags and tags["sp"] not in _POLICIES:
        return f"sp={tags['sp']} is not none, quarantine or reject"
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag] not in ("r", "s"):
            return f"{tag}={tags[tag]} is not r or s"
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        return f"pct={tags['pct']} is not 0-100"
    return ""


def _with_policy(text: str, policy: str) -> str:
    """The same record with p= (and sp=, which applies to subdomains) set to ``policy``."""
    pieces = [p.strip() for p in text.split(";") if p.strip()]
    out: list[str] = []
    for piece in pieces:
        tag = piece.split("=", 1)[0].strip().lower()
        out.append(f"{tag}={policy}" if tag in ("p", "sp") else piece)
    return "; ".join(out)


def _dmarc_records(result: DNSResult) -> list[str]:
    # Anything that starts like a DMARC record counts, so a malformed one is reported.
    return [t for t in result.texts if t.strip().lower().startswith("v=dmarc1")]


def check_dmarc(resolver: Resolver, domain: str, spf: SpfOutcome, dkim_usable: bool) -> RecordCheck:
    """The domain's DMARC record: present, well-formed, not rejecting what we relay for it."""
    name = f"_dmarc.{domain}"
    suggestion = zone_line(name, "TXT", DMARC_SUGGESTION)
    found = resolver.txt_sync(name)
    if found.status in ("temperror", "permerror"):
        return _lookup_failure("dmarc", domain, found)
    records = _dmarc_records(found)
    source, at_org = name, False
    if not records:
        # RFC 7489 §6.6.3: without a record at the domain, the organisational domain's applies.
        org = organizational_domain(domain)
        if org != domain:
            org_found = resolver.txt_sync(f"_dmarc.{org}")
            if org_found.status in ("temperror", "permerror"):
                return _lookup_failure("dmarc", domain, org_found)
            records, source, at_org = _dmarc_records(org_found), f"_dmarc.{org}", True
    if not records:
        return RecordCheck(
            "dmarc", domain, name, "missing", f"no DMARC record at {name}", suggestion
        )
    if len(records) > 1:
        reason = (
            f"{len(records)} DMARC records at {source}: receivers ignore them all (RFC 7489 §6.6.3)"
        )
        return RecordCheck(
            "dmarc", domain, source, "wrong", reason, zone_line(source, "TXT", DMARC_SUGGESTION)
        )
    text = records[0]
    tags = parse_dmarc(text)
    problem = "v=DMARC1 must come first" if tags is None else _dmarc_problem(tags)
    if tags is None or problem:
        reason = f"malformed DMARC record at {source}: {problem}"
        return RecordCheck(
            "dmarc", domain, source, "wrong", reason, zone_line(source, "TXT", DMARC_SUGGESTION)
        )
    policy = tags.get("sp", tags["p"]) if at_org else tags["p"]
    # Relayed mail has MAIL FROM postmaster@<domain> and a DKIM signature with d=<domain>.
    spf_aligned = spf.passes and aligned(domain, domain, tags.get("aspf", "r"))
    dkim_aligned = dkim_usable and aligned(domain, domain, tags.get("adkim", "r"))
    inherited = f" (from {source})" if at_org else ""
    if policy != "none" and not (spf_aligned or dkim_aligned):
        reason = (
            f"p={policy}{inherited} would {policy} mail we relay as {domain}: neither aligned SPF "
            f"({spf.summary}) nor aligned DKIM (no verified key) passes; fix those, or publish"
        )
        fix = zone_line(source, "TXT", _with_policy(text, "none"))
        return RecordCheck("dmarc", domain, source, "wrong", reason, fix)
    passing = [n for n, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok]
    how = (
        " and ".join(passing) + " aligned"
        if passing
        else "nothing aligned yet, harmless under p=none"
    )
    return RecordCheck(
        "dmarc", domain, source, "ok", f"p={policy}{inherited}; relayed mail passes: {how}"
    )


# --- MX ---------------------------------------------------------------------------------------


def check_mx(resolver: Resolver, capture_domain: str, settings: Settings) -> RecordCheck:
    """The capture domain's MX: ours only (mail to another host never reaches us)."""
    ours = settings.service.hostname.lower().rstrip(".")
    fix = zone_line(capture_domain, "MX", mx_value(settings))
    found = resolver.mx_sync(capture_domain)
    if found.status in ("temperror", "permerror"):
        return _lookup_failure("mx", capture_domain, found)
    if found.status != "ok" or not found.exchanges:
        return RecordCheck(
            "mx",
            capture_domain,
            capture_domain,
            "missing",
            f"no MX record for {capture_domain}",
            fix,
        )
    hosts = [host for _pref, host in found.exchanges]
    if hosts == ["."]:
        reason = f"{capture_domain} has a null MX (RFC 7505): it refuses all mail"
        return RecordCheck("mx", capture_domain, capture_domain, "wrong", reason, fix)
    if ours not in hosts:
        reason = f"MX of {capture_domain} points at {', '.join(hosts)}, not {ours}"
        return RecordCheck("mx", capture_domain, capture_domain, "wrong", reason, fix)
    others = [h for h in hosts if h != ours]
    if others:
        reason = (
            f"MX of {capture_domain} also points at {', '.join(others)}: "
            "mail sent there is not captured"
        )
        return RecordCheck("mx", capture_domain, capture_domain, "wrong", reason, fix)
    return RecordCheck("mx", capture_domain, capture_domain, "ok", f"MX points at {ours}")


# --- everything for a tenant ------------------------------------------------------------------


def check_domain(
    session: Session, tenant: Tenant, domain: str, settings: Settings, resolver: Resolver
) -> list[RecordCheck]:
    """SPF, DKIM and DMARC of one customer domain."""
    spf = check_spf(resolver, domain, settings)
    dkim_checks, dkim_usable = check_dkim(session, tenant, domain, resolver)
    dmarc = check_dmarc(resolver, domain, spf, dkim_usable)
    return [spf.check, *dkim_checks, dmarc]


def check_tenant(
    session: Session,
    tenant: Tenant,
    settings: Settings,
    resolver: Resolver,
    *,
    domains: Iterable[str] | None = None,
    capture: bool = True,
) -> list[RecordCheck]:
    """Every record the tenant needs (or those of ``domains``), in a stable order."""
    wanted = None if domains is None else {d.lower().rstrip(".") for d in domains}
    results: list[RecordCheck] = []
    for row in sorted(tenant.customer_domains, key=lambda d: d.domain):
        if wanted is None or row.domain in wanted:
            results.extend(check_domain(session, tenant, row.domain, settings, resolver))
    if capture:
        results.append(check_mx(resolver, tenant.capture_domain, settings))
    return results


def all_ok(results: Iterable[RecordCheck]) -> bool:
    """True when every record is as it should be (exit status 0 for monitoring)."""
    return all(r.ok for r in results)


def lookup_failures(results: Iterable[RecordCheck]) -> list[RecordCheck]:
    """The verdicts DNS could not give (time-out, SERVFAIL): not known to be right or wrong."""
    return [r for r in results if r.lookup_failed]


def lookup_failure_summary(results: Sequence[RecordCheck], settings: Settings) -> str:
    """What to tell whoever ran the check when DNS itself failed ("" when it did not).

    One sentence for the CLI, the API and the DNS page: which records could not be looked up,
    which name servers were asked, and that nothing is known to be wrong.
    """
    failed = lookup_failures(results)
    if not failed:
        return ""
    servers = ", ".join(settings.dns.nameservers) or "the system resolver"
    return (
        f"DNS failed for {len(failed)} of {len(results)} record(s) (asking {servers}): "
        "they could not be checked, which says nothing about whether they are right; "
        "try again, or check [dns] nameservers"
    )
