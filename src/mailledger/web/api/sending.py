"""``POST /v1/messages``: mail the CRM writes, sent through the relay as the staff member.

The route reads and bounds the request, composes the message (``mail.compose``: our
Message-ID in the From domain, Date, In-Reply-To/References of the answered activity, the
staff member's signature), and hands it to ``relay.outgoing.StaffSender``, the very steps a
message submitted over SMTP by that staff member takes: the sender rules, DKIM signing, the
durable queue (with its retries and bounces) and one outbound activity. The answer is ``202``
with the queue id; ``Location`` is where the queue state can be read (``GET /v1/queue/{id}``).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.logs import get_logger
from mailledger.mail.addresses import Mailbox, parse_mailbox_list
from mailledger.mail.compose import (
    Attachment,
    ComposeError,
    Draft,
    compose,
    new_message_id,
    thread_ids,
    with_html_signature,
    with_text_signature,
)
from mailledger.mail.replies import Reply
from mailledger.relay.outgoing import (
    API_PROTOCOL,
    SenderError,
    StaffIdentity,
    StaffSender,
    staff_identity,
)
from mailledger.store.feed import tenant_activity
from mailledger.store.inbox import SessionFacts
from mailledger.store.models import utcnow
from mailledger.store.queries import NotFoundError
from mailledger.web.api.common import JSON_TYPES, MAX_ID, list_field, tenant_row, text_field
from mailledger.web.auth import identify, require_writer
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError

log = get_logger(__name__)

FIELDS = frozenset(
    {"staff", "from", "to", "cc", "bcc", "subject", "text", "html", "attachments", "in_reply_to"}
)
ATTACHMENT_FIELDS = frozenset({"name", "content_type", "content"})
# JSON around the message: base64 makes attachments a third larger, escapes make text longer.
BODY_OVERHEAD = 2
# Parts the message itself needs besides attachments: mixed, alternative, text, html.
OWN_PARTS = 4


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The request's fields, checked."""

    staff: str
    sender: str | None
    to: list[Mailbox]
    cc: list[Mailbox]
    bcc: list[Mailbox]
    subject: str
    text: str | None
    html: str | None
    attachments: list[Attachment]
    in_reply_to: int | None


def _site(request: Request) -> tuple[Settings, StaffSender]:
    site: Settings | None = getattr(request.app.state, "site", None)
    sender: StaffSender | None = getattr(request.app.state, "staff_sender", None)
    if site is None or sender is None:
        raise ProblemError(503, "sending needs the server's whole configuration, not given")
    return site, sender


def _too_large(detail: str) -> ProblemError:
    return ProblemError(413, detail)


async def _bounded_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, read no further than ``limit`` bytes (else 413)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise ProblemError(415, "send the body as application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(f"the request is {declared} bytes; at most {limit} are read")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"the request is over {limit} bytes; at most that is read")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProblemError(422, "the body must be a JSON object")
    _check_strings(body, "body")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ProblemError(
            422,
            f"{unknown[0]}: not a field here (use {', '.join(sorted(FIELDS))})",
            field=unknown[0],
        )
    return body


def _check_strings(value: Any, where: str) -> None:
    """Refuse NUL and unpaired surrogates (JSON can escape both) before anything stores them."""
    if isinstance(value, str):
        if "\0" in value:
            raise ProblemError(422, f"{where}: holds a NUL character", field=where)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProblemError(
                422, f"{where}: not valid Unicode: {exc.reason}", field=where
            ) from exc
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_strings(item, f"{where}[{n}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, key if where == "body" else f"{where}.{key}")


def _mailboxes(body: dict[str, Any], name: str) -> list[Mailbox]:
    boxes: list[Mailbox] = []
    for value in list_field(body, name):
        parsed = parse_mailbox_list(value)
        if len(parsed.mailboxes) != 1 or parsed.invalid:
            raise ProblemError(422, f"{name}: {value[:100]!r} is not one email address", field=name)
        boxes.append(parsed.mailboxes[0])
    return boxes


def _attachments(body: dict[str, Any], settings: Settings) -> list[Attachment]:
    value = body.get("attachments")
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProblemError(422, "attachments: must be a list of objects", field="attachments")
    most = max(settings.capture.max_mime_parts - OWN_PARTS, 0)
    if len(value) > most:
        raise ProblemError(
            422, f"attachments: at most {most} ([capture] max_mime_parts)", field="attachments"
        )
    limit = settings.capture.max_message_bytes
    found: list[Attachment] = []
    total = 0
    for n, item in enumerate(value):
        where = f"attachments[{n}]"
        if not isinstance(item, dict) or set(item) != ATTACHMENT_FIELDS:
            raise ProblemError(
                422, f"{where}: an object with name, content_type and content", field=where
            )
        if not all(isinstance(item[k], str) for k in ATTACHMENT_FIELDS):
            raise ProblemError(422, f"{where}: name, content_type and content are strings")
        try:
            data = base64.b64decode(item["content"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProblemError(
                422, f"{where}.content: not base64: {exc}", field=f"{where}.content"
            ) from exc
        total += len(data)
        if total > limit:
            raise _too_large(
                f"the attachments are over {limit} bytes, the relay's message size limit "
                "([capture] max_message_bytes)"
            )
        found.append(Attachment(item["name"], item["content_type"], data))
    return found


def _checked(body: dict[str, Any], settings: Settings) -> Outgoing:
    staff = text_field(body, "staff", required=True) or ""
    sender = text_field(body, "from")
    to, cc, bcc = (_mailboxes(body, name) for name in ("to", "cc", "bcc"))
    count = len(to) + len(cc) + len(bcc)
    if not count:
        raise ProblemError(422, "to: give at least one recipient (to, cc or bcc)", field="to")
    if count > settings.capture.max_recipients:
        raise ProblemError(
            422,
            f"to: {count} recipients; at most {settings.capture.max_recipients} "
            "([capture] max_recipients)",
            field="to",
        )
    subject = text_field(body, "subject")
    if subject is None:
        raise ProblemError(422, "subject: required, a string", field="subject")
    text, html = text_field(body, "text"), text_field(body, "html")
    if text is None and html is None:
        raise ProblemError(422, "text: give text, html or both", field="text")
    reply = body.get("in_reply_to")
    if reply is not None and (
        isinstance(reply, bool) or not isinstance(reply, int) or not 1 <= reply <= MAX_ID
    ):
        raise ProblemError(422, "in_reply_to: an activity id", field="in_reply_to")
    return Outgoing(
        staff=staff,
        sender=sender,
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        text=text,
        html=html,
        attachments=_attachments(body, settings),
        in_reply_to=reply,
    )


@dataclass(frozen=True, slots=True)
class _Looked:
    identity: StaffIdentity
    in_reply_to: str
    references: list[str]


def _look_up(tenant_id: int, asked: Outgoing) -> Callable[[Session], _Looked]:
    def work(session: Session) -> _Looked:
        tenant = tenant_row(session, tenant_id)
        try:
            identity = staff_identity(session, tenant, asked.staff, asked.sender)
        except SenderError as exc:
            status = 404 if exc.not_found else 422
            raise ProblemError(status, str(exc), field=exc.field) from exc
        parent, chain = "", list[str]()
        if asked.in_reply_to is not None:
            try:
                answered = tenant_activity(session, tenant_id, asked.in_reply_to)
            except NotFoundError as exc:
                raise ProblemError(404, str(exc.args[0]), field="in_reply_to") from exc
            parent, chain = thread_ids(
                answered.message_id, answered.in_reply_to, answered.references
            )
        return _Looked(identity, parent, chain)

    return work


def _draft(asked: Outgoing, looked: _Looked) -> Draft:
    identity = looked.identity
    text = asked.text
    if text is not None:
        text = with_text_signature(text, identity.signature_text)
    html = asked.html
    if html is not None:
        html = with_html_signature(html, identity.signature_html, identity.signature_text)
    return Draft(
        sender=identity.sender,
        to=asked.to,
        cc=asked.cc,
        subject=asked.subject,
        text=text,
        html=html,
        date=utcnow(),
        message_id=new_message_id(identity.sender.domain),
        attachments=asked.attachments,
        in_reply_to=looked.in_reply_to,
        references=looked.references,
    )


def _refused(reply: Reply) -> ProblemError:
    """The relay's refusal as a problem: its rule broken (422), or its store failing (503)."""
    if reply.code < 500:
        return ProblemError(503, f"the message was not queued: {reply.text}; try again")
    field = "from" if reply.status == "5.7.1" else None
    return ProblemError(422, f"the relay refused the message: {reply.message}", field=field)


async def send_message(request: Request) -> Response:
    """Compose and send one message as a staff member; 202 with its queue id."""
    identity = await identify(request)
    require_writer(identity)
    site, sender = _site(request)
    limit = site.capture.max_message_bytes
    body = await _bounded_json(request, limit * BODY_OVERHEAD + 64 * 1024)
    asked = _checked(body, site)
    api = context_of(request)
    looked = await api.read(_look_up(identity.tenant_id, asked))
    try:
        raw = await run_in_threadpool(compose, _draft(asked, looked))
    except ComposeError as exc:
        raise ProblemError(422, f"{exc.field}: {exc}", field=exc.field) from exc
    if len(raw) > limit:
        raise _too_large(
            f"the message would be {len(raw)} bytes; the relay takes at most {limit} "
            "([capture] max_message_bytes; attachments grow by a third in base64)"
        )
    login = looked.identity.login
    recipients = [box.address for box in (*asked.to, *asked.cc, *asked.bcc)]
    client = request.client
    facts = SessionFacts(
        peer=f"{client.host}:{client.port}" if client else "",
        helo="api",
        mail_from=looked.identity.sender.address,
        rcpt_to=recipients,
        tls="https" if request.url.scheme == "https" else "",
        trace_id=secrets.token_hex(8),
    )
    result = await sender.send(login, raw, facts, protocol=API_PROTOCOL)
    if isinstance(result, Reply):
        raise _refused(result)
    for wake in getattr(request.app.state, "on_queued", []):
        wake()
    log.info("message sent through the API", user=login.username, queue_id=result.queue_id)
    return JSONResponse(
        {"queue_id": result.queue_id, "message_id": result.message_id},
        status_code=202,
        headers={"Location": f"/v1/queue/{result.queue_id}"},
    )


ROUTES = [Route("/v1/messages", send_message, methods=["POST"])]
