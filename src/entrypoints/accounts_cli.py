"""``defi-realtime keys`` and ``defi-realtime accounts``: accounts and their API keys.

A key belongs to one account, named by id (``--account``) or new (the default); never by
name. Every command that makes a key prints it as the only line on stdout; listings print
one JSON object per line on stdout (never a secret) and a table on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from ..application.api_keys import key_state
from .console import err
from .container import Container, opened
from .settings import Settings

if TYPE_CHECKING:
    from ..application.privacy import AccountPrivacy, KeyTraces
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


def _audit(
    container: Container,
    action: str,
    *,
    refused: bool = False,
    key: ApiKey | None = None,
    account_id: UUID | None = None,
) -> None:
    """Record an operator command in the audit trail (ADR 0041): as an HTTP request would
    be, with 200 or 400 for its outcome, ``CLI`` for its method and no client address."""
    from ..application.audit import AuditEntry
    from ..domain.audit import outcome_of

    status = 400 if refused else 200
    if key is not None:
        account_id = key.account_id
    container.audit_log().record(
        [
            AuditEntry(
                action=action,
                at=time.time(),
                status=status,
                outcome=outcome_of(status),
                account_id=None if account_id is None else str(account_id),
                key_id=None if key is None else str(key.id),
                method="CLI",
                path=action.replace(".", " "),
            )
        ]
    )


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
    from ..application.app import AccountErased, AccountNotFound
    from ..domain.errors import DomainError

    if account is not None and new_account:
        raise _fail("give --account or --new-account, not both")
    account_id = None if account is None else _account_id(account)
    with opened(Settings()) as container:
        app = container.application()
        try:
            secret = app.issue_api_key(
                name, tier, account_id=account_id, allowed_ips=allow_ip or ()
            )
        except (DomainError, AccountNotFound, AccountErased) as error:
            _audit(container, "keys.create", refused=True, account_id=account_id)
            raise _fail(str(error)) from None
        _audit(container, "keys.create", key=app.authenticate(secret))
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
        app = container.application()
        try:
            secret = app.rotate_api_key(key, seconds)
        except ApiKeyNotFound:
            _audit(container, "keys.rotate", refused=True)
            raise _fail("cannot rotate: unknown key") from None
        except DomainError as error:
            _audit(container, "keys.rotate", refused=True)
            raise _fail(f"cannot rotate: {error}") from None
        _audit(container, "keys.rotate", key=app.authenticate(secret))  # the new key
    sys.stdout.write(secret + "\n")


@keys_cli.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key, its SHA-256 hash, or its id")],
) -> None:
    """Revoke an API key: every node refuses it, and closes its sockets, at once."""
    from ..application.app import ApiKeyNotFound
    from ..domain.errors import DomainError

    with opened(Settings()) as container:
        app = container.application()
        try:
            key_id = app.revoke_api_key(key)
        except ApiKeyNotFound:
            _audit(container, "keys.revoke", refused=True)
            raise _fail("cannot revoke: unknown key") from None
        except DomainError as error:
            _audit(container, "keys.revoke", refused=True)
            raise _fail(f"cannot revoke: {error}") from None
        _audit(container, "keys.revoke", key=app.find_api_key(key_id))
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
            _audit(container, "accounts.open", refused=True)
            raise _fail(str(error)) from None
        _audit(container, "accounts.open", account_id=account_id)
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


def _with_privacy(
    work: Callable[[AccountPrivacy, KeyTraces | None], Awaitable[str]],
    audited: tuple[str, UUID] | None = None,
) -> str:
    """``work``'s output, with the erase/export service of a container opened for it; an
    unknown account is a failure with its message. ``audited``: the action and account to
    record in the audit trail (an erase changes state; an export does not)."""
    import asyncio

    from ..application.app import AccountNotFound
    from .container import opened_async, provide

    async def run() -> str:
        async with opened_async(Settings()) as container:
            try:
                done = await work(
                    await provide(container.privacy), await provide(container.key_traces)
                )
            except AccountNotFound as error:
                if audited is not None:
                    _audit(container, audited[0], refused=True, account_id=audited[1])
                raise _fail(str(error)) from None
            if audited is not None:
                _audit(container, audited[0], account_id=audited[1])
            return done

    return asyncio.run(run())


@accounts_cli.command("erase")
def accounts_erase(
    account: Annotated[str, typer.Argument(help="the account's id (see accounts list)")],
) -> None:
    """Erase an account for good: its keys revoked, rules and subscriptions deleted, its data
    key destroyed (the personal fields of its events replay redacted) and the read models
    and Redis entries that held them purged. Prints what it did as JSON on stdout. Again on
    an erased account: purges and scrubs the stores again (``scrubbed`` was false)."""
    import asyncio
    import dataclasses

    account_id = _account_id(account)

    async def erase(privacy: AccountPrivacy, traces: KeyTraces | None) -> str:
        erasure = await asyncio.to_thread(privacy.erase, account_id)
        purged = 0 if traces is None else await traces.purge(erasure.key_ids)
        done = dataclasses.asdict(dataclasses.replace(erasure, traces_purged=purged))
        done.pop("key_ids")
        return json.dumps(done)

    sys.stdout.write(_with_privacy(erase, ("accounts.erase", account_id)) + "\n")
    err.print("erased")


@accounts_cli.command("export")
def accounts_export(
    account: Annotated[str, typer.Argument(help="the account's id (see accounts list)")],
) -> None:
    """Everything held about an account, as the JSON of ``GET /v2/account/export``."""
    import asyncio

    from .privacy_api import export_answer

    account_id = _account_id(account)

    async def export(privacy: AccountPrivacy, _traces: KeyTraces | None) -> str:
        found = await asyncio.to_thread(privacy.export, account_id)
        return export_answer(found).model_dump_json()

    sys.stdout.write(_with_privacy(export) + "\n")
