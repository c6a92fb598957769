"""Settings: one typed schema, read from a TOML file, overridden by ``MAILLEDGER_SECTION__KEY``.

Unknown keys and bad values stop the start with a message naming the key (a silently ignored
typo in a mail server's configuration is how mail gets lost).
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "MAILLEDGER_"
CONFIG_ENV = "MAILLEDGER_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:2525 or [::1]:2525)")
    return value


def split_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 hosts in brackets) into its parts."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/mailledger.db"
    echo: bool = False


class StorageSettings(_Section):
    # Raw messages and attachments, content-addressed; fsynced before we answer 250.
    blob_dir: str = "var/blobs"
    # New mail is refused with 452 4.3.1 while the blob directory's file system (and an SQLite
    # database's) has less than this many bytes free, so the disk never fills mid-write.
    min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # Where blobs live (store/blobbackend.py): "filesystem" (blob_dir), "database" (chunked rows
    # in [database] url: several nodes then share nothing but the database) or "s3" (an
    # S3-compatible object store). With "database" or "s3", blob_dir only spools large DATA on
    # this node while it arrives. `mailledger storage migrate --to …` moves existing blobs.
    backend: Literal["filesystem", "database", "s3"] = "filesystem"
    # "filesystem": blobs up to this many bytes are kept together in one SQLite file in
    # blob_dir (small-blobs.sqlite3) rather than a file each, which costs the kernel more than
    # the rest of storing a small message (store/blobpack.py). 0: every blob is a file.
    small_blob_bytes: int = Field(default=64 * 1024, ge=0, le=1024 * 1024)
    # [storage] backend = "s3": the endpoint (empty: AWS's own), the bucket, its region, a prefix
    # for every key, and the credentials (empty: boto3's chain: environment, instance role).
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_region: str = ""
    s3_prefix: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # Objects larger than this go up in parts of this size (S3's minimum part is 5 MiB).
    s3_multipart_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)

    @model_validator(mode="after")
    def _s3_bucket(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError('backend = "s3" needs s3_bucket')
        return self


class CaptureSettings(_Section):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:2525"])
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1)
    max_received_headers: int = Field(default=50, ge=1)
    max_local_part_bytes: int = Field(default=64, ge=1)
    max_header_bytes: int = Field(default=256 * 1024, ge=1024)
    max_mime_depth: int = Field(default=20, ge=1)
    max_mime_parts: int = Field(default=500, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)
    max_sessions: int = Field(default=1000, ge=1)
    # A session is closed with 421 4.4.2 once it has lasted this long, however busy, and after
    # this many commands that make no progress (NOOP, RSET, HELP, VRFY, EXPN, unknown) since
    # the last accepted message (Postfix's smtpd_junk_command_limit is 100).
    max_session_seconds: float = Field(default=1800.0, gt=0)
    max_junk_commands: int = Field(default=100, ge=1)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        return [_check_listen(v) for v in value]


class SubmissionSettings(_Section):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:2587"])
    listen_tls: list[str] = Field(default_factory=list)
    max_sessions: int = Field(default=200, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0)
    # As [capture]'s: the session time cap and the cap on commands without progress.
    max_session_seconds: float = Field(default=1800.0, gt=0)
    max_junk_commands: int = Field(default=100, ge=1)
    # Failed logins: after max_auth_failures from one client address, or for one login from one
    # source network (/24, /64), within auth_window_seconds, further attempts from there are
    # refused for auth_lockout_seconds (relay.lockout).
    max_auth_failures: int = Field(default=5, ge=1)
    auth_window_seconds: float = Field(default=900.0, gt=0)
    auth_lockout_seconds: float = Field(default=900.0, gt=0)

    @field_validator("listen", "listen_tls")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        return [_check_listen(v) for v in value]


class TLSSettings(_Section):
    cert_file: str = ""
    key_file: str = ""


class DNSSettings(_Section):
    nameservers: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(default=5.0, gt=0)


class RelaySettings(_Section):
    smtp_port: int = Field(default=25, ge=1, le=65535)
    # Seconds to wait before each retry of a temporary failure; when the list runs out the
    # message expires and its sender gets a DSN (RFC 3464).
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0]
    )
    connect_timeout_seconds: float = Field(default=30.0, gt=0)
    command_timeout_seconds: float = Field(default=300.0, gt=0)
    # Postfix's default_destination_concurrency_limit; 5 held a burst to one domain back.
    max_per_domain: int = Field(default=20, ge=1)
    max_concurrent: int = Field(default=50, ge=1)
    lease_seconds: float = Field(default=600.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    # Where DKIM private key files were kept before keys moved into the database (sealed):
    # `db upgrade` / `dkim import` read old files from here once; nothing new is written.
    dkim_key_dir: str = "var/dkim"
    # Mail whose From domain has no verified DKIM key: "hold" it, or "send" it unsigned.
    unsigned_policy: Literal["hold", "send"] = "hold"
    # How often held mail is tried again: it is signed and sent once its key is published.
    held_retry_seconds: float = Field(default=300.0, gt=0)
    # Deliver everything through this host instead of MX lookups; empty: MX delivery.
    smarthost: str = ""
    smarthost_username: str = ""
    smarthost_password: str = ""
    # Require TLS to the smarthost (STARTTLS) before sending credentials.
    smarthost_require_tls: bool = True

    @field_validator("smarthost")
    @classmethod
    def _smarthost(cls, value: str) -> str:
        return _check_listen(value) if value else value


class ServiceSettings(_Section):
    hostname: str = "mx.capture.example"
    spf_include_domain: str = "_spf.capture.example"
    relay_addresses: list[str] = Field(default_factory=list)
    # Names this process in queue claims; two processes must never share one.
    node_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # On SIGTERM, how long a session in DATA may take to finish before it is cut off.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Processes accepting capture mail on the same port (SO_REUSEPORT, Linux), each with its
    # own intake writer; the server's own process is one of them. A process that dies is
    # restarted. More than 1 needs SO_REUSEPORT.
    listener_processes: int = Field(default=1, ge=1, le=64)
    # The sender of our own mail to staff (sign-in links); "" means noreply@<hostname>. A
    # tenant may choose one of its own addresses instead (`tenant set --system-sender`).
    system_address: str = ""

    @property
    def system_sender(self) -> str:
        """The address our own mail to staff comes from."""
        return self.system_address or f"noreply@{self.hostname}"


class ProcessingSettings(_Section):
    # A claim on a received message lapses after this long, so another node (or this one,
    # restarted) takes over the work of a node that died.
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    # Messages claimed at once, and recorded together (a savepoint each): a recording
    # transaction takes no further message once it has held the database this long (on
    # SQLite intake's commit, and so the 250, waits for it).
    batch_size: int = Field(default=32, ge=1)
    transaction_hold_seconds: float = Field(default=0.002, gt=0)
    # On SQLite, while none of the server's writers waits for the lock (a backlog, a mailbox
    # backfill), a recording transaction goes on taking messages up to this long: fewer
    # commits for the same messages (store.lockwaits).
    transaction_max_seconds: float = Field(default=0.1, gt=0)
    # 0: process in the server's own process. N: in N processes of their own, so parsing and
    # sender checks run on other cores than the listeners (set it to the number of cores).
    worker_processes: int = Field(default=0, ge=0, le=64)
    # How much nicer than the listeners those processes run (added to the server's niceness):
    # when the CPU is short, accepting mail goes first and processing catches up after.
    worker_nice: int = Field(default=10, ge=0, le=19)
    max_attempts: int = Field(default=5, ge=1)
    # Volume brake: more than this many messages in the window from one sender nobody
    # authenticated are held ("volume"); an authenticated sender (staff, or a client whose
    # own DKIM or DMARC passes) is never counted. Loops are told by loop evidence instead.
    loop_threshold: int = Field(default=50, ge=1)
    loop_window_seconds: float = Field(default=600.0, gt=0)
    # Loop evidence: one email (its Message-ID, or the same From, To, Date, Subject and
    # text) arriving at one capture address more often than this within the window.
    loop_max_arrivals: int = Field(default=3, ge=1)
    # Loop evidence: our [service] hostname in more Received headers below the newest than
    # this. Once is one email taking a second path (relayed by us, forwarded back).
    loop_max_own_hops: int = Field(default=1, ge=0)
    privacy_keywords: list[str] = Field(default_factory=lambda: ["[private]", "[confidential]"])


class VerifySettings(_Section):
    # The name our Authentication-Results headers carry; empty: [service] hostname.
    authserv_id: str = ""
    # ARC sealers whose valid chains may vouch for a forward (DESIGN §4).
    trusted_arc_sealers: list[str] = Field(
        default_factory=lambda: ["google.com", "microsoft.com", "outlook.com"]
    )
    # One message's whole SPF, DKIM, ARC and DMARC work; running out is a temperror.
    time_budget_seconds: float = Field(default=20.0, gt=0)
    # DKIM signatures checked per message, the relevant first (OpenDKIM checks 3); the rest
    # are recorded as "not checked (limit)".
    max_signatures: int = Field(default=5, ge=1, le=50)
    # DNS questions one message may cause across SPF, DKIM, ARC and DMARC.
    max_dns_queries: int = Field(default=50, ge=10, le=1000)
    # DEMO ONLY: treat mail from 127.0.0.0/8 and ::1 as sent by an authenticated forwarder.
    demo_trust_loopback: bool = False


class LoggingSettings(_Section):
    # auto: JSON lines when stderr is not a terminal (systemd), readable console otherwise.
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsSettings(_Section):
    # HOST:PORT of the /metrics and /health endpoint; "" turns it off.
    listen: str = "127.0.0.1:9425"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value) if value else value


class HTTPSettings(_Section):
    # HOST:PORT of the API (and, later, the web pages); "" turns it off. Production puts a
    # TLS-terminating proxy in front of it.
    listen: str = "127.0.0.1:8025"
    # The base of every link we print or mail (attachment and raw-message URLs).
    public_url: str = "http://127.0.0.1:8025"
    # Proxies whose X-Forwarded-For/-Proto headers are believed (addresses or networks);
    # empty: the headers are ignored and the peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Requests one API token may make per minute before it is answered 429 with Retry-After.
    rate_limit_per_minute: int = Field(default=1200, ge=1)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value) if value else value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")


class RetentionSettings(_Section):
    # Days the raw bytes of finished (processed or failed) messages are kept; 0 keeps them.
    raw_days: int = Field(default=0, ge=0)
    # Days quarantined messages are kept before they are deleted; 0 keeps them.
    quarantine_days: int = Field(default=0, ge=0)
    # Days the webhook delivery log (events delivered or failed for good, their deliveries
    # and attempts) is kept; an event still to deliver is never deleted. 0 keeps them.
    webhook_days: int = Field(default=30, ge=0)
    # Days stored bytes that no row names (a quarantined message's stamped copy and
    # attachments, a crash's leftovers) are kept after a writer last stored them, as
    # `mailledger storage sweep --older-than-days` does; 0 keeps them. Not on S3.
    sweep_days: int = Field(default=0, ge=0)
    # How often serve() runs the retention pass, in seconds.
    interval_seconds: float = Field(default=3600.0, gt=0)
    # Messages handled per transaction, so one pass never holds a long lock.
    batch_size: int = Field(default=200, ge=1)


class ForwardingSettings(_Section):
    # Forwarding health (forwarding/health.py), only for staff whose forwarding was proven.
    # Days between round-trip rechecks of a proven forward; 0 turns rechecks off.
    recheck_days: int = Field(default=7, ge=0)
    # Hours a recheck has to come back before forwarding counts as broken. Longer than the
    # relay's default retry schedule (about 16 hours), so a mailbox that is slow to accept the
    # check (greylisting, an outage) is not taken for a broken forward.
    deadline_hours: float = Field(default=24.0, gt=0)
    # Days without forwarded mail, while the staff member sends mail, before forwarding counts
    # as broken; 0 turns the silence rule off. A week: a working week with a weekend, long
    # enough that quiet days are no alarm, short enough that lost mail is found in days.
    silence_days: int = Field(default=7, ge=0)
    # How often serve() runs the health pass, in seconds (one node of several runs it).
    interval_seconds: float = Field(default=3600.0, gt=0)


class WebhookSettings(_Section):
    # Deliver to loopback, private, link-local, unique-local, multicast or unspecified
    # addresses; off in production (a tenant's URL must not reach our own network), on in
    # tests that run their receiver on 127.0.0.1.
    allow_private_targets: bool = False
    # Seconds before each attempt of one event to one endpoint, the first included (0: at
    # once), each spread by a little random jitter; when the list runs out the delivery has
    # failed and its endpoint is marked failing.
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
    )
    # One attempt (connect, send, the answer) in all, in seconds.
    timeout_seconds: float = Field(default=15.0, gt=0)
    # Attempts in flight at once, per node.
    max_concurrent: int = Field(default=20, ge=1)
    # A claimed delivery lapses after this long, so another node (or this one, restarted)
    # takes it over; renewed while the attempt runs.
    lease_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays are seconds, 0 or more")
        return value


class SecretsSettings(_Section):
    # The key that seals secrets we must read back (webhook signing secrets, mailbox
    # passwords, OAuth tokens, DKIM private keys; every node needs the same file): one Fernet
    # key per line, the first seals. `db upgrade` creates it (mode 0600) when missing. Keep it
    # out of database backups, and back it up apart.
    key_file: str = "var/secret.key"


class SyncSettings(_Section):
    """``[sync]``: mailbox sync (DESIGN §12), how often, how much at once, and the limits."""

    # A full pass over every folder of an account this often (IDLE brings INBOX sooner).
    interval_minutes: float = Field(default=30.0, gt=0)
    # IMAP connections one account may have open at once (Gmail allows 15 in all).
    connections_per_account: int = Field(default=2, ge=1, le=15)
    # UIDs per FETCH, and per transaction: the most a crash can make us fetch again.
    batch_size: int = Field(default=500, ge=1, le=5000)
    # A larger message is recorded from its headers only, with a note (never fetched whole).
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # IDLE is re-issued at least this often: RFC 2177 §3 asks for less than 29 minutes.
    idle_seconds: float = Field(default=1500.0, gt=0, le=29 * 60)
    # The folder list (which is Sent, did the user add one) is read again this often.
    folder_refresh_minutes: float = Field(default=60.0, gt=0)
    # Messages one staff member's accounts may sync per UTC day; none: no limit. Over it the
    # account waits (`pending`) until the next day, and the rest is fetched then.
    daily_limit_per_user: int | None = Field(default=None, ge=1)
    # Mailbox accounts one tenant may connect; none: no limit.
    max_accounts_per_tenant: int | None = Field(default=None, ge=1)
    # How often, in seconds, the sync worker looks for accounts that are due.
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    # A claimed account lapses after this many seconds so another node takes it over;
    # renewed while its pass runs.
    lease_seconds: float = Field(default=120.0, gt=0)
    # One pass of one account may take this long before it is cut off (and retried later),
    # so one slow or broken mailbox never holds the others up.
    pass_timeout_seconds: float = Field(default=1800.0, gt=0)
    # Accounts synced at once, per node.
    max_concurrent_accounts: int = Field(default=20, ge=1)
    # Seconds to wait for an IMAP server to connect or answer before the pass fails.
    timeout_seconds: float = Field(default=60.0, gt=0)


class CalendarSettings(_Section):
    """``[calendar]``: calendar sync (DESIGN §13): the window of days and how often."""

    # Events from this many days back to this many days ahead are synced both ways.
    days_back: int = Field(default=10, ge=0, le=366)
    days_ahead: int = Field(default=60, ge=1, le=732)
    # A pass of every calendar account this often (and on demand: `calendar sync`).
    interval_minutes: float = Field(default=60.0, gt=0)
    # How often, in seconds, the calendar worker looks for accounts that are due.
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    # A claimed account lapses after this many seconds so another node takes it over.
    lease_seconds: float = Field(default=120.0, gt=0)
    # Calendar accounts synced at once, per node.
    max_concurrent_accounts: int = Field(default=10, ge=1)
    # Seconds to wait for a CalDAV server to answer one request before the pass fails.
    timeout_seconds: float = Field(default=60.0, gt=0)


class OAuthSettings(_Section):
    """One OAuth 2.0 provider (Google, Microsoft 365): mailbox (XOAUTH2) and calendar sign-ins.

    The endpoints default to the provider's own; tests point them at a local token endpoint.
    """

    client_id: str = ""
    client_secret: str = ""
    auth_url: str = ""
    token_url: str = ""
    scopes: list[str] = Field(default_factory=list)
    # The scopes asked for when a calendar signs in (`calendar add --oauth`); a calendar's
    # sign-in is its own grant, so a mailbox's token never reaches the calendar or back.
    calendar_scopes: list[str] = Field(default_factory=list)
    # Where the provider sends the browser back; empty: [http] public_url +
    # /accounts/oauth/callback. `account add --oauth` reads the redirected URL pasted back.
    redirect_uri: str = ""


def _google() -> OAuthSettings:
    return OAuthSettings(
        auth_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL, not a secret
        scopes=["https://mail.google.com/"],
        calendar_scopes=["https://www.googleapis.com/auth/calendar"],
    )


def _microsoft() -> OAuthSettings:
    return OAuthSettings(
        auth_url="https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url="https://login.microsoftonline.com/common/oauth2/v2.0/token",  # noqa: S106
        scopes=["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"],
    )


class OAuthSettingsAll(_Section):
    """``[oauth.google]`` and ``[oauth.microsoft]``: keys left out keep the provider's defaults."""

    google: OAuthSettings = Field(default_factory=_google)
    microsoft: OAuthSettings = Field(default_factory=_microsoft)

    @field_validator("google", "microsoft", mode="before")
    @classmethod
    def _defaults(cls, value: Any, info: Any) -> Any:
        if isinstance(value, dict):
            base = (_google() if info.field_name == "google" else _microsoft()).model_dump()
            return {**base, **value}
        return value


class Settings(_Section):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    submission: SubmissionSettings = Field(default_factory=SubmissionSettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    dns: DNSSettings = Field(default_factory=DNSSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    verify: VerifySettings = Field(default_factory=VerifySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    forwarding: ForwardingSettings = Field(default_factory=ForwardingSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    oauth: OAuthSettingsAll = Field(default_factory=OAuthSettingsAll)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    calendar: CalendarSettings = Field(default_factory=CalendarSettings)


# (section, key) pairs printed masked by check-config; passwords in URLs are masked separately.
# Sections made of sections ([oauth.google]): their keys are three parts deep.
NESTED_SECTIONS: frozenset[str] = frozenset({"oauth"})

# A key may be a dotted path inside its section (``google.client_secret`` of [oauth]).
SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("relay", "smarthost_password"),
        ("storage", "s3_secret_access_key"),
        ("oauth", "google.client_secret"),
        ("oauth", "microsoft.client_secret"),
    }
)


def _env_value(raw: str) -> Any:
    """Read an environment value as a TOML value when it is one, else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


# Names warned about in this process: a reload or a second load says nothing new.
_WARNED: set[str] = set()


def _warn_foreign(name: str) -> None:
    """Say once that a MAILLEDGER_ variable is not one of ours, and go on.

    Wrappers, deploy tools and shells set variables of their own under our prefix (a
    ``MAILLEDGER_HOME`` in a unit file); refusing to start over them helps nobody. A name
    with ``__`` is meant as an override, and an unknown one stays an error: it is a typo.
    """
    if name in _WARNED:
        return
    _WARNED.add(name)
    sys.stderr.write(
        f"mailledger: warning: ignoring {name}: not a setting (overrides are named "
        f"{ENV_PREFIX}SECTION__KEY, the file {CONFIG_ENV})\n"
    )


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """Put the overrides into ``data``; returns which variable set each (section, key)."""
    origins: dict[tuple[str, str], str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        if "__" not in name[len(ENV_PREFIX) :]:
            _warn_foreign(name)
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        # Three parts reach a nested section: MAILLEDGER_OAUTH__GOOGLE__CLIENT_ID.
        nested = len(path) == 3 and path[0] in NESTED_SECTIONS
        if (len(path) != 2 and not nested) or not all(path):
            raise ConfigError(f"{name}: environment overrides are named MAILLEDGER_SECTION__KEY")
        section = data.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: [{path[0]}] is not a section")
        if len(path) == 3:
            section = section.setdefault(path[1], {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: [{path[0]}.{path[1]}] is not a section")
        section[path[-1]] = _env_value(raw)
        origins[(path[0], path[1])] = name
    return origins


def _describe(error: ValidationError, origins: Mapping[tuple[str, str], str] | None = None) -> str:
    origins = origins or {}
    lines = []
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        key = ".".join(loc)
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        # A key set from the environment is named by its variable, which is what to fix.
        variables = [
            v for (section, name), v in origins.items() if loc[:2] in ((section, name), (section,))
        ]
        source = f" (from {', '.join(sorted(variables))})" if variables else ""
        lines.append(f"{key}: {message}{source}")
    return "; ".join(lines)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the file (if any), apply environment overrides, and validate everything."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such configuration file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    origins = _apply_env(data, env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(where + _describe(exc, origins)) from exc


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with secrets replaced by a mask."""
    data = settings.model_dump()
    for section, key in SECRET_KEYS:
        *parents, leaf = key.split(".")
        holder = data[section]
        for parent in parents:
            holder = holder[parent]
        if holder.get(leaf):
            holder[leaf] = "********"
    url: str = data["database"]["url"]
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        data["database"]["url"] = f"{scheme}://{user}:********@{host}"
    return data
