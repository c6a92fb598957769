"""Composing API mail (mail/compose.py): structure, encodings, thread ids and signatures."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from mailledger.mail.addresses import Mailbox, parse_address
from mailledger.mail.compose import (
    Attachment,
    ComposeError,
    Draft,
    compose,
    thread_ids,
    with_html_signature,
    with_text_signature,
)

SENDER = Mailbox("Jörg Müller", "joerg", "acme.example")
LONG_ID = "a" * 200 + "@client.example"


def draft(**changes: object) -> Draft:
    values: dict[str, object] = {
        "sender": SENDER,
        "to": [parse_address("carol@client.example")],
        "cc": [],
        "subject": "Grüße aus Köln",
        "text": "Hallo Carol",
        "html": None,
        "date": datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        "message_id": "0123@acme.example",
    }
    values.update(changes)
    return Draft(**values)  # type: ignore[arg-type]


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_only_crlf_only_7bit_and_encoded_words() -> None:
    """Every line ends in CRLF, every byte is ASCII; names and subject are RFC 2047 words."""
    raw = compose(draft(html="<p>Grüße</p>"))
    assert not re.search(rb"\r(?!\n)|(?<!\r)\n", raw)
    assert raw.isascii()
    message = parsed(raw)
    assert message["From"] == "Jörg Müller <joerg@acme.example>"
    assert message["Subject"] == "Grüße aus Köln"
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n", 1)[0]
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert raw.count(b"MIME-Version") == 1


def test_attachment_names_use_rfc2231_and_lose_their_path() -> None:
    """A non-ASCII file name is an RFC 2231 parameter; a path becomes its last segment."""
    files = [Attachment("../../etc/Angebot für Köln.pdf", "application/pdf", b"%PDF")]
    raw = compose(draft(attachments=files))
    assert b"filename*=utf-8''Angebot%20f%C3%BCr%20K%C3%B6ln.pdf" in raw
    message = parsed(raw)
    assert message.get_content_type() == "multipart/mixed"
    (attached,) = list(message.iter_attachments())
    assert attached.get_filename() == "Angebot für Köln.pdf"
    assert attached.get_content() == b"%PDF"


def test_long_ids_stay_whole_tokens() -> None:
    """Message-ID, In-Reply-To and References are <id> tokens, folded only between ids."""
    raw = compose(draft(in_reply_to=LONG_ID, references=["root@x.example", LONG_ID]))
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert f"In-Reply-To: <{LONG_ID}>\r\n" in head
    assert f"References: <root@x.example>\r\n <{LONG_ID}>\r\n" in head
    assert "Message-ID: <0123@acme.example>\r\n" in head


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"subject": "x\r\nBcc: eve@evil.example"}, "subject"),
        ({"subject": "x" * 999}, "subject"),
        ({"text": "a\0b"}, "text"),
        ({"text": None, "html": None}, "text"),
        ({"to": [Mailbox("", "jörg", "client.example")]}, "to"),
        ({"attachments": [Attachment("a", "text", b"")]}, "attachments[0].content_type"),
        ({"attachments": [Attachment("a", "message/rfc822", b"")]}, "attachments[0].content_type"),
        ({"attachments": [Attachment("../", "text/plain", b"")]}, "attachments[0].name"),
    ],
)
def test_bad_parts_are_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    """Header injection, NUL, SMTPUTF8 local parts and unusable attachments are refused."""
    with pytest.raises(ComposeError) as caught:
        compose(draft(**changes))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("message_id", "in_reply_to", "references", "expected"),
    [
        ("q@c", "", "", ("q@c", ["q@c"])),
        ("q@c", "p@a", "", ("q@c", ["p@a", "q@c"])),
        ("q@c", "p@a o@a", "", ("q@c", ["q@c"])),  # several In-Reply-To ids: none is the parent
        ("q@c", "p@a", "r@c p@a", ("q@c", ["r@c", "p@a", "q@c"])),
        ("", "p@a", "r@c", ("", ["r@c"])),
        (
            "q@c",
            "",
            " ".join(f"{n}@c" for n in range(30)),
            ("q@c", [f"{n}@c" for n in range(11, 30)] + ["q@c"]),
        ),
        ("jörg@c", "", "", ("", [])),
    ],
)
def test_thread_ids_follow_rfc5322(
    message_id: str, in_reply_to: str, references: str, expected: tuple[str, list[str]]
) -> None:
    """RFC 5322 §3.6.4: the parent's References (or its single In-Reply-To), then its id."""
    assert thread_ids(message_id, in_reply_to, references) == expected


def test_signatures() -> None:
    """Text: after "-- "; HTML: a <div> before </body>, the text one escaped if no HTML."""
    assert with_text_signature("Hi", "R.\n") == "Hi\n-- \nR.\n"
    assert with_text_signature("Hi\n", "  ") == "Hi\n"
    page = "<html><BODY><p>Hi</p></BODY></html>"
    assert with_html_signature(page, "<b>R.</b>", "") == (
        '<html><BODY><p>Hi</p><div class="signature">-- <br>\n<b>R.</b></div>\n</BODY></html>'
    )
    assert with_html_signature("<p>Hi</p>", "", "R. <ceo>\nAcme") == (
        '<p>Hi</p>\n<div class="signature">-- <br>\nR. &lt;ceo&gt;<br>\nAcme</div>\n'
    )
    assert with_html_signature("<p>Hi</p>", "", "") == "<p>Hi</p>"
