"""Delivery of the outbound queue: MX lookup, SMTP to the remote hosts, retries and bounces.

One :class:`DeliveryWorker` per process claims due rows (``relay.outbox``) and delivers each
in its own task, at most ``[relay] max_concurrent`` at once and ``max_per_domain`` per
recipient domain (per node: on PostgreSQL several nodes each apply their own limit).

Routing follows RFC 5321 §5.1: MX records through our resolver, in preference order with equal
preferences shuffled; no MX records means the domain itself (implicit MX); a null MX
(``0 .``, RFC 7505) fails at once with ``556 5.1.10``. Each host's addresses are dialled on
``[relay] smtp_port``; a host that refuses, times out or answers 4xx before the transaction is
skipped for the next. STARTTLS is used whenever offered, without certificate checks, as
opportunistic TLS permits (RFC 7435 §4); a failed handshake is retried in clear. A smarthost
(``[relay] smarthost``) replaces all of that: one host, TLS verified and required when
``smarthost_require_tls``, AUTH with its credentials.

Every attempt ends in one vocabulary per recipient: :class:`Delivered`, :class:`Deferred`
(tried again after the next interval of ``retry_schedule_seconds``) or :class:`Failed`. When a
recipient fails, or the schedule runs out, its sender gets a DSN (``relay.dsn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import aiosmtplib
import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings, split_listen
from mailledger.dnsauth.resolver import Resolver
from mailledger.mail.replies import Reply, parse_reply
from mailledger.metrics import Metrics
from mailledger.relay.dsn import FailedRecipient, queue_dsn, wants_dsn
from mailledger.store import outbox
from mailledger.store.blobs import BlobStore, BlobStoreError
from mailledger.store.models import OutboundMessage, OutboundState, utcnow
from mailledger.store.outbox import Claim

log = structlog.get_logger("mailledger.relay")

# RFC 5321 §5.1 lets a client limit how many addresses it tries per attempt; Postfix tries 5
# MX addresses by default. Ten covers a primary and backups on both address families.
MAX_ADDRESSES_PER_ATTEMPT: Final = 10
# How long stop() lets deliveries in flight finish before cutting them off and handing their
# rows back (systemd's stop timeout is 90 s; the listeners take up to 30 s of it).
STOP_GRACE_SECONDS: Final = 20.0
_FINAL_STATES: Final = frozenset(
    s.value for s in (OutboundState.DELIVERED, OutboundState.BOUNCED, OutboundState.EXPIRED)
)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The remote host took responsibility for the message (``250`` after DATA)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Deferred:
    """A temporary failure: try again at ``retry_at`` (None until the schedule decides)."""

    retry_at: datetime | None
    reason: Reply


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: the sender gets a DSN."""

    reason: Reply


Outcome = Delivered | Deferred | Failed


@dataclass(frozen=True, slots=True)
class Target:
    """One address to dial: the host's name (for SNI and logs), its address and port."""

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"


@dataclass(slots=True)
class _NextHost:
    """This address could not take the message before the transaction began; try the next."""

    reason: Reply


@dataclass(slots=True)
class _Attempt:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    host: str = ""
    tls: str = ""


# Replies we make up for decisions taken without a remote reply.
NULL_MX = Reply(556, "5.1.10", "recipient domain does not accept mail (null MX, RFC 7505)")
NO_DOMAIN = Reply(550, "5.1.2", "recipient domain does not exist")
NO_ADDRESS = Reply(550, "5.4.4", "recipient domain has no MX and no address records")


def _shuffled_by_preference(records: Sequence[tuple[int, str]]) -> list[str]:
    """MX hosts in preference order, equal preferences in random order (RFC 5321 §5.1)."""
    groups: dict[int, list[str]] = {}
    for preference, exchange in records:
        groups.setdefault(preference, []).append(exchange)
    hosts: list[str] = []
    for preference in sorted(groups):
        group = groups[preference]
        random.shuffle(group)  # load spreading among equals, not security
        hosts.extend(h for h in group if h not in hosts)
    return hosts


def _opportunistic_context() -> ssl.SSLContext:
    # RFC 7435 §4: opportunistic TLS encrypts without authenticating; a certificate we can't
    # verify is still better than clear text, so nothing is checked.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _remote(code: int, message: str, host: str) -> Reply:
    """A remote host's reply; aiosmtplib joins a multiline reply with "\\n", we keep one line."""
    return parse_reply(code, " ".join(message.split()), host)


class DeliveryWorker:
    """Delivers the outbound queue until stopped; ``wake`` makes it look at once."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobStore,
        settings: Settings,
        resolver: Resolver,
        *,
        smarthost_tls_context: ssl.SSLContext | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``smarthost_tls_context`` replaces the system CAs for verifying the smarthost."""
        self._sessions = sessions
        self._metrics = metrics or Metrics()
        self._blobs = blobs
        self._settings = settings
        self._relay = settings.relay
        self._resolver = resolver
        self._owner = settings.service.node_id
        self._hostname = settings.service.hostname
        self._opportunistic = _opportunistic_context()
        self._smarthost_tls = smarthost_tls_context
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._done = asyncio.Event()
        self._active = False
        self._tasks: dict[int, asyncio.Task[None]] = {}  # row id → its delivery
        self._claims: dict[int, Claim] = {}  # rows claimed and not yet recorded
        self._busy: dict[str, int] = {}  # domain → deliveries in flight

    # --- the loop -----------------------------------------------------------------------------

    def wake(self) -> None:
        """New mail was queued: look now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Claim and deliver due rows until :meth:`stop`; then finish or hand back the rest."""
        self._active = True
        self._done.clear()
        heartbeat = asyncio.create_task(self._heartbeat(), name="mailledger-relay-leases")
        try:
            while not self._stopping:
                self._wakeup.clear()
                slots = self._relay.max_concurrent - len(self._tasks)
                claims: list[Claim] = []
                if slots > 0:
                    try:
                        claims = await asyncio.to_thread(self._claim, slots)
                    except (OperationalError, DBAPIError) as exc:
                        log.warning(
                            "queue claim failed; database unavailable", error=str(exc)[:200]
                        )
                for claim in claims:
                    self._start(claim)
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._relay.poll_interval_seconds)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._drain()
            self._active = False
            self._done.set()

    async def stop(self) -> None:
        """Stop claiming; deliveries in flight finish (or are cut off and handed back)."""
        self._stopping = True
        self._wakeup.set()
        if self._active:
            await self._done.wait()

    async def _drain(self) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        left = list(self._claims)
        if left:
            try:
                await asyncio.to_thread(self._release, left)
                log.info("handed back unfinished deliveries", rows=left)
            except (OperationalError, DBAPIError):
                log.warning("could not hand back deliveries; their leases will lapse", rows=left)

    async def _heartbeat(self) -> None:
        # A long delivery (slow host, several MX) must not outlive its lease, or another node
        # would take the row over and send it a second time.
        interval = max(self._relay.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            ids = list(self._claims)
            if not ids:
                continue
            try:
                await asyncio.to_thread(self._renew, ids)
            except (OperationalError, DBAPIError) as exc:
                log.warning("could not renew delivery leases", error=str(exc)[:200])

    def _start(self, claim: Claim) -> None:
        self._claims[claim.id] = claim
        self._busy[claim.domain] = self._busy.get(claim.domain, 0) + 1
        task = asyncio.create_task(self._deliver_row(claim), name=f"deliver-{claim.id}")
        self._tasks[claim.id] = task

        def _finished(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(claim.id, None)
            count = self._busy.get(claim.domain, 1) - 1
            if count > 0:
                self._busy[claim.domain] = count
            else:
                self._busy.pop(claim.domain, None)
            self._wakeup.set()  # a slot is free

        task.add_done_callback(_finished)

    # --- database work (in threads) -------------------------------------------------------------

    def _claim(self, slots: int) -> list[Claim]:
        if not outbox.any_due(self._sessions):
            return []  # an idle poll, without taking SQLite's write lock
        with self._sessions.begin() as session:
            return outbox.claim_due(
                session,
                owner=self._owner,
                lease_seconds=self._relay.lease_seconds,
                slots=slots,
                busy=self._busy,
                max_per_domain=self._relay.max_per_domain,
            )

    def _renew(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            outbox.renew(session, ids, owner=self._owner, lease_seconds=self._relay.lease_seconds)

    def _release(self, ids: list[int]) -> None:
        with self._sessions.begin() as session:
            outbox.release(session, ids, owner=self._owner)

    # --- one row ----------------------------------------------------------------------------------

    async def _deliver_row(self, claim: Claim) -> None:
        bound = log.bind(queue_id=claim.queue_id, row=claim.id, domain=claim.domain)
        attempt = _Attempt()
        try:
            if not claim.pending:
                attempt = _Attempt()  # nothing left to send (recorded by an earlier attempt)
            else:
                data = await asyncio.to_thread(self._blobs.get, claim.blob)
                attempt = await self.deliver(claim, data)
        except BlobStoreError as exc:
            reason = Reply(451, "4.3.0", f"message bytes unavailable: {exc}")
            attempt = _Attempt({r: Deferred(None, reason) for r in claim.pending})
        except asyncio.CancelledError:
            bound.info("delivery cut off by shutdown; the row is handed back")
            raise
        except Exception as exc:  # noqa: BLE001 - an unknown fault is temporary (STYLE.md)
            bound.exception("delivery failed unexpectedly")
            reason = Reply(451, "4.3.0", f"internal error: {type(exc).__name__}")
            attempt = _Attempt({r: Deferred(None, reason) for r in claim.pending})
        try:
            summary, dsn_queued = await asyncio.to_thread(self._record, claim, attempt)
        except (OperationalError, DBAPIError, BlobStoreError) as exc:
            # The lease lapses and the row is tried again: at worst one duplicate delivery.
            bound.warning("could not record delivery outcome", error=str(exc)[:200])
            return
        self._claims.pop(claim.id, None)
        # The summary starts with the row's state, committed by now (see _record).
        state = summary.split(" ", 1)[0]
        if state in _FINAL_STATES:
            self._metrics.delivery_finished(OutboundState(state), claim.created_at)
        if dsn_queued:
            self.wake()
        bound.info(
            "delivery attempt",
            attempt=claim.attempts,
            host=attempt.host or None,
            tls=attempt.tls or None,
            outcome=summary,
        )

    async def deliver(self, claim: Claim, data: bytes) -> _Attempt:
        """One attempt at ``claim``'s pending recipients: route, then each address in turn."""
        pending = list(claim.pending)
        route = await self._route(claim.domain)
        if isinstance(route, Failed | Deferred):
            return _Attempt(dict.fromkeys(pending, route))
        skipped: list[str] = []
        for target in route[:MAX_ADDRESSES_PER_ATTEMPT]:
            result = await self._try_target(target, claim, pending, data, tls_allowed=True)
            if isinstance(result, _NextHost):
                skipped.append(f"{target}: {result.reason.code} {result.reason.message}")
                log.info(
                    "delivery host skipped",
                    queue_id=claim.queue_id,
                    domain=claim.domain,
                    host=str(target),
                    reason=f"{result.reason.code} {result.reason.message}",
                )
                continue
            return result
        text = "; ".join(skipped) if skipped else "no host to deliver to"
        reason = parse_reply(421, f"4.4.1 no host accepted the connection: {text}"[:900])
        return _Attempt(dict.fromkeys(pending, Deferred(None, reason)))

    # --- routing ----------------------------------------------------------------------------------

    async def _route(self, domain: str) -> list[Target] | Failed | Deferred:
        port = self._relay.smtp_port
        if self._relay.smarthost:
            host, smart_port = split_listen(self._relay.smarthost)
            return await self._addresses([host], smart_port, implicit=False)
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
            try:
                ipaddress.ip_address(literal)
            except ValueError:
                return Failed(Reply(550, "5.1.2", f"bad address literal {domain}"))
            return [Target(domain, literal, port)]
        mx = await self._resolver.mx(domain)
        if mx.status == "ok":
            records = mx.exchanges
            hosts = [exchange for _, exchange in records if exchange != "."]
            if not hosts:
                return Failed(NULL_MX)  # RFC 7505 §3: don't even try the domain itself
            return await self._addresses(_shuffled_by_preference(records), port, implicit=False)
        if mx.status == "nodata":
            # RFC 5321 §5.1: no MX records, so the domain itself is the one host (implicit MX).
            return await self._addresses([domain], port, implicit=True)
        if mx.status == "nxdomain":
            return Failed(NO_DOMAIN)
        return Deferred(
            None, Reply(451, "4.4.3", f"MX lookup for {domain}: {mx.status} {mx.detail}")
        )

    async def _addresses(
        self, hosts: list[str], port: int, *, implicit: bool
    ) -> list[Target] | Failed | Deferred:
        targets: list[Target] = []
        problems: list[str] = []
        missing = 0
        for host in [h for h in hosts if h != "."]:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                pass
            else:
                targets.append(Target(host, host, port))  # a smarthost given as an address
                continue
            # IPv4 first: it is what every receiving MTA still accepts, and what an IPv6-less
            # sending host can reach.
            for rdtype in ("A", "AAAA"):
                result = await self._resolver.query(host, rdtype)
                if result.ok:
                    targets.extend(Target(host, address, port) for address in result.texts)
                elif result.status in ("nxdomain", "nodata"):
                    missing += 1
                else:
                    problems.append(f"{host}/{rdtype}: {result.status}")
            if len(targets) >= MAX_ADDRESSES_PER_ATTEMPT:
                break
        if targets:
            return targets
        if implicit and not problems and missing:
            return Failed(NO_ADDRESS)
        detail = "; ".join(problems) or "no address records for " + ", ".join(hosts)
        return Deferred(None, parse_reply(451, f"4.4.3 {detail}"[:900]))

    # --- SMTP -------------------------------------------------------------------------------------

    async def _try_target(
        self, target: Target, claim: Claim, pending: list[str], data: bytes, *, tls_allowed: bool
    ) -> _Attempt | _NextHost:
        smarthost = bool(self._relay.smarthost)
        require_tls = smarthost and self._relay.smarthost_require_tls
        smtp = aiosmtplib.SMTP(
            hostname=target.address,
            port=target.port,
            local_hostname=self._hostname,
            timeout=self._relay.command_timeout_seconds,
            start_tls=False,
            use_tls=False,
        )
        host = str(target)
        tls = ""
        try:
            try:
                await smtp.connect(timeout=self._relay.connect_timeout_seconds)
            except aiosmtplib.SMTPConnectResponseError as exc:
                return _NextHost(_remote(exc.code, exc.message, host))
            except (aiosmtplib.SMTPException, OSError) as exc:
                return _NextHost(Reply(421, "4.4.1", f"connection failed: {exc}", host))
            step = await self._hello(smtp, host)
            if step is not None:
                return step
            if tls_allowed and smtp.supports_extension("starttls"):
                context = self._opportunistic
                if require_tls:
                    context = self._smarthost_tls or ssl.create_default_context()
                try:
                    await smtp.starttls(server_hostname=target.name, tls_context=context)
                except aiosmtplib.SMTPResponseException as exc:
                    # STARTTLS refused: the session is still usable in clear (RFC 3207 §4).
                    if require_tls:
                        return _NextHost(_remote(exc.code, exc.message, host))
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    smtp.close()
                    if require_tls:
                        reason = Reply(421, "4.7.0", f"TLS handshake failed: {exc}", host)
                        return _NextHost(reason)
                    log.info("TLS handshake failed; retrying in clear", host=host, error=str(exc))
                    return await self._try_target(target, claim, pending, data, tls_allowed=False)
                else:
                    cipher = smtp.get_transport_info("cipher")
                    tls = f"{cipher[1]} {cipher[0]}" if cipher else "tls"
                    step = await self._hello(smtp, host)
                    if step is not None:
                        return step
            elif require_tls:
                return _NextHost(Reply(421, "4.7.0", "smarthost does not offer STARTTLS", host))
            if smarthost and self._relay.smarthost_username:
                step = await self._login(smtp, host)
                if step is not None:
                    return step
            attempt = await self._transaction(smtp, claim, pending, data, host)
            if isinstance(attempt, _Attempt):
                attempt.host, attempt.tls = host, tls
            return attempt
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # Lost before DATA: nothing was delivered, so the next host may have it.
            return _NextHost(Reply(421, "4.4.2", f"connection lost: {exc}", host))
        finally:
            task = asyncio.current_task()
            # Say QUIT politely, unless shutdown is cutting this delivery off.
            if smtp.is_connected and not (task is not None and task.cancelling()):
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await asyncio.wait_for(smtp.quit(), 5)
            smtp.close()

    async def _hello(self, smtp: aiosmtplib.SMTP, host: str) -> _NextHost | None:
        try:
            await smtp.ehlo(hostname=self._hostname)
        except aiosmtplib.SMTPHeloError as exc:
            if not smtp.is_connected:
                return _NextHost(_remote(exc.code, exc.message, host))
            try:
                await smtp.helo(hostname=self._hostname)
            except aiosmtplib.SMTPHeloError as helo_exc:
                return _NextHost(_remote(helo_exc.code, helo_exc.message, host))
        return None

    async def _login(self, smtp: aiosmtplib.SMTP, host: str) -> _NextHost | None:
        try:
            await smtp.login(self._relay.smarthost_username, self._relay.smarthost_password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A credential problem is the operator's to fix, not the sender's: defer, never
            # bounce. The reply is logged; the password never is.
            log.error("smarthost refused our credentials", host=host, code=exc.code)  # noqa: TRY400
            reason = Reply(451, "4.7.8", f"smarthost authentication failed: {exc.code}", host)
            return _NextHost(reason)
        except aiosmtplib.SMTPException as exc:
            return _NextHost(Reply(451, "4.7.0", f"smarthost authentication: {exc}", host))
        return None

    async def _transaction(
        self, smtp: aiosmtplib.SMTP, claim: Claim, pending: list[str], data: bytes, host: str
    ) -> _Attempt | _NextHost:
        outcomes: dict[str, Outcome] = {}
        # RFC 1870: a host that states its limit is told our size, and not sent more.
        options: list[bytes] = []
        if smtp.supports_extension("size"):
            limit_text = smtp.esmtp_extensions.get("size", "").strip()
            limit = int(limit_text) if limit_text.isdigit() else 0
            if limit and claim.size > limit:
                reason = Reply(552, "5.3.4", f"message size {claim.size} exceeds {limit}", host)
                return _Attempt(dict.fromkeys(pending, Failed(reason)))
            options.append(f"SIZE={claim.size}".encode("ascii"))
        if smtp.supports_extension("8bitmime") and any(b > 0x7F for b in data):
            options.append(b"BODY=8BITMIME")
        addresses = [claim.mail_from, *pending]
        if not all(a.isascii() for a in addresses):
            if not smtp.supports_extension("smtputf8"):
                reason = Reply(553, "5.6.7", "non-ASCII address and no SMTPUTF8 (RFC 6531)", host)
                return _Attempt(dict.fromkeys(pending, Failed(reason)))
            options.append(b"SMTPUTF8")
        mail = await smtp.execute_command(
            b"MAIL", b"FROM:<" + claim.mail_from.encode("utf-8") + b">", *options
        )
        mail_reply = _remote(mail.code, mail.message, host)
        if mail.code >= 500:
            return _Attempt(dict.fromkeys(pending, Failed(mail_reply)))
        if mail.code != 250:
            return _NextHost(mail_reply)
        accepted: list[str] = []
        for rcpt in pending:
            answer = await smtp.execute_command(b"RCPT", b"TO:<" + rcpt.encode("utf-8") + b">")
            reply = _remote(answer.code, answer.message, host)
            if answer.code in (250, 251):
                accepted.append(rcpt)
            elif answer.code >= 500:
                outcomes[rcpt] = Failed(reply)
            else:
                outcomes[rcpt] = Deferred(None, reply)
        if not accepted:
            with contextlib.suppress(aiosmtplib.SMTPException):
                await smtp.rset()
            return _Attempt(outcomes)
        try:
            # aiosmtplib dot-stuffs and would turn a bare CR or LF into CRLF; outbox refused
            # those, so the bytes on the wire are exactly the stored ones.
            done = await smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            reply = _remote(exc.code, exc.message, host)
            outcome: Outcome = Failed(reply) if exc.code >= 500 else Deferred(None, reply)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            # After DATA the host may have the message already; trying the next host now could
            # deliver it twice, so wait for the schedule (RFC 5321 §6.1 accepts the duplicate
            # a retry may cause, never the loss).
            lost = Reply(451, "4.4.2", f"connection lost during DATA: {exc}", host)
            outcome = Deferred(None, lost)
        else:
            outcome = Delivered(_remote(done.code, done.message, host))
        outcomes.update(dict.fromkeys(accepted, outcome))
        return _Attempt(outcomes)

    # --- recording ----------------------------------------------------------------------------

    def _record(self, claim: Claim, attempt: _Attempt) -> tuple[str, bool]:
        """Store the attempt's results, schedule the retry or finish the row, queue any DSN.

        Returns a summary for the log line and whether a DSN was queued.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            row = session.get(OutboundMessage, claim.id, with_for_update=True)
            if row is None:
                return "row deleted meanwhile", False
            if row.state is not OutboundState.QUEUED:
                return f"already {row.state.value}", False
            if row.claimed_by != self._owner:
                log.warning("lease lost during delivery; recording anyway", row=claim.id)
            results = dict(row.results or {})
            for rcpt, outcome in attempt.outcomes.items():
                results[rcpt] = _result(outcome, now, attempts=row.attempts)
            pending = [r for r in row.rcpt_to if not outbox.is_final(results.get(r))]
            schedule = self._relay.retry_schedule_seconds
            if pending:
                reasons = {results[r]["reply"] for r in pending if r in results}
                row.last_error = "; ".join(sorted(reasons))[:2000]
                if row.attempts <= len(schedule):
                    row.retry_after = now + timedelta(seconds=schedule[row.attempts - 1])
                else:
                    # The schedule ran out: what is still pending fails with its last reply.
                    for rcpt in pending:
                        entry = dict(
                            results.get(rcpt)
                            or _result(
                                Deferred(None, Reply(451, "4.4.7", "not attempted")),
                                now,
                                attempts=0,
                            )
                        )
                        entry.update(status="failed", expired=True)
                        results[rcpt] = entry
                    row.state = OutboundState.EXPIRED
                    row.finished_at = now
            else:
                failed = [r for r in row.rcpt_to if results[r]["status"] == "failed"]
                row.state = OutboundState.BOUNCED if failed else OutboundState.DELIVERED
                row.finished_at = now
                if failed:
                    row.last_error = "; ".join(sorted({results[r]["reply"] for r in failed}))[:2000]
            unreported = [
                r
                for r in row.rcpt_to
                if results.get(r, {}).get("status") == "failed" and not results[r].get("reported")
            ]
            dsn_queued = bool(unreported) and self._bounce(session, row, results, unreported)
            row.results = results
            row.claimed_by = None
            row.claim_expires_at = None
            session.flush()
            counts = {
                s: sum(1 for r in row.rcpt_to if results.get(r, {}).get("status") == s)
                for s in ("delivered", "deferred", "failed")
            }
            summary = f"{row.state.value} " + " ".join(f"{k}={v}" for k, v in counts.items() if v)
            if row.state is OutboundState.QUEUED:
                summary += f" next={row.retry_after.isoformat(timespec='seconds')}"
            return summary, dsn_queued

    def _bounce(
        self, session: Session, row: OutboundMessage, results: dict[str, Any], failed: list[str]
    ) -> bool:
        """Mark ``failed`` as reported and queue their DSN; whether one was queued."""
        for rcpt in failed:
            results[rcpt] = {**results[rcpt], "reported": True}
        if not wants_dsn(row):
            log.info("no DSN: null sender or a DSN itself", queue_id=row.queue_id)
            return False
        recipients = [
            FailedRecipient(
                address=rcpt,
                code=int(results[rcpt]["code"]),
                text=str(results[rcpt]["text"]),
                remote_mta=str(results[rcpt].get("host", "")).split("[", 1)[0],
                last_attempt=datetime.fromisoformat(results[rcpt]["at"]),
            )
            for rcpt in failed
        ]
        original = self._blobs.get(row.blob)
        dsn = queue_dsn(
            session, self._blobs, row, recipients, hostname=self._hostname, original=original
        )
        for dsn_row in dsn:
            log.info("DSN queued", queue_id=row.queue_id, dsn_queue_id=dsn_row.queue_id)
        return bool(dsn)


def _result(outcome: Outcome, at: datetime, *, attempts: int) -> dict[str, Any]:
    """One recipient's outcome as stored in ``OutboundMessage.results``."""
    if isinstance(outcome, Delivered):
        status, reply = "delivered", outcome.reply
    elif isinstance(outcome, Failed):
        status, reply = "failed", outcome.reason
    else:
        status, reply = "deferred", outcome.reason
    return {
        "status": status,
        "code": reply.code,
        "text": reply.message,  # the enhanced status first, as the DSN reads it (relay.dsn)
        "host": reply.host,
        "reply": str(reply),
        "at": at.isoformat(),
        "attempt": attempts,
    }
