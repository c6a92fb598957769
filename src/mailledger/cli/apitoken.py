"""``mailledger api-token create | list | revoke``: the tokens a CRM uses to read the API."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    CommandError,
    command,
    emit,
    err,
    group,
    json_flag,
    out,
    session_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings

TOKEN_COLUMNS = ["id", "name", "prefix", "read_only", "state", "created_at", "last_used_at"]


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    """Make a token for a tenant and print it: the only time it is shown."""
    from mailledger.store import apitokens, directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        row, token = apitokens.create_token(
            session, tenant, name=args.name, read_only=args.read_only
        )
        token_id, tenant_name = row.id, tenant.name
    # The token alone on stdout (`TOKEN=$(mailledger api-token create acme)`), the note aside.
    out(token)
    kind = "read-only " if args.read_only else ""
    err(
        f"{kind}API token {token_id} for {tenant_name}; it is shown only now: "
        "keep it in the CRM's secret store"
    )
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's tokens (never the tokens themselves)."""
    from mailledger.store import apitokens, directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        rows = apitokens.list_tokens(session, tenant)
    emit(rows, TOKEN_COLUMNS, as_json=args.json, empty="no API tokens")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    """Revoke a token: the next request with it is refused."""
    from mailledger.store import apitokens

    with session_scope(settings) as session:
        try:
            row = apitokens.revoke_token(session, args.id)
        except apitokens.TokenError as exc:
            raise CommandError(str(exc)) from exc
        token_id = row.id
    out(f"API token {token_id} revoked")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``api-token`` command group to the CLI."""
    tokens = group(commands, "api-token", "tokens for the HTTP API")
    sub = command(tokens, "create", cmd_token_create, "make a token; prints it once")
    sub.add_argument("tenant", metavar="TENANT")
    sub.add_argument("--name", default="", metavar="N", help="what the token is for")
    sub.add_argument("--read-only", action="store_true", help="may read, never change")
    sub = json_flag(command(tokens, "list", cmd_token_list, "list a tenant's tokens"))
    sub.add_argument("tenant", metavar="TENANT")
    sub = command(tokens, "revoke", cmd_token_revoke, "stop a token working")
    sub.add_argument("id", type=int, metavar="ID")
