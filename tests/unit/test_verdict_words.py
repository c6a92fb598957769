"""The authentication verdicts in words: one sentence per stored shape, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from mailledger.mail.content import sanitize_html
from mailledger.verify.explain import Arrival, mailbox_name, original_words, verdict_sentence
from mailledger.web.ratelimit import RateLimiter

GMAIL = "richard.smith+caf_=richard=acme.capture.example@gmail.com"
FORWARD = {
    "trust": "forwarder-authenticated",
    "trust_reason": "spf=pass for gmail.com and richardsmith@gmail.com is the staff member's own",
    "from_domain": "client.example",
    "original": {"result": "pass", "via": "dkim", "detail": "dkim pass d=client.example"},
}


@pytest.mark.parametrize(
    ("auth", "arrivals", "sentence"),
    [
        (
            FORWARD,
            [Arrival("user", "Richard", GMAIL, FORWARD)],
            "Signed by client.example; forwarded by Richard's Gmail, verified by SPF.",
        ),
        (
            FORWARD,
            [
                Arrival("user", "Richard", GMAIL, FORWARD),
                Arrival("user", "Richard", GMAIL, FORWARD),
                Arrival(
                    "user",
                    "Agnes",
                    "srs0=ab=cd=client.example=carol@acme.example",
                    {
                        "trust": "forwarder-authenticated",
                        "trust_reason": "dkim=pass d=acme.example",
                    },
                ),
            ],
            "Signed by client.example; forwarded by Richard's Gmail, verified by SPF; "
            "forwarded by Agnes' acme.example mailbox, verified by DKIM.",
        ),
        (
            {
                "from_domain": "client.example",
                "original": {"result": "pass", "via": "arc:google.com", "detail": "…"},
            },
            [
                Arrival(
                    "user",
                    "Richard",
                    GMAIL,
                    {"trust": "forwarder-authenticated", "trust_reason": "arc=pass sealed by"},
                )
            ],
            "Signed by client.example when google.com received it (ARC); "
            "forwarded by Richard's Gmail, verified by a trusted ARC seal.",
        ),
        (
            {"from_domain": "client.example", "original": {"result": "fail", "via": "dmarc"}},
            [],
            "Not signed by client.example (DMARC fail): it may not come from client.example.",
        ),
        (
            {"trust": "sender-authenticated"},
            [
                Arrival(
                    "log",
                    "Richard",
                    "richard@acme.example",
                    {"trust": "sender-authenticated", "trust_reason": "spf=pass aligned"},
                )
            ],
            "Sent by Richard with a copy to log@, verified by SPF.",
        ),
        (
            {"trust": "submission"},
            [Arrival("log", "Richard", "richard@acme.example", {"trust": "submission"})],
            "Sent through mailledger by Richard, who signed in with their relay password.",
        ),
        (
            {"from_domain": "client.example", "original": {"result": "none", "via": "dmarc"}},
            [Arrival("sync", "Richard", "carol@client.example", {"trust": "mailbox"})],
            "Not signed by client.example: nothing proves who sent it; "
            "fetched by mailbox sync from Richard's own mailbox.",
        ),
        ({}, [], "No authentication verdicts were recorded for this activity."),
    ],
)
def test_verdict_sentence(auth: dict[str, Any], arrivals: list[Arrival], sentence: str) -> None:
    """Each stored shape reads as the sentence a user expects; repeated paths are said once."""
    assert verdict_sentence(auth, arrivals) == sentence


def test_original_words_without_a_verdict_says_nothing() -> None:
    """Mail a staff member sent has no original-sender verdict: nothing is made up."""
    assert original_words({"trust": "sender-authenticated"}) == ""


@pytest.mark.parametrize(
    ("sender", "name"),
    [(GMAIL, "Gmail"), ("a@outlook.com", "Outlook.com"), ("a@acme.example", "acme.example mailbox"),
     ("", "mailbox")],
)  # fmt: skip
def test_mailbox_name(sender: str, name: str) -> None:
    """Known providers by name, any other forwarder by its domain."""
    assert mailbox_name(sender) == name


def test_shown_html_keeps_embedded_images_only() -> None:
    """The pages' HTML fetches nothing: remote image sources go, data: images stay."""
    html = '<img src="https://t.example/pixel.gif"><img src="data:image/png;base64,AA">'
    assert sanitize_html(html, remote_images=False) == '<img><img src="data:image/png;base64,AA">'
    assert "https://t.example/pixel.gif" in sanitize_html(html)


def test_rate_limiter_window_refills_over_its_length() -> None:
    """Five a quarter-hour: the sixth waits three minutes, and one comes back after them."""
    now = [0.0]
    limiter = RateLimiter(5, lambda: now[0], window_seconds=900)
    assert [limiter.check("a@x") for _ in range(5)] == [0] * 5
    assert limiter.check("a@x") == 180
    assert limiter.check("b@x") == 0
    now[0] += 180
    assert limiter.check("a@x") == 0
    assert limiter.check("a@x") > 0
