"""What every admin page does the same way: render with the session's values, read a posted
form and check its CSRF token, parse ids from the path.

An admin page is always rendered with the nav of a signed-in admin; a POST without the
session's token changes nothing and answers 403 (``refused.html``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from mailledger.store.removal import History
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages import csrf
from mailledger.web.pages.site import pages_of

MAX_FIELD = 2000  # longer than any address list a person types into one form field
MAX_ID = 2**63 - 1  # a larger number in a URL names no row (and would overflow a bigint)

T = TypeVar("T")


class Refusal(Exception):  # noqa: N818 - a refusal to show, not a fault
    """Raised inside a page's write: the transaction rolls back, the page shows the text."""


class Missing(LookupError):  # noqa: N818 - answers 404, not a fault
    """Raised inside a page's read or write: no such row in the session's tenant (a 404)."""


@dataclass(frozen=True)
class Posted:
    """A posted form whose token was checked: one value per name, or every value."""

    values: dict[str, list[str]]

    def get(self, name: str) -> str:
        """The first value of ``name``, stripped and cut at ``MAX_FIELD``; "" when absent."""
        found = self.values.get(name) or [""]
        return found[0].strip()[:MAX_FIELD]

    def every(self, name: str) -> list[str]:
        """Every value of ``name`` (checkboxes), in form order."""
        return list(self.values.get(name, []))


async def posted(request: Request, identity: WebIdentity) -> Posted | None:
    """The form, or None when its CSRF token is missing or wrong."""
    form = await csrf.read_multi_form(request)
    if not csrf.matches(csrf.first_values(form), identity.csrf_token):
        return None
    return Posted(form)


def refused(request: Request) -> Response:
    """The 403 a forged or stale form gets; nothing was changed."""
    return pages_of(request).page("refused.html", status=403, why="csrf", signed_in=True)


def page(
    request: Request, identity: WebIdentity, name: str, status: int = 200, **values: Any
) -> Response:
    """An admin template with the values every signed-in page needs."""
    return pages_of(request).page(
        name, status=status, signed_in=True, admin=identity.admin,
        csrf_token=identity.csrf_token, **values,
    )  # fmt: skip


def path_id(request: Request, name: str) -> int | None:
    """A row id from the path (routes declare ``{name:int}``); None when it is not one."""
    value = request.path_params.get(name)
    return value if isinstance(value, int) and 0 < value <= MAX_ID else None


def split_list(text: str) -> list[str]:
    """Addresses or domains typed into one field: separated by commas, semicolons or spaces."""
    return [part for part in re.split(r"[\s,;]+", text) if part]


def done_text(request: Request, texts: Mapping[str, str]) -> str:
    """The sentence for the ``?done=`` a redirect after a change carries; "" for any other."""
    return texts.get(request.query_params.get("done", ""), "")


def history_choice(form: Posted) -> History | None:
    """A removal form's keep/remove choice for the history; None when neither was chosen."""
    value = form.get("history")
    return History(value) if value in (History.KEEP.value, History.REMOVE.value) else None


@contextlib.contextmanager
def refusing(*errors: type[Exception]) -> Iterator[None]:
    """Turn a store's own refusal (``DirectoryError`` and the like) into one the page shows."""
    try:
        yield
    except errors as exc:
        raise Refusal(str(exc)) from exc


async def posted_row(
    request: Request, identity: WebIdentity, name: str
) -> tuple[int, Posted] | Response:
    """The row id in the path and the checked form behind a button; else the 404 or 403."""
    row_id = path_id(request, name)
    if row_id is None:
        return pages_of(request).not_found()
    form = await posted(request, identity)
    if form is None:
        return refused(request)
    return row_id, form


async def write_or_refuse(
    request: Request,
    work: Callable[[Session], T],
    refusal_page: Callable[[str], Awaitable[Response]],
) -> T | Response:
    """Run ``work`` in one transaction: its result, or the answer to give instead.

    ``Missing`` inside it answers 404; a ``Refusal`` rolls it back and answers
    ``refusal_page(reason)``, the form shown again with what to change.
    """
    pages = pages_of(request)
    try:
        return await pages.write(work)
    except Missing:
        return pages.not_found()
    except Refusal as exc:
        return await refusal_page(str(exc))
