"""The keys use cases over a real SQLite event store: listings of accounts whose keys
predate them, the caller's tier and allow-list on a new key, the bound on working keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from defi_realtime.application.api_keys import AccountKeyService, KeyLimitReached, KeyNotFound
from defi_realtime.domain.account import Account
from defi_realtime.domain.api_key import ApiKey, hash_key
from tests.property.test_ws_resume import event_store

T = TypeVar("T")


async def inline(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


async def inline_write(function: Callable[[], T]) -> T:
    return function()


async def test_keys_issued_before_listings_are_listed_and_new_ones_join_them() -> None:
    with event_store() as app:
        # Two keys saved as releases before listings did: no listing aggregate.
        account = Account.open("old")
        older = [ApiKey.issue(f"drt_old{n}", "old", account, "free") for n in range(2)]
        app.save_aggregates([account, *older])
        assert app.account_keys(account.id) is None
        service = AccountKeyService(app, inline_write, read=inline, grace=0.0)
        caller = older[0]
        assert [view.id for view in await service.keys(caller)] == [str(k.id) for k in older]
        issued = await service.create(caller, "new")
        listed = app.account_keys(account.id)
        assert listed is not None
        assert [str(k.id) for k in listed] == [*(str(k.id) for k in older), issued.id]


async def test_a_new_key_has_the_callers_tier_and_allow_list_and_keys_are_bounded() -> None:
    with event_store() as app:
        secret = app.issue_api_key("big", "enterprise", allowed_ips=["10.0.0.0/8"])
        caller = app.find_api_key(ApiKey.id_for(hash_key(secret)))
        assert caller is not None
        forgotten: list[object] = []
        service = AccountKeyService(
            app, inline_write, read=inline, grace=0.0, limit=2, forget=forgotten.append
        )
        issued = await service.create(caller, "second")
        assert (issued.tier, issued.allowed_ips) == ("enterprise", ["10.0.0.0/8"])
        with pytest.raises(KeyLimitReached):
            await service.create(caller, "third")
        revoked = await service.revoke(caller, issued.id)
        assert revoked.state == "revoked"
        assert [str(key) for key in forgotten] == [issued.id]  # this node forgets it now
        await service.create(caller, "third")  # a revoked key does not count
        other = app.find_api_key(ApiKey.id_for(hash_key(app.issue_api_key("other"))))
        assert other is not None
        with pytest.raises(KeyNotFound):
            await service.revoke(other, issued.id)
