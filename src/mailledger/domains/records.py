"""The records to publish: ours (the SPF include, the capture domains' MX) and each tenant's.

A customer's DNS admin gets, per domain, the SPF record to have (their existing one with our
include merged in: a domain has one SPF record, RFC 7208 §3.2), each DKIM key's TXT record,
a DMARC record when they have none, and the capture domain's MX (DESIGN §7).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.keys import domain_keys, record_name
from mailledger.domains.spfrecord import combined_record, merged_record, spf_records
from mailledger.domains.zonetext import character_strings, zone_line
from mailledger.store.models import Tenant
from mailledger.verify.dmarc import parse_record as parse_dmarc

MX_PREFERENCE: Final = 10
# RFC 7489 §6.3: p=none asks for reports without affecting delivery, the safe first step;
# relaxed alignment (the default, spelled out) lets subdomains of the domain align.
DMARC_SUGGESTION: Final = "v=DMARC1; p=none; adkim=r; aspf=r"


@dataclass(frozen=True, slots=True)
class Publish:
    """One record to publish: where, what, and why."""

    kind: str  # spf, dkim, dmarc, mx
    name: str
    rdtype: str
    value: str
    note: str = ""

    def zone(self) -> str:
        """The record as a zone-file line."""
        return zone_line(self.name, self.rdtype, self.value)

    def as_dict(self) -> dict[str, Any]:
        """The record for ``--format json``; TXT values also as their 255-byte strings."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "type": self.rdtype,
            "value": self.value,
            "note": self.note,
        }
        if self.rdtype == "TXT":
            data["strings"] = character_strings(self.value)
        return data


def relay_mechanisms(addresses: list[str]) -> list[str]:
    """``ip4:``/``ip6:`` terms for the relay's addresses or networks (RFC 7208 §5.6)."""
    terms: list[str] = []
    for value in addresses:
        network = ipaddress.ip_network(value.strip(), strict=False)
        kind = "ip4" if network.version == 4 else "ip6"
        whole = network.prefixlen == network.max_prefixlen
        terms.append(
            f"{kind}:{network.network_address}" + ("" if whole else f"/{network.prefixlen}")
        )
    return terms


def service_spf(settings: Settings) -> str:
    """Our include record: the relay's addresses, then ``-all``.

    ``-all`` inside an include only makes the include not match (RFC 7208 §5.2), so it never
    fails the customer's other senders; it keeps our record from vouching for anyone else.
    """
    return " ".join(["v=spf1", *relay_mechanisms(settings.service.relay_addresses), "-all"])


def mx_value(settings: Settings) -> str:
    """The MX data pointing a capture domain at us."""
    return f"{MX_PREFERENCE} {settings.service.hostname.rstrip('.')}."


def service_records(session: Session, settings: Settings) -> list[Publish]:
    """What we publish ourselves: the SPF include and every capture domain's MX."""
    records: list[Publish] = []
    if settings.service.relay_addresses:
        records.append(
            Publish(
                "spf",
                settings.service.spf_include_domain,
                "TXT",
                service_spf(settings),
                "customers add include:" + settings.service.spf_include_domain,
            )
        )
    for domain in session.scalars(select(Tenant.capture_domain).order_by(Tenant.capture_domain)):
        records.append(Publish("mx", domain, "MX", mx_value(settings), "capture domain"))
    return records


def tenant_records(
    session: Session, tenant: Tenant, settings: Settings, resolver: Resolver
) -> list[Publish]:
    """What the tenant's DNS admin publishes; the current SPF and DMARC records are looked up.

    When a lookup fails temporarily the SPF suggestion is a new record, noted as such, since
    merging needs the existing one.
    """
    records: list[Publish] = []
    include = settings.service.spf_include_domain
    for row in sorted(tenant.customer_domains, key=lambda d: d.domain):
        domain = row.domain
        found = resolver.txt_sync(domain)
        existing = spf_records(found)
        if found.status == "temperror":
            note = (
                f"could not look up the current record ({found.detail or 'timeout'}): merge by hand"
            )
            records.append(Publish("spf", domain, "TXT", merged_record(None, include), note))
        elif len(existing) > 1:
            note = f"replaces the {len(existing)} SPF records (only one is allowed)"
            records.append(Publish("spf", domain, "TXT", combined_record(existing, include), note))
        elif existing:
            merged = merged_record(existing[0], include)
            note = (
                "already has our include"
                if merged == " ".join(existing[0].split())
                else "replaces the current record"
            )
            records.append(Publish("spf", domain, "TXT", merged, note))
        else:
            records.append(
                Publish("spf", domain, "TXT", merged_record(None, include), "new record")
            )
        for key in domain_keys(session, tenant, domain):
            state = "active" if key.active else "next (rotation)"
            verified = "verified" if key.verified_at else "not verified yet"
            records.append(
                Publish(
                    "dkim",
                    record_name(key.selector, domain),
                    "TXT",
                    key.public_record,
                    f"{key.algorithm}, {state}, {verified}",
                )
            )
        dmarc = resolver.txt_sync(f"_dmarc.{domain}")
        if dmarc.status == "temperror":
            note = f"could not look up the current record ({dmarc.detail or 'timeout'})"
            records.append(Publish("dmarc", f"_dmarc.{domain}", "TXT", DMARC_SUGGESTION, note))
        elif not [t for t in dmarc.texts if parse_dmarc(t) is not None]:
            records.append(
                Publish(
                    "dmarc",
                    f"_dmarc.{domain}",
                    "TXT",
                    DMARC_SUGGESTION,
                    "suggested: none published",
                )
            )
    records.append(Publish("mx", tenant.capture_domain, "MX", mx_value(settings), "capture domain"))
    return records
