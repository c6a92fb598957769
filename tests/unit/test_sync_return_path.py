"""The envelope sender of a fetched message comes from its header section only."""

from __future__ import annotations

from mailledger.sync.messages import return_path


def test_the_return_path_field_of_the_header_is_the_envelope_sender() -> None:
    raw = b"Received: by mx\r\nReturn-Path: <bounce@client.example>\r\nSubject: x\r\n\r\nbody\r\n"
    assert return_path(raw) == "bounce@client.example"


def test_a_return_path_line_in_the_body_is_not_the_envelope_sender() -> None:
    quoted = b"Subject: fwd\r\nFrom: carol@client.example\r\n\r\nReturn-Path: <x@spoof.example>\r\n"
    assert return_path(quoted) == ""


def test_a_null_return_path_and_a_bare_header_section() -> None:
    assert return_path(b"Return-Path: <>\r\nSubject: bounce\r\n\r\n") == ""
    assert return_path(b"Subject: no body\r\nReturn-Path: <a@b.example>") == "a@b.example"


def test_the_header_section_ends_at_the_first_empty_line_whatever_the_line_ends() -> None:
    lf = b"Subject: x\nReturn-Path: <a@b.example>\n\nReturn-Path: <c@d.example>\n"
    assert return_path(lf) == "a@b.example"
    after_empty = b"Subject: x\n\r\nReturn-Path: <c@d.example>\r\n"
    assert return_path(after_empty) == ""
    assert return_path(b"\r\n\r\nReturn-Path: <c@d.example>\r\n") == ""
    assert return_path(b"Return-Path: <a@b.example>\r\n\r\n\r\n") == "a@b.example"


def test_only_the_first_64_kib_are_looked_at() -> None:
    filler = b"X-Filler: " + b"y" * 70_000 + b"\r\n"
    assert return_path(filler + b"Return-Path: <late@b.example>\r\n\r\n") == ""
