"""Routing a recipient domain to the addresses to dial (RFC 5321 §5.1, RFC 7505).

MX records come through our resolver, in preference order with equal preferences shuffled; no
MX records means the domain itself (implicit MX); a null MX (``0 .``, RFC 7505) fails at once
with ``556 5.1.10``. An address literal (``[192.0.2.1]``, ``[IPv6:…]``) is dialled as written.
Each host's addresses are dialled on ``[relay] smtp_port``. A smarthost (``[relay] smarthost``)
replaces all of that: one host, on its own port.

The decisions are plain functions over DNS answers (:func:`by_preference`, :func:`mx_hosts`,
:func:`address_literal`, :func:`without_addresses`), tested without sockets; :class:`Router`
asks the questions.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mailledger.config import RelaySettings, split_listen
from mailledger.dnsauth.resolver import DNSResult, Resolver
from mailledger.mail.replies import Reply, parse_reply
from mailledger.relay.outcomes import Deferred, Failed, Target

# RFC 5321 §5.1 lets a client limit how many addresses it tries per attempt; Postfix tries 5
# MX addresses by default. Ten covers a primary and backups on both address families.
MAX_ADDRESSES_PER_ATTEMPT: Final = 10

# Replies we make up for decisions taken without a remote reply.
NULL_MX = Reply(556, "5.1.10", "recipient domain does not accept mail (null MX, RFC 7505)")
NO_DOMAIN = Reply(550, "5.1.2", "recipient domain does not exist")
NO_ADDRESS = Reply(550, "5.4.4", "recipient domain has no MX and no address records")


@dataclass(frozen=True, slots=True)
class MXHosts:
    """The host names to look up, in the order to try them.

    ``implicit`` when the domain is its own mail host because it has no MX records: then a
    domain without addresses cannot take mail at all (see :func:`without_addresses`).
    """

    names: tuple[str, ...]
    implicit: bool


def by_preference(
    records: Sequence[tuple[int, str]], *, rng: random.Random | None = None
) -> list[str]:
    """MX hosts in preference order, equal preferences in random order (RFC 5321 §5.1).

    A host listed twice is tried once, at its best preference. ``rng`` makes the order
    repeatable in tests; the default is the module's generator.
    """
    shuffle = rng.shuffle if rng is not None else random.shuffle
    groups: dict[int, list[str]] = {}
    for preference, exchange in records:
        groups.setdefault(preference, []).append(exchange)
    hosts: list[str] = []
    for preference in sorted(groups):
        group = groups[preference]
        shuffle(group)  # load spreading among equals, not security
        hosts.extend(h for h in group if h not in hosts)
    return hosts


def address_literal(domain: str, port: int) -> Target | Failed | None:
    """The target a ``[address]`` domain names (RFC 5321 §4.1.3); None for a domain name."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    literal = domain[1:-1]
    literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        return Failed(Reply(550, "5.1.2", f"bad address literal {domain}"))
    return Target(domain, literal, port)


def mx_hosts(domain: str, mx: DNSResult) -> MXHosts | Failed | Deferred:
    """What ``domain``'s MX answer says: the hosts to look up, or why there are none."""
    if mx.status == "ok":
        records = mx.exchanges
        hosts = [exchange for _, exchange in records if exchange != "."]
        if not hosts:
            return Failed(NULL_MX)  # RFC 7505 §3: don't even try the domain itself
        return MXHosts(tuple(by_preference(records)), implicit=False)
    if mx.status == "nodata":
        # RFC 5321 §5.1: no MX records, so the domain itself is the one host (implicit MX).
        return MXHosts((domain,), implicit=True)
    if mx.status == "nxdomain":
        return Failed(NO_DOMAIN)
    return Deferred(None, Reply(451, "4.4.3", f"MX lookup for {domain}: {mx.status} {mx.detail}"))


def without_addresses(
    hosts: Sequence[str], *, implicit: bool, missing: int, problems: Sequence[str]
) -> Failed | Deferred:
    """Why no host had an address: ``missing`` lookups said none exist, ``problems`` failed.

    Only an implicit MX whose every lookup said "no such records" is permanent (RFC 5321
    §5.1): the domain names no mail host at all. An MX host without addresses, or a lookup
    that failed, may be fixed before the schedule runs out.
    """
    if implicit and not problems and missing:
        return Failed(NO_ADDRESS)
    detail = "; ".join(problems) or "no address records for " + ", ".join(hosts)
    return Deferred(None, parse_reply(451, f"4.4.3 {detail}"[:900]))


class Router:
    """Routes a recipient domain to the addresses to dial, through our resolver."""

    def __init__(self, resolver: Resolver, relay: RelaySettings) -> None:
        """``relay`` gives the port to dial and the smarthost, if any."""
        self._resolver = resolver
        self._relay = relay

    async def route(self, domain: str) -> list[Target] | Failed | Deferred:
        """At most :data:`MAX_ADDRESSES_PER_ATTEMPT` addresses in the order to try, or why none."""
        routed = await self._route(domain)
        return routed[:MAX_ADDRESSES_PER_ATTEMPT] if isinstance(routed, list) else routed

    async def _route(self, domain: str) -> list[Target] | Failed | Deferred:
        port = self._relay.smtp_port
        if self._relay.smarthost:
            host, smart_port = split_listen(self._relay.smarthost)
            return await self._addresses([host], smart_port, implicit=False)
        literal = address_literal(domain, port)
        if isinstance(literal, Target):
            return [literal]
        if literal is not None:
            return literal
        hosts = mx_hosts(domain, await self._resolver.mx(domain))
        if isinstance(hosts, Failed | Deferred):
            return hosts
        return await self._addresses(hosts.names, port, implicit=hosts.implicit)

    async def _addresses(
        self, hosts: Sequence[str], port: int, *, implicit: bool
    ) -> list[Target] | Failed | Deferred:
        targets: list[Target] = []
        problems: list[str] = []
        missing = 0
        for host in [h for h in hosts if h != "."]:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                pass
            else:
                targets.append(Target(host, host, port))  # a smarthost given as an address
                continue
            # IPv4 first: it is what every receiving MTA still accepts, and what an IPv6-less
            # sending host can reach.
            for rdtype in ("A", "AAAA"):
                result = await self._resolver.query(host, rdtype)
                if result.ok:
                    targets.extend(Target(host, address, port) for address in result.texts)
                elif result.status in ("nxdomain", "nodata"):
                    missing += 1
                else:
                    problems.append(f"{host}/{rdtype}: {result.status}")
            if len(targets) >= MAX_ADDRESSES_PER_ATTEMPT:
                break
        if targets:
            return targets
        return without_addresses(hosts, implicit=implicit, missing=missing, problems=problems)
