"""Which folders a pass reads, and the headers-only stand-in for an oversized message."""

from __future__ import annotations

import pytest

from mailledger.mail.parsing import parse_message
from mailledger.store.models import MailboxAccount, SyncMode, utcnow
from mailledger.sync.folders import Listed, plan, sent_folder
from mailledger.sync.messages import headers_only


def _listed(*folders: tuple[str, tuple[str, ...]]) -> list[Listed]:
    return [Listed(name, frozenset(flags)) for name, flags in folders]


def _account(**fields: object) -> MailboxAccount:
    base: dict[str, object] = {"mode": SyncMode.SWEEP, "extra_folders": []}
    return MailboxAccount(**(base | fields))


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        ((("Gesendet", ("\\SENT",)), ("Sent", ())), "Gesendet"),  # SPECIAL-USE first
        ((("INBOX", ()), ("Sent Items", ())), "Sent Items"),
        ((("[Gmail]/Sent Mail", ()), ("[Gmail]/Trash", ("\\TRASH",))), "[Gmail]/Sent Mail"),
        ((("INBOX", ()), ("Archive", ())), None),
        ((("Sent", ("\\NOSELECT",)),), None),
    ],
)
def test_the_sent_folder_is_found_by_flag_then_by_name(
    folders: tuple[tuple[str, tuple[str, ...]], ...], expected: str | None
) -> None:
    """SPECIAL-USE \\Sent wins; then the names mail clients use; never a \\Noselect parent."""
    assert sent_folder(_listed(*folders)) == expected


def test_a_sweep_reads_inbox_sent_and_named_folders_but_never_trash_or_junk() -> None:
    """Named Trash, Junk and Spam are left out even when the user asks for them."""
    listed = _listed(
        ("INBOX", ()),
        ("Sent", ("\\SENT",)),
        ("Clients", ()),
        ("Trash", ("\\TRASH",)),
        ("Spam", ()),
        ("Junk", ("\\JUNK",)),
    )
    account = _account(extra_folders=["clients", "Trash", "Spam", "Junk", "Missing"])
    assert [(p.name, p.role) for p in plan(listed, account)] == [
        ("INBOX", "inbox"),
        ("Sent", "sent"),
        ("Clients", "extra"),
    ]


def test_folder_mode_reads_only_its_source_folder() -> None:
    """Aspire's way: only the folder the user drops mail into."""
    account = _account(mode=SyncMode.FOLDER, source_folder="Aspire")
    assert [(p.name, p.role) for p in plan(_listed(("INBOX", ())), account)] == [
        ("Aspire", "source")
    ]


def test_headers_only_keeps_who_and_when_and_says_why() -> None:
    """The header fields stay; the body is a plain note; the multipart type is gone."""
    header = (
        b"From: Carol <carol@client.example>\r\nTo: richard@acme.example\r\n"
        b"Subject: Drawings\r\nMessage-ID: <big@client.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed;\r\n boundary="xyz"\r\n\r\n'
    )
    raw = headers_only(header, 30_000_000, 25 * 1024 * 1024, "INBOX")
    parsed = parse_message(raw, received_at=utcnow(), max_depth=20, max_parts=500)
    assert parsed.subject == "Drawings"
    assert parsed.message_id == "big@client.example"
    assert "30000000 bytes" in parsed.body.text
    assert "only its header was recorded" in parsed.body.text
    assert b"multipart" not in raw
