"""Moving DKIM private key files into the database, sealed: the upgrade from key files.

Before keys lived in the database, each was a file in ``[relay] dkim_key_dir`` whose path its
row recorded; a second node needed a copy of that directory. ``mailledger db upgrade`` (and
``mailledger dkim import``, for a node that holds files another node lacked) reads each file,
checks that it is the key of the record customers published, seals it into the row, and
leaves the file where it is with a log line saying it can be deleted: nothing is destroyed
before the database holds it. A file is looked for at its recorded path, then under this
node's ``dkim_key_dir`` (the directory may have been copied to another place).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.domains.keys import DkimKeyError, parse_tags, public_key_b64, record_name
from mailledger.logs import get_logger
from mailledger.store.dkimkeys import keys_awaiting_import, store_imported
from mailledger.store.engine import reading
from mailledger.store.models import Tenant
from mailledger.store.secretbox import SecretBox

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class KeyImport:
    """What the import did with one key file: moved in, or why not and what to do."""

    name: str  # selector._domainkey.domain
    file: str
    imported: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Pending:
    key_id: int
    tenant: str
    domain: str
    name: str
    algorithm: str
    path: str
    public_b64: str


def _pending(sessions: sessionmaker[Session]) -> list[_Pending]:
    with reading(sessions) as session:
        tenants: dict[int, str] = dict(session.execute(select(Tenant.id, Tenant.name)).all())
        found = []
        for key in keys_awaiting_import(session):
            try:
                public = parse_tags(key.public_record).get("p", "")
            except ValueError:
                public = ""  # no file can match it: the import says so
            found.append(
                _Pending(
                    key.id,
                    tenants.get(key.tenant_id, str(key.tenant_id)),
                    key.domain,
                    record_name(key.selector, key.domain),
                    key.algorithm,
                    key.private_key_path or "",
                    "".join(public.split()),
                )
            )
        return found


def _read(pending: _Pending, key_dir: str | Path) -> tuple[Path, bytes]:
    recorded = Path(pending.path) if pending.path else None
    places = [recorded] if recorded is not None else []
    if recorded is not None:
        places.append(Path(key_dir) / recorded.name)
    errors = []
    for place in dict.fromkeys(p.resolve() for p in places):
        try:
            return place, place.read_bytes()
        except OSError as exc:
            errors.append(f"{place}: {exc.strerror or exc}")
    where = "; ".join(errors) or "no file was recorded for it"
    raise DkimKeyError(
        f"cannot read the private key of {pending.name} ({where}): copy its file to this node's "
        f"[relay] dkim_key_dir and run `mailledger dkim import`, or make a new key with "
        f"`mailledger dkim rotate {pending.tenant} {pending.domain}`"
    )


def _import_one(
    sessions: sessionmaker[Session], box: SecretBox, key_dir: str | Path, pending: _Pending
) -> KeyImport:
    try:
        path, data = _read(pending, key_dir)
    except DkimKeyError as exc:
        return KeyImport(pending.name, pending.path, imported=False, reason=str(exc))
    try:
        public = public_key_b64(pending.algorithm, data)
    except DkimKeyError as exc:
        return KeyImport(pending.name, str(path), imported=False, reason=f"{path}: {exc}")
    if public != pending.public_b64:
        # Signing with it would fail at every receiver: the published record is another key.
        return KeyImport(
            pending.name,
            str(path),
            imported=False,
            reason=f"{path} holds a different key from the record published for {pending.name}",
        )
    sealed = box.seal(data.decode("ascii"))
    with sessions.begin() as session:
        stored = store_imported(session, pending.key_id, sealed)
    if stored:
        log.info(
            "DKIM key moved into the database; its file can be deleted",
            key=pending.name,
            file=str(path),
        )
        reason = f"moved into the database; {path} is no longer used and can be deleted"
    else:
        reason = f"already in the database (another node moved it); {path} can be deleted"
    return KeyImport(pending.name, str(path), imported=True, reason=reason)


def import_key_files(
    sessions: sessionmaker[Session], box: SecretBox, key_dir: str | Path
) -> list[KeyImport]:
    """Seal every key that is still only a file into its row; one result per such key.

    Each key is its own transaction, so one unreadable file does not hold the others back;
    run it again once the file is in place. The private key is never logged or returned.
    """
    return [_import_one(sessions, box, key_dir, p) for p in _pending(sessions)]
