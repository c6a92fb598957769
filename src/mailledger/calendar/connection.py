"""The CalDAV conversation with one calendar: discovery, changes, reads and guarded writes.

``caldav`` carries the HTTP (authentication, the session) and finds the calendars
(RFC 5397 ``current-user-principal``, RFC 4791 §6.2.1 ``calendar-home-set``); the reports
that decide what a pass reads are written here, so every request is one we chose:

- RFC 6578 ``sync-collection`` with the stored token: the hrefs changed and removed since;
  a token the server no longer knows is refused (``403`` with ``DAV:valid-sync-token``,
  §3.2) and raises :class:`InvalidSyncToken`, after which the caller compares in full;
- a ``calendar-query`` with a time-range (RFC 4791 §7.8): the hrefs and ETags of the objects
  in the window, for that full comparison and for servers without sync tokens;
- ``getctag`` (CalendarServer's extension): unchanged, a server without tokens is skipped;
- ``calendar-multiget`` (RFC 4791 §7.9): the objects that changed, in one request;
- ``PUT`` with ``If-None-Match: *`` to create and ``If-Match`` to change, ``DELETE`` with
  ``If-Match`` (RFC 4791 §5.3.2, RFC 9110 §13.1): a ``412`` raises
  :class:`PreconditionFailed` and nothing of the outside edit is overwritten.
"""

from __future__ import annotations

import base64
import inspect
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

import caldav
from caldav.lib import error as caldav_error

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
CS = "{http://calendarserver.org/ns/}"
_XML = {"Content-Type": "application/xml; charset=utf-8"}
_UTC_FORMAT = "%Y%m%dT%H%M%SZ"


class CalendarProtocolError(Exception):
    """The server answered a request with a status we cannot go on from."""

    def __init__(self, method: str, url: str, status: int, body: str = "") -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body[:500]
        super().__init__(f"{method} {url} answered {status}")


class InvalidSyncToken(Exception):  # noqa: N818 - the server's precondition's name
    """The server no longer knows the stored sync token (RFC 6578 §3.2)."""


class NoSyncTokens(Exception):  # noqa: N818 - a fact about the server
    """The server does not support ``sync-collection``: compare by ctag and ETags."""


class PreconditionFailed(Exception):  # noqa: N818 - HTTP's own name for it (412)
    """``If-Match``/``If-None-Match`` did not hold: someone else changed the object first."""

    def __init__(self, href: str) -> None:
        self.href = href
        super().__init__(f"{href} was changed on the calendar first (412)")


class CalendarChoiceError(Exception):
    """Discovery found no calendar, or several and none chosen; the message lists them."""


@dataclass
class Changes:
    """What ``sync-collection`` reported: the new token, hrefs changed (with ETags), removed."""

    token: str
    changed: dict[str, str] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Found:
    """A calendar collection found by discovery."""

    url: str
    name: str


def _client_options() -> set[str]:
    return set(inspect.signature(caldav.DAVClient.__init__).parameters)


def open_client(
    url: str,
    login: str,
    *,
    password: str | None = None,
    bearer: str | None = None,
    timeout: float = 60.0,
) -> caldav.DAVClient:
    """A client for ``url`` logging in with a password or an OAuth bearer token."""
    options: dict[str, Any] = {"url": url, "timeout": int(timeout)}
    known = _client_options()
    # Newer caldav releases look servers up in DNS (RFC 6764) and refuse plain http unless
    # told; we are given the address, and loopback servers speak http.
    if "enable_rfc6764" in known:
        options["enable_rfc6764"] = False
    if "require_tls" in known:
        options["require_tls"] = False
    # The credentials go with every request rather than after a 401: half the requests of a
    # pass that has nothing to do, and one behaviour across caldav releases. Every server we
    # know takes Basic over TLS; OAuth providers take the bearer token.
    if bearer is not None:
        options["headers"] = {"Authorization": f"Bearer {bearer}"}
    else:
        pair = f"{login}:{password or ''}".encode()
        options["headers"] = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return caldav.DAVClient(**options)


def _absolute(base: str, href: str) -> str:
    return urllib.parse.urljoin(base, href)


def _path(url: str) -> str:
    """The path of a URL, as hrefs in multistatus answers are usually written."""
    return urllib.parse.urlsplit(url).path


def _parse(body: str, method: str, url: str) -> ET.Element:
    try:
        return ET.fromstring(body.encode("utf-8") if isinstance(body, str) else body)  # noqa: S314
    except ET.ParseError as exc:
        raise CalendarProtocolError(method, url, 207, f"not XML: {exc}") from None


def _responses(root: ET.Element) -> list[tuple[str, int, dict[str, str]]]:
    """Each ``DAV:response``: its href, its status, and its properties found (200)."""
    found = []
    for response in root.iter(f"{DAV}response"):
        href = _href(response.findtext(f"{DAV}href"))
        status = _status(response.findtext(f"{DAV}status"))
        props: dict[str, str] = {}
        for propstat in response.findall(f"{DAV}propstat"):
            if _status(propstat.findtext(f"{DAV}status")) != 200:
                continue
            for prop in propstat.findall(f"{DAV}prop"):
                for child in prop:
                    props[child.tag] = (child.text or "").strip() if len(child) == 0 else "+"
        if status == 0 and props:
            status = 200
        found.append((href, status, props))
    return found


def _href(text: str | None) -> str:
    """An href as we keep it: the decoded path (servers may send a full URL)."""
    value = (text or "").strip()
    if value.startswith(("http://", "https://")):
        value = urllib.parse.urlsplit(value).path
    return urllib.parse.unquote(value)


def _status(line: str | None) -> int:
    parts = (line or "").split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def _etag(value: str | None) -> str:
    return (value or "").strip()


class CalendarConnection:
    """One calendar collection on one server, spoken to through ``client``."""

    def __init__(self, client: caldav.DAVClient, calendar_url: str) -> None:
        self.client = client
        self.url = calendar_url if calendar_url.endswith("/") else calendar_url + "/"

    # --- plain requests -------------------------------------------------------------------

    def _request(
        self, url: str, method: str, body: str = "", headers: dict[str, str] | None = None
    ) -> Any:
        return self.client.request(url, method, body, headers or {})

    def _report(self, body: str, depth: str) -> ET.Element:
        response = self._request(self.url, "REPORT", body, {**_XML, "Depth": depth})
        if response.status != 207:
            raise CalendarProtocolError("REPORT", self.url, response.status, str(response.raw))
        return _parse(response.raw, "REPORT", self.url)

    def href_url(self, href: str) -> str:
        """The full address of an object's href."""
        return _absolute(self.url, href)

    def new_href(self, uid: str) -> str:
        """Where a new object for ``uid`` is put: the calendar's path + a safe file name."""
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in uid)[:200]
        return _path(self.url) + f"{safe}.ics"

    # --- what changed -----------------------------------------------------------------------

    def collection_state(self) -> tuple[str, str]:
        """The collection's ``getctag`` and ``sync-token`` ("" where the server has none)."""
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<D:propfind xmlns:D="DAV:" xmlns:CS="http://calendarserver.org/ns/">'
            "<D:prop><CS:getctag/><D:sync-token/></D:prop></D:propfind>"
        )
        response = self._request(self.url, "PROPFIND", body, {**_XML, "Depth": "0"})
        if response.status != 207:
            raise CalendarProtocolError("PROPFIND", self.url, response.status, str(response.raw))
        for _href, _status_code, props in _responses(_parse(response.raw, "PROPFIND", self.url)):
            return props.get(f"{CS}getctag", ""), props.get(f"{DAV}sync-token", "")
        return "", ""

    def sync_collection(self, token: str) -> Changes:
        """RFC 6578 changes since ``token`` ("" for the whole collection)."""
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<D:sync-collection xmlns:D="DAV:">'
            f"<D:sync-token>{escape(token)}</D:sync-token>"
            "<D:sync-level>1</D:sync-level>"
            "<D:prop><D:getetag/></D:prop></D:sync-collection>"
        )
        try:
            response = self._request(self.url, "REPORT", body, {**_XML, "Depth": "0"})
        except caldav_error.AuthorizationError as exc:
            # A 403 to a REPORT we may otherwise make is the token: caldav raises every 403
            # (newer releases name the precondition, older ones only say "Forbidden").
            preconditions = getattr(exc, "preconditions", None) or []
            if token and (not preconditions or f"{DAV}valid-sync-token" in preconditions):
                raise InvalidSyncToken(token) from None
            raise
        if response.status in (400, 403, 409, 412, 501) and token:
            raise InvalidSyncToken(token)
        if response.status in (400, 403, 405, 415, 501):
            raise NoSyncTokens(str(response.status))
        if response.status != 207:
            raise CalendarProtocolError("REPORT", self.url, response.status, str(response.raw))
        root = _parse(response.raw, "REPORT", self.url)
        changes = Changes(token=(root.findtext(f"{DAV}sync-token") or "").strip())
        own = _path(self.url)
        for href, status, props in _responses(root):
            if href.rstrip("/") == own.rstrip("/"):
                continue
            if status == 404:
                changes.removed.add(href)
            elif f"{DAV}getetag" in props:
                changes.changed[href] = _etag(props[f"{DAV}getetag"])
        if not changes.token:
            raise NoSyncTokens("no sync-token in the answer")
        return changes

    def window_etags(self, start: datetime, end: datetime) -> dict[str, str]:
        """Hrefs and ETags of the events overlapping ``[start, end)`` (the server expands)."""
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            "<D:prop><D:getetag/></D:prop>"
            '<C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">'
            f'<C:time-range start="{start.astimezone(UTC).strftime(_UTC_FORMAT)}" '
            f'end="{end.astimezone(UTC).strftime(_UTC_FORMAT)}"/>'
            "</C:comp-filter></C:comp-filter></C:filter></C:calendar-query>"
        )
        root = self._report(body, "1")
        return {
            href: _etag(props.get(f"{DAV}getetag"))
            for href, status, props in _responses(root)
            if status == 200 and href.rstrip("/") != _path(self.url).rstrip("/")
        }

    def multiget(self, hrefs: list[str]) -> dict[str, tuple[str, str]]:
        """The objects at ``hrefs``: href → (ETag, iCalendar text); missing ones are left out."""
        if not hrefs:
            return {}
        wanted = "".join(f"<D:href>{escape(_path(self.href_url(h)))}</D:href>" for h in hrefs)
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<C:calendar-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
            f"<D:prop><D:getetag/><C:calendar-data/></D:prop>{wanted}</C:calendar-multiget>"
        )
        root = self._report(body, "1")
        found: dict[str, tuple[str, str]] = {}
        for response in root.iter(f"{DAV}response"):
            href = _href(response.findtext(f"{DAV}href"))
            etag, data = "", None
            for propstat in response.findall(f"{DAV}propstat"):
                if _status(propstat.findtext(f"{DAV}status")) != 200:
                    continue
                etag = _etag(propstat.findtext(f"{DAV}prop/{DAV}getetag")) or etag
                text = propstat.findtext(f"{DAV}prop/{CALDAV}calendar-data")
                if text is not None:
                    data = text
            if data is not None:
                found[href] = (etag, data)
        return found

    # --- single objects -----------------------------------------------------------------

    def get(self, href: str) -> tuple[str, str] | None:
        """The object at ``href`` (ETag, text), or None when it is gone."""
        response = self._request(self.href_url(href), "GET")
        if response.status == 404:
            return None
        if response.status != 200:
            raise CalendarProtocolError("GET", href, response.status, str(response.raw))
        return _etag(response.headers.get("ETag")), str(response.raw)

    def put(self, href: str, text: str, *, etag: str | None) -> str:
        """Create (``etag`` None: ``If-None-Match: *``) or change (``If-Match``); new ETag.

        A server that sends no ETag with its answer is asked for it (RFC 4791 §5.3.4 lets it
        leave it out when it changed the data as it stored it).
        """
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        if etag is None:
            headers["If-None-Match"] = "*"
        else:
            headers["If-Match"] = etag
        response = self._request(self.href_url(href), "PUT", text, headers)
        if response.status == 412:
            raise PreconditionFailed(href)
        if response.status not in (200, 201, 204):
            raise CalendarProtocolError("PUT", href, response.status, str(response.raw))
        new = _etag(response.headers.get("ETag"))
        if new and not new.startswith("W/"):
            return new
        stored = self.get(href)
        return stored[0] if stored is not None else ""

    def delete(self, href: str, etag: str) -> None:
        """Delete the object if it is still the one we know (``If-Match``); gone is fine."""
        headers = {"If-Match": etag} if etag else {}
        response = self._request(self.href_url(href), "DELETE", "", headers)
        if response.status == 412:
            raise PreconditionFailed(href)
        if response.status not in (200, 204, 404):
            raise CalendarProtocolError("DELETE", href, response.status, str(response.raw))


# --- discovery ---------------------------------------------------------------------------


def _is_calendar(client: caldav.DAVClient, url: str) -> bool:
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/></D:prop></D:propfind>'
    )
    response = client.request(url, "PROPFIND", body, {**_XML, "Depth": "0"})
    if response.status != 207:
        return False
    root = _parse(response.raw, "PROPFIND", url)
    return any(True for _ in root.iter(f"{CALDAV}calendar"))


def discover(client: caldav.DAVClient, url: str, name: str = "") -> Found:
    """The calendar ``url`` names, or the one called ``name`` in the principal's home set.

    ``url`` may be a calendar collection (used as it is), or a server or principal address:
    then ``current-user-principal`` and ``calendar-home-set`` lead to the calendars, and
    ``name`` (display name or last path segment) picks one; with one calendar it is taken.
    """
    if _is_calendar(client, url):
        return Found(url if url.endswith("/") else url + "/", name or _last_segment(url))
    # Typed in newer caldav releases, untyped in older ones.
    principal_of: Callable[[], Any] = client.principal
    calendars = principal_of().calendars()
    choices = []
    for calendar in calendars:
        shown = ""
        try:
            shown = str(calendar.get_display_name() or "")
        except caldav_error.DAVError:
            shown = ""
        choices.append(Found(str(calendar.url), shown or _last_segment(str(calendar.url))))
    if not choices:
        raise CalendarChoiceError(f"no calendar was found at {url}: create one first")
    if name:
        for found in choices:
            if name.lower() in (found.name.lower(), _last_segment(found.url).lower()):
                return found
        listed = ", ".join(repr(f.name) for f in choices)
        raise CalendarChoiceError(f"no calendar called {name!r} at {url}; there are: {listed}")
    if len(choices) == 1:
        return choices[0]
    listed = ", ".join(repr(f.name) for f in choices)
    raise CalendarChoiceError(f"{url} has several calendars ({listed}): choose one with --calendar")


def _last_segment(url: str) -> str:
    return urllib.parse.unquote(_path(url).rstrip("/").rpartition("/")[2])
