"""Keys and the account over REST (``/v2/account``, ``/v2/keys``) on a real server, on the
embedded adapters and on PostgreSQL + Redis + RabbitMQ: an account manages its own keys,
never another's, and a revoked or rotated-out key is refused at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_subscriptions import Accounts, deployment


@pytest.fixture(params=["embedded", "production"])
def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Accounts]:
    with deployment(tmp_path, request.param) as deployed:
        yield deployed


def test_an_account_manages_its_own_keys_and_no_one_elses(accounts: Accounts) -> None:
    [server] = accounts.nodes
    alice, bob = accounts.alice, accounts.bob
    with httpx.Client(base_url=server.base_url, timeout=10.0) as http:
        assert http.get("/v2/account").status_code == 401
        account = http.get("/v2/account", headers=alice).json()
        assert account["tier"] == "free"
        [first] = account["keys"]
        assert (first["name"], first["state"], first["valid_until"]) == ("alice", "live", None)

        created = http.post("/v2/keys", json={"name": "ci"}, headers=alice)
        assert created.status_code == 200, created.text
        issued = created.json()
        secret = issued["key"]
        assert secret.startswith("drt_")
        assert (issued["name"], issued["tier"], issued["state"]) == ("ci", "free", "live")
        listed = http.get("/v2/keys", headers=alice).json()
        assert [k["id"] for k in listed["keys"]] == [first["id"], issued["id"]]
        assert secret not in http.get("/v2/keys", headers=alice).text
        ci = {"X-API-Key": secret}
        assert http.get("/v2/account", headers=ci).json()["id"] == account["id"]

        # Bob's key reaches none of Alice's keys: 404, as an unknown or malformed id.
        for key_id in (issued["id"], "00000000-0000-0000-0000-000000000000", "nope"):
            assert http.delete(f"/v2/keys/{key_id}", headers=bob).status_code == 404
            rotated = http.post(f"/v2/keys/{key_id}/rotate", headers=bob)
            assert rotated.status_code == 404
            assert rotated.json()["error"]["code"] == "key_not_found"
        assert [k["name"] for k in http.get("/v2/keys", headers=bob).json()["keys"]] == ["bob"]
        assert http.get("/v2/account", headers=ci).status_code == 200

        bad = http.post(f"/v2/keys/{issued['id']}/rotate", json={"grace": "soon"}, headers=alice)
        assert bad.status_code == 400
        assert http.post("/v2/keys", json={"name": ""}, headers=alice).status_code == 400
        assert len(http.get("/v2/keys", headers=alice).json()["keys"]) == 2  # nothing changed

        # Rotation with no grace: the old key is refused at once, the new one works.
        rotated = http.post(f"/v2/keys/{issued['id']}/rotate", json={"grace": 0}, headers=alice)
        assert rotated.status_code == 200, rotated.text
        replacement = {"X-API-Key": rotated.json()["key"]}
        assert http.get("/v2/account", headers=ci).status_code == 401
        states = {k["id"]: k["state"] for k in http.get("/v2/keys", headers=alice).json()["keys"]}
        assert states == {
            first["id"]: "live",
            issued["id"]: "expired",
            rotated.json()["id"]: "live",
        }

        # Revocation (even of the calling key) takes effect at once.
        revoked = http.delete(f"/v2/keys/{rotated.json()['id']}", headers=replacement)
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["state"] == "revoked"
        assert http.get("/v2/account", headers=replacement).status_code == 401
        again = http.delete(f"/v2/keys/{rotated.json()['id']}", headers=alice)
        assert again.status_code == 409
