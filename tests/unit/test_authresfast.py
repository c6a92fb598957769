"""authres's parser with our two methods gives exactly what authres's own methods give."""

from __future__ import annotations

import random
from typing import Any

import authres
import authres.core

from mailledger.verify import authresfast

ORIGINAL_PARSE_PATTERN, ORIGINAL_CFWS = authresfast.originals()

HEADERS = [
    "mx.google.com;\r\n       dkim=pass header.i=@client.example header.s=s1 header.b=AbCdEf12;\r\n"
    "       spf=pass (google.com: domain of bob@client.example designates 192.0.2.1 as permitted"
    " sender) smtp.mailfrom=bob@client.example;\r\n"
    "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=client.example",
    "mx.provider.example; dkim=pass header.d=client.example; dmarc=pass header.from=client.example",
    "example.org 1; none",
    "example.org (comment (nested) here) 1 (v); auth=pass (cram-md5) smtp.auth=sender@example.net;"
    " spf=pass smtp.mailfrom=example.net",
    "example.com; iprev=pass policy.iprev=192.0.2.200",
    'mail.acme.com; dkim=fail reason="signature \\"verification\\" failed" header.d=x.example',
    "mx.microsoft.com 1; spf=pass (sender IP is 40.107.1.1) smtp.mailfrom=client.example;"
    " dkim=pass (signature was verified) header.d=client.example;dmarc=pass action=none"
    " header.from=client.example;compauth=pass reason=100",
    "i.example; arc=pass (as.1.google.com=pass, ams.1.google.com=pass) smtp.remote-ip=192.0.2.1",
    "relay.example; dkim=pass header.i=@a.example header.s=sel; dkim=neutral (bad format)"
    " header.i=@b.example",
    "host.example;\tspf=softfail\t(domain of transitioning bob@x.example does not designate)"
    " smtp.mailfrom=bob@x.example",
]
ALPHABET = ' \t\r\n();="\\.@-_abcXYZ019/'


class _AuthresOwn(authres.core.AuthenticationResultsHeader):  # type: ignore[misc]
    """The parser with authres's own two methods, whatever is installed on the base class."""

    _parse_pattern = ORIGINAL_PARSE_PATTERN
    _parse_rfc5322_cfws = ORIGINAL_CFWS


def _outcome(header_class: Any, context: Any, value: str) -> tuple[str, ...]:
    try:
        header = header_class.parse_value(context, value)
    except Exception as exc:  # noqa: BLE001 - every error authres raises must agree
        return ("error", type(exc).__name__, str(exc))
    parts = [str(header), str(header.authserv_id), str(header.version)]
    for result in header.results:
        fields = {k: v for k, v in vars(result).items() if k != "properties"}
        properties = [sorted(vars(p).items()) for p in getattr(result, "properties", [])]
        parts.append(repr((sorted((k, str(v)) for k, v in fields.items()), properties)))
    return ("parsed", *parts)


def _mutations(rng: random.Random, value: str, count: int) -> list[str]:
    out = []
    for _ in range(count):
        chars = list(value)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(chars) + 1)
            action = rng.random()
            if action < 0.4:
                chars.insert(at, rng.choice(ALPHABET))
            elif action < 0.8 and chars:
                del chars[min(at, len(chars) - 1)]
            else:
                end = min(len(chars), at + rng.randint(1, 12))
                chars[at:at] = chars[max(0, at - 12) : end]
        out.append("".join(chars))
    return out


def test_same_results_and_errors_on_headers_and_mutations() -> None:
    authresfast.install()
    rng = random.Random(8601)
    compared = 0
    for context in (authres.core_features(), authres.all_features()):
        for value in HEADERS:
            for text in [value, *_mutations(rng, value, 400)]:
                ours = _outcome(authres.core.AuthenticationResultsHeader, context, text)
                theirs = _outcome(_AuthresOwn, context, text)
                assert ours == theirs, text
                compared += 1
    assert compared == 2 * len(HEADERS) * 401


def test_installed_parser_is_ours_and_reads_a_gmail_header() -> None:
    authresfast.install()
    header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + HEADERS[0])
    assert header.authserv_id == "mx.google.com"
    assert [r.method for r in header.results] == ["dkim", "spf", "dmarc"]
    assert authres.core.AuthenticationResultsHeader._parse_pattern is authresfast.parse_pattern
