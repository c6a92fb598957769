"""Where a webhook may be delivered: public addresses only, checked after DNS and pinned.

A tenant chooses the URL, so without this check a URL could make our server post to itself,
to the database on the private network, or to a cloud metadata service (169.254.169.254).
Every address the host name resolves to (through our resolver, DESIGN §7) must be a global
one, and the connection then goes to the address that was checked, never to a second lookup's
answer: a name that answers a public address to the check and a private one to the connect
(DNS rebinding) gains nothing. ``[webhooks] allow_private_targets`` turns the check off (tests,
a CRM on the same private network).
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Final

from mailledger.dnsauth.resolver import Resolver
from mailledger.store.webhooks import WebhookError, check_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SETTING: Final = "[webhooks] allow_private_targets"


class TargetRefusedError(Exception):
    """The URL leads somewhere we do not deliver to, or nowhere; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked destination: the URL's host name and port, and the address to connect to."""

    scheme: str
    host: str  # as in the URL, for the Host header and TLS SNI and certificate checks
    port: int
    address: str  # the checked address the connection goes to
    target: str  # path and query, as sent in the request line

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the name."""
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{literal}:{self.port}{self.target}"

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the URL's name, with its port when not the scheme's default."""
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def refusal(address: IPAddress) -> str | None:
    """Why we never deliver to ``address``, or None for a global (public) address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        (
            "unique-local",
            isinstance(address, ipaddress.IPv6Address)
            and address in ipaddress.IPv6Network("fc00::/7"),
        ),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return f"{address} is a {name} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def _parts(url: str) -> tuple[str, str, int, str]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise TargetRefusedError(f"{url!r} is not an http(s) URL with a host")
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, host, port, target


async def resolve_target(resolver: Resolver, url: str, *, allow_private: bool) -> Target:
    """The address to deliver ``url`` to, checked; raises TargetRefusedError.

    A name with any non-public address is refused as a whole, whichever address a
    connection would have picked. IPv4 is preferred when the name has both.
    """
    scheme, host, port, target = _parts(url)
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _lookup(resolver, host)
    if not allow_private:
        refused = [reason for reason in map(refusal, addresses) if reason]
        if refused:
            raise TargetRefusedError(
                f"{host} is not a public address: {'; '.join(refused)} (private targets are "
                f"refused unless {SETTING} = true)"
            )
    return Target(scheme, host, port, str(addresses[0]), target)


async def _lookup(resolver: Resolver, host: str) -> list[IPAddress]:
    found: list[IPAddress] = []
    problems = []
    for rdtype in ("A", "AAAA"):
        result = await resolver.query(host, rdtype)
        if result.ok:
            found.extend(ipaddress.ip_address(text) for text in result.texts)
        elif result.status not in ("nxdomain", "nodata"):
            problems.append(f"{rdtype} {result.status} {result.detail}".strip())
    if found and not problems:
        return found
    if problems:
        # An answer we could not get might be the private one: never deliver on half of it.
        raise TargetRefusedError(f"could not resolve {host}: {'; '.join(problems)}")
    raise TargetRefusedError(f"{host} has no address (no A or AAAA record)")


async def endpoint_url(resolver: Resolver, url: str, *, allow_private: bool) -> str:
    """The URL to register an endpoint with, or TargetRefusedError saying what to change.

    The same test whichever way an endpoint is added (``webhook add``, the webhooks page):
    a well-formed http(s) URL (``store.webhooks.check_url``) whose host delivery would accept
    now. Delivery checks the host again each time, since DNS can change meanwhile.
    """
    try:
        checked = check_url(url)
    except WebhookError as exc:
        raise TargetRefusedError(str(exc)) from exc
    await resolve_target(resolver, checked, allow_private=allow_private)
    return checked
