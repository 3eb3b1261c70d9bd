"""``defi-realtime keys`` and ``defi-realtime accounts``: accounts and their API keys.

A key belongs to one account, named by id (``--account``) or new (the default); never by
name. Every command that makes a key prints it as the only line on stdout; listings print
one JSON object per line on stdout (never a secret) and a table on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from ..application.api_keys import key_state
from .console import err
from .container import opened
from .settings import Settings

if TYPE_CHECKING:
    from ..domain.account import Account
    from ..domain.api_key import ApiKey

__all__ = ["accounts_cli", "keys_cli"]

keys_cli = typer.Typer(help="API keys (each belongs to one account).", no_args_is_help=True)
accounts_cli = typer.Typer(help="Accounts (own keys, alert rules, alerts).", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(2)


def _account_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise _fail(f"--account must be an account id (see accounts list), got {raw!r}") from None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def key_view(key: ApiKey, now: float) -> dict[str, Any]:
    """What ``keys list`` shows of a key: never its secret, nor its hash."""
    return {
        "key_id": str(key.id),
        "account_id": str(key.account_id),
        "name": key.name,
        "tier": key.tier,
        "state": key_state(key, now),
        "valid_until": _iso(key.valid_until()),
        "allowed_ips": list(key.allowed_ips),
        "created": _iso(key.created_on.timestamp()),
    }


def account_view(account: Account | UUID) -> dict[str, Any]:
    if isinstance(account, UUID):  # keys issued before accounts, not adopted yet
        return {"account_id": str(account), "name": None, "contact": None, "legacy": True}
    return {
        "account_id": str(account.id),
        "name": account.name or None,
        "contact": account.contact or None,
        "legacy": account.legacy_owner is not None,
        "created": _iso(account.created_on.timestamp()),
    }


def _print_rows(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(column) or "") for column in columns))
    err.print(table)
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")


def _grace(raw: str | None, settings: Settings) -> float:
    if raw is None:
        return settings.key_rotation_grace
    from ..application.coins import parse_duration

    if raw.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_duration(raw)
    except ValueError as error:
        raise _fail(f"--grace {error}") from None


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="the key's name (and a new account's)")] = "default",
    account: Annotated[
        str | None, typer.Option(help="id of the account the key is for (default: a new one)")
    ] = None,
    new_account: Annotated[
        bool, typer.Option("--new-account", help="make a new account for the key (the default)")
    ] = False,
    tier: Annotated[str, typer.Option(help="free | basic | pro | enterprise")] = "free",
    allow_ip: Annotated[
        list[str] | None,
        typer.Option(help="an address or CIDR the key may be used from (enterprise; repeat)"),
    ] = None,
) -> None:
    """Create an API key; prints the key as the only line on stdout."""
    from ..application.app import AccountNotFound
    from ..domain.errors import DomainError

    if account is not None and new_account:
        raise _fail("give --account or --new-account, not both")
    account_id = None if account is None else _account_id(account)
    with opened(Settings()) as container:
        try:
            secret = container.application().issue_api_key(
                name, tier, account_id=account_id, allowed_ips=allow_ip or ()
            )
        except (DomainError, AccountNotFound) as error:
            raise _fail(str(error)) from None
    sys.stdout.write(secret + "\n")


@keys_cli.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="only this account's keys")] = None,
) -> None:
    """List keys (never their secrets): a table on stderr, one JSON object a line on stdout."""
    account_id = None if account is None else _account_id(account)
    with opened(Settings()) as container:
        keys = container.application().api_keys(account_id)
    now = time.time()
    _print_rows(
        f"{len(keys)} keys",
        [key_view(key, now) for key in keys],
        ["key_id", "account_id", "name", "tier", "state", "valid_until", "allowed_ips"],
    )


@keys_cli.command("rotate")
def keys_rotate(
    key: Annotated[str, typer.Argument(help="the key, its SHA-256 hash, or its id")],
    grace: Annotated[
        str | None,
        typer.Option(help="how long the old key keeps working (24h, 30m, 0; KEY_ROTATION_GRACE)"),
    ] = None,
) -> None:
    """Replace a key by a new one of the same account, name, tier and allow-list; prints the
    new key as the only line on stdout. The old one works for the grace period."""
    from ..application.app import ApiKeyNotFound
    from ..domain.errors import DomainError

    settings = Settings()
    seconds = _grace(grace, settings)
    with opened(settings) as container:
        try:
            secret = container.application().rotate_api_key(key, seconds)
        except ApiKeyNotFound:
            raise _fail("cannot rotate: unknown key") from None
        except DomainError as error:
            raise _fail(f"cannot rotate: {error}") from None
    sys.stdout.write(secret + "\n")


@keys_cli.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key, its SHA-256 hash, or its id")],
) -> None:
    """Revoke an API key: every node refuses it, and closes its sockets, at once."""
    from ..application.app import ApiKeyNotFound
    from ..domain.errors import DomainError

    with opened(Settings()) as container:
        try:
            container.application().revoke_api_key(key)
        except ApiKeyNotFound:
            raise _fail("cannot revoke: unknown key") from None
        except DomainError as error:
            raise _fail(f"cannot revoke: {error}") from None
    err.print("revoked")


@accounts_cli.command("create")
def accounts_create(
    name: Annotated[str, typer.Option(help="a name (accounts are told apart by id)")] = "",
    contact: Annotated[str, typer.Option(help="a contact (e.g. an email address)")] = "",
) -> None:
    """Open an account; prints its id as the only line on stdout."""
    from ..domain.errors import DomainError

    with opened(Settings()) as container:
        try:
            account_id = container.application().open_account(name, contact)
        except DomainError as error:
            raise _fail(str(error)) from None
    sys.stdout.write(f"{account_id}\n")


@accounts_cli.command("list")
def accounts_list() -> None:
    """List accounts (legacy ones too: keys issued before accounts, by their owner)."""
    with opened(Settings()) as container:
        accounts = container.application().accounts()
    _print_rows(
        f"{len(accounts)} accounts",
        [account_view(account) for account in accounts],
        ["account_id", "name", "contact", "legacy", "created"],
    )
