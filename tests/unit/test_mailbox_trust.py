"""Whose Authentication-Results a message fetched from a mailbox is judged on (DESIGN §4, §12).

Only the topmost Authentication-Results is the receiving provider's, and only when it carries
the provider's authserv-id (Microsoft 365: no authserv-id at all); anything else in the header
section could have been written by the sender, so it yields no verdict.
"""

from __future__ import annotations

import pytest

from mailledger.store.models import AccountKind
from mailledger.verify.messageauth import MailboxTrust, from_mailbox, mailbox_trust
from mailledger.verify.results import AuthOutcome

FROM = "client.example"
FORGED = (
    "mx.google.com; dkim=pass header.d=client.example header.s=s1;"
    " spf=pass smtp.mailfrom=carol@client.example; dmarc=pass header.from=client.example"
)
GMAIL = (
    "mx.google.com;\r\n dkim=pass header.i=@client.example header.s=s1 header.b=AbCd;\r\n"
    " spf=pass (google.com: domain of carol@client.example designates 192.0.2.7 as permitted"
    " sender) smtp.mailfrom=carol@client.example;\r\n"
    " dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=client.example"
)
GMAIL_FAIL = (
    "mx.google.com; dkim=fail header.i=@client.example; spf=softfail"
    " smtp.mailfrom=carol@client.example; dmarc=fail (p=REJECT) header.from=client.example"
)
# Exchange Online stamps its Authentication-Results without an authserv-id.
MICROSOFT = (
    "spf=pass (sender IP is 192.0.2.7)\r\n smtp.mailfrom=client.example; dkim=pass (signature"
    " was verified)\r\n header.d=client.example;dmarc=pass action=none\r\n"
    " header.from=client.example;compauth=pass reason=100"
)
OWN_DOVECOT = "mail.acme.example; spf=pass smtp.mailfrom=carol@client.example; dmarc=pass"

GOOGLE = mailbox_trust(AccountKind.GOOGLE, "")
MS365 = mailbox_trust(AccountKind.MICROSOFT, "")
PLAIN = mailbox_trust(AccountKind.IMAP, "")
CONFIGURED = mailbox_trust(AccountKind.IMAP, "mail.acme.example")


def _verdicts(outcome: AuthOutcome) -> tuple[str, str, tuple[str, ...], str]:
    return (
        outcome.spf.result,
        outcome.dmarc.result,
        tuple(f"{d.result}:{d.domain}" for d in outcome.dkim),
        outcome.arc.result,
    )


NOTHING = ("none", "none", (), "none")


def _judge(trust: MailboxTrust, *results: str, arc: tuple[str, ...] = ()) -> AuthOutcome:
    headers = {"authentication-results": list(results)}
    if arc:
        headers["arc-authentication-results"] = list(arc)
    return from_mailbox(headers, FROM, trust)


def test_a_plain_imap_account_without_an_id_trusts_no_header() -> None:
    """A forged mx.google.com verdict on a Dovecot mailbox gives none, and says what to set."""
    outcome = _judge(PLAIN, FORGED)
    assert _verdicts(outcome) == NOTHING
    assert "--authserv-id" in outcome.dmarc.reason
    assert "not trusted" in outcome.dmarc.reason


def test_a_plain_imap_account_trusts_its_configured_id_on_top() -> None:
    """The account's own server's verdicts, under the configured id, are read."""
    outcome = _judge(CONFIGURED, OWN_DOVECOT, FORGED)
    assert outcome.spf.result == "pass"
    assert outcome.dmarc.result == "pass"
    assert outcome.gateway == "mail.acme.example"


def test_a_forged_header_on_top_of_a_configured_account_gives_none() -> None:
    """Its server stamped nothing; the sender's mx.google.com claim on top proves nothing."""
    outcome = _judge(CONFIGURED, FORGED)
    assert _verdicts(outcome) == NOTHING
    assert "mail.acme.example" in outcome.dmarc.reason


def test_the_providers_id_below_the_top_is_never_looked_for() -> None:
    """Only the topmost header is the provider's: a lower one is anybody's."""
    outcome = _judge(GOOGLE, "evil.example; dmarc=fail header.from=client.example", GMAIL)
    assert _verdicts(outcome) == NOTHING
    assert "evil.example" in outcome.dmarc.reason


def test_google_verdicts_are_read_from_mx_google_com_on_top() -> None:
    """Gmail's own header gives pass verdicts; its DKIM domain comes from header.i."""
    outcome = _judge(GOOGLE, GMAIL)
    assert _verdicts(outcome) == ("pass", "pass", ("pass:client.example",), "none")
    assert outcome.gateway == "mx.google.com"


def test_a_forged_provider_header_below_the_providers_is_ignored() -> None:
    """The provider's failing verdict stands; the sender's passing copy below it does not count."""
    outcome = _judge(GOOGLE, GMAIL_FAIL, FORGED)
    assert outcome.dmarc.result == "fail"
    assert outcome.spf.result == "softfail"
    assert [d.result for d in outcome.dkim] == ["fail"]


def test_the_authserv_id_matches_without_regard_to_case_or_a_version() -> None:
    """RFC 8601 §2.2: the id is a domain name, optionally followed by a version number."""
    outcome = _judge(GOOGLE, "MX.Google.COM 1; dmarc=pass header.from=client.example")
    assert outcome.dmarc.result == "pass"


def test_microsoft_365_header_without_an_id_is_read_for_microsoft_accounts() -> None:
    """Exchange Online's header begins with spf=: read as the provider's on top."""
    outcome = _judge(MS365, MICROSOFT)
    assert _verdicts(outcome) == ("pass", "pass", ("pass:client.example",), "none")
    assert outcome.spf.domain == "client.example"


def test_microsoft_accounts_trust_only_the_topmost_header() -> None:
    """A header with an authserv-id on top is not Exchange Online's; one below it never counts."""
    assert _verdicts(_judge(MS365, FORGED, MICROSOFT)) == NOTHING
    failed = MICROSOFT.replace("dmarc=pass", "dmarc=fail")
    assert _judge(MS365, failed, MICROSOFT).dmarc.result == "fail"


@pytest.mark.parametrize("trust", [PLAIN, CONFIGURED, GOOGLE])
def test_the_id_less_format_counts_only_for_microsoft_accounts(trust: MailboxTrust) -> None:
    """Anyone can write spf=pass without an id; only Microsoft 365 stamps it so."""
    assert _verdicts(_judge(trust, MICROSOFT)) == NOTHING


@pytest.mark.parametrize("trust", [PLAIN, CONFIGURED, GOOGLE, MS365])
def test_arc_authentication_results_alone_give_no_verdict(trust: MailboxTrust) -> None:
    """A sender can write ARC-Authentication-Results too: without the provider's header, none."""
    sealed = ("i=1; mx.google.com; dkim=pass header.d=client.example; dmarc=pass",)
    outcome = _judge(trust, arc=sealed)
    assert _verdicts(outcome) == NOTHING
    assert outcome.dmarc.reason


def test_no_header_at_all_says_so() -> None:
    """The provider stamped nothing: none, with the reason in words."""
    outcome = _judge(GOOGLE)
    assert _verdicts(outcome) == NOTHING
    assert "mx.google.com" in outcome.dmarc.reason


def test_an_unparsable_provider_header_gives_none() -> None:
    """The provider's id on top, but no readable results: nothing verified, never a pass."""
    assert _verdicts(_judge(GOOGLE, "mx.google.com; dmarc")) == NOTHING
