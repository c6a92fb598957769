"""The last live DNS check of each of a tenant's domains, kept in the database.

``mailledger dns check``, ``POST /v1/dns/check`` and the admin DNS page's "Check now" all call
:func:`record_check` after a check, in the check's own transaction; the DNS page and
``GET /v1/dns/records`` read :func:`last_checks`. Kept here, not in a server's memory, so a
restart, another node on the same PostgreSQL, or the CLI's check shows on the page.

One row per (tenant, domain), replaced by the next check of that domain: the last snapshot of
DNS, not a history, so nothing grows and nothing needs pruning. A check of one domain (``dns
check acme.com``) replaces that domain's row and leaves the others as they were.

The verdicts are plain data (``domains.check.RecordCheck.as_dict``): the store sits below the
check and knows only their shape. A verdict whose lookup failed (time-out, SERVFAIL) is kept
with ``lookup_failed`` set: DNS did not answer, which says nothing about the record.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailledger.store.models import CustomerDomain, DnsCheck, Tenant, utcnow

# The keys of one verdict, as domains.check.RecordCheck.as_dict gives them.
RESULT_KEYS = ("kind", "domain", "name", "status", "reason", "fix", "lookup_failed")
STATUSES = frozenset({"ok", "missing", "wrong", "error"})
# The longest actor the column holds (store.models.DnsCheck.actor).
MAX_ACTOR_CHARS = 200

Outcome = Literal["ok", "wrong", "unanswered"]


class CheckedBy(enum.StrEnum):
    """What ran a check."""

    CLI = "cli"  # mailledger dns check
    API = "api"  # POST /v1/dns/check
    PAGE = "page"  # the admin DNS page's Check now


@dataclass(frozen=True, slots=True)
class LastCheck:
    """The last check of one domain: when, by what (and whom), and each record's verdict."""

    domain: str
    checked_at: datetime
    checked_by: CheckedBy
    actor: str
    results: tuple[dict[str, Any], ...]

    @property
    def outcome(self) -> Outcome:
        """``ok``; ``wrong`` when a record needs a DNS change; ``unanswered`` when nothing is
        known to be wrong but DNS did not answer for some record (try again)."""
        if any(r["status"] != "ok" and not r["lookup_failed"] for r in self.results):
            return "wrong"
        if any(r["lookup_failed"] for r in self.results):
            return "unanswered"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        """The check for the API (``last_check`` of a domain in ``GET /v1/dns/records``)."""
        return {
            "checked_at": self.checked_at.isoformat(),
            "checked_by": self.checked_by.value,
            "actor": self.actor,
            "outcome": self.outcome,
            "results": [dict(r) for r in self.results],
        }


def _verdict(result: Mapping[str, Any]) -> dict[str, Any]:
    """One verdict as it is stored: exactly the known keys, checked, the domain normalised."""
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"a DNS check result lacks {', '.join(missing)}: {dict(result)!r}")
    if result["status"] not in STATUSES:
        raise ValueError(f"a DNS check result has status {result['status']!r}")
    verdict = {key: result[key] for key in RESULT_KEYS}
    verdict["domain"] = str(result["domain"]).lower().rstrip(".")
    verdict["lookup_failed"] = bool(result["lookup_failed"])
    return verdict


def _row(row: DnsCheck) -> LastCheck:
    return LastCheck(
        domain=row.domain,
        checked_at=row.checked_at,
        checked_by=CheckedBy(row.checked_by),
        actor=row.actor,
        results=tuple(dict(r) for r in row.results),
    )


def _tenant_domains(session: Session, tenant_id: int) -> set[str]:
    """The domains a tenant's checks are about: its customer domains and its capture domain."""
    customer = session.scalars(
        select(CustomerDomain.domain).where(CustomerDomain.tenant_id == tenant_id)
    ).all()
    capture = session.scalars(select(Tenant.capture_domain).where(Tenant.id == tenant_id)).all()
    return {*customer, *capture}


def record_check(
    session: Session,
    tenant_id: int,
    results: Iterable[Mapping[str, Any]],
    *,
    by: CheckedBy,
    actor: str = "",
    now: datetime | None = None,
) -> dict[str, LastCheck]:
    """Keep a check's verdicts as the last check of each domain they name; returns those.

    Each domain's row is replaced whole (``INSERT … ON CONFLICT DO UPDATE``, atomic on SQLite
    and PostgreSQL, so two nodes checking at once leave one row, the later one). Rows of
    domains the tenant no longer has go at the same time.
    """
    at = now or utcnow()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        verdict = _verdict(result)
        grouped.setdefault(verdict["domain"], []).append(verdict)
    who = actor[:MAX_ACTOR_CHARS]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    for domain, verdicts in grouped.items():
        values = {
            "tenant_id": tenant_id,
            "domain": domain,
            "checked_at": at,
            "checked_by": by.value,
            "actor": who,
            "results": verdicts,
        }
        statement = dialect.insert(DnsCheck).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=[DnsCheck.tenant_id, DnsCheck.domain],
            set_={
                key: statement.excluded[key] for key in values if key not in ("tenant_id", "domain")
            },
        )
        session.execute(statement)
    current = _tenant_domains(session, tenant_id)
    session.execute(
        delete(DnsCheck).where(DnsCheck.tenant_id == tenant_id, DnsCheck.domain.not_in(current))
    )
    return {
        domain: LastCheck(domain, at, by, who, tuple(verdicts))
        for domain, verdicts in grouped.items()
    }


def last_checks(session: Session, tenant_id: int) -> dict[str, LastCheck]:
    """The last check of each of the tenant's domains that was ever checked, by domain."""
    rows = session.scalars(select(DnsCheck).where(DnsCheck.tenant_id == tenant_id)).all()
    return {row.domain: _row(row) for row in rows}


__all__ = ["CheckedBy", "LastCheck", "Outcome", "last_checks", "record_check"]
