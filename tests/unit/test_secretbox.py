"""Sealed secrets: what is sealed opens with the same key file, and with nothing else."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from mailledger.store.secretbox import SecretBox, SecretError, ensure_key_file, is_sealed


def test_key_file_created_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "secret.key"
    assert ensure_key_file(path) is True
    first = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key_file(path) is False
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_seal_opens_and_hides(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    ensure_key_file(path)
    box = SecretBox.from_file(path)
    sealed = box.seal("hunter2 — pässword")
    assert is_sealed(sealed)
    assert "hunter2" not in sealed
    assert box.open(sealed) == "hunter2 — pässword"
    assert "hunter2" not in repr(box)


def test_other_key_cannot_open(tmp_path: Path) -> None:
    ensure_key_file(tmp_path / "a.key")
    ensure_key_file(tmp_path / "b.key")
    sealed = SecretBox.from_file(tmp_path / "a.key").seal("token")
    with pytest.raises(SecretError, match="key_file"):
        SecretBox.from_file(tmp_path / "b.key").open(sealed)


def test_tampered_value_refused(tmp_path: Path) -> None:
    ensure_key_file(tmp_path / "a.key")
    box = SecretBox.from_file(tmp_path / "a.key")
    sealed = box.seal("token")
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(SecretError):
        box.open(tampered)
    with pytest.raises(SecretError, match="not a sealed"):
        box.open("plain text")


def test_rotation_old_key_still_opens(tmp_path: Path) -> None:
    old = tmp_path / "secret.key"
    ensure_key_file(old)
    sealed = SecretBox.from_file(old).seal("token")
    old.write_bytes(Fernet.generate_key() + b"\n" + old.read_bytes())
    rotated = SecretBox.from_file(old)
    assert rotated.open(sealed) == "token"
    resealed = rotated.reseal(sealed)
    assert resealed != sealed and rotated.open(resealed) == "token"


def test_missing_key_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="db upgrade"):
        SecretBox.from_file(tmp_path / "nope.key")
    (tmp_path / "bad.key").write_text("not-a-key\n")
    with pytest.raises(SecretError, match="malformed"):
        SecretBox.from_file(tmp_path / "bad.key")
