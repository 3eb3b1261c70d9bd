"""A rule's strings cannot stop a read model: control characters are refused on the way in.

PostgreSQL text cannot hold a NUL: a rule named ``"n\\x00"`` was accepted (200), and the
history read model, which folds the rules into its ``alert_rules`` table, then failed on it
and on everything after it (``/health`` 503 degraded, the listing frozen). Found by
schemathesis against the production backend.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import LiveServer, assert_error, obs, settle

# Every test here runs on the embedded adapters and on PostgreSQL + Redis + RabbitMQ.
BACKENDS = ("embedded", "production")

VALID: dict[str, Any] = {
    "target": {"protocol": "text-lend"},
    "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
    "channels": [{"kind": "websocket"}],
}
CONTROLLED = [
    ({"name": "drain\x00"}, "name", "name contains a control character (U+0000 at 5)"),
    ({"name": "tab\there"}, "name", "name contains a control character (U+0009 at 3)"),
    (
        {"target": {"protocol": "text-lend", "chain": "Ethereum\x00"}},
        "target",
        "target.chain contains an invisible or control character (U+0000 at 8)",
    ),
    (
        {"channels": [{"kind": "webhook", "url": "https://hooks.example.com/\x85"}]},
        "channels",
        "channels[0].url contains a control character (U+0085 at 26)",
    ),
    (
        {"channels": [{"kind": "webhook", "url": "https://h.example.com/", "secret": "s\x7f"}]},
        "channels",
        "channels[0].secret contains a control character (U+007F at 1)",
    ),
    (
        {"channels": [{"kind": "email", "address": "ops@example.com\x00"}]},
        "channels",
        "channels[0].address contains an invisible or control character (U+0000 at 15)",
    ),
]


def test_control_characters_in_a_rule_are_refused_and_the_read_models_follow(
    server: LiveServer, http: httpx.Client
) -> None:
    listing = {
        "observations": [obs("text-lend", 2e9, 1_765_000_000.0, name="Text Lend")],
    }
    assert http.post("/v2/ingest", json=listing, headers=server.headers).status_code == 200
    rule = http.post("/v2/alerts", json=VALID, headers=server.headers)
    assert rule.status_code == 200, rule.text
    rule_id = rule.json()["id"]
    for change, field, message in CONTROLLED:
        response = http.post("/v2/alerts", json={**VALID, **change}, headers=server.headers)
        error = assert_error(response, 400, "invalid_rule")
        assert (error["details"], error["message"]) == ({"field": field}, message)
        if field != "target":  # a rule's target cannot change anyway
            replaced = http.put(f"/v2/alerts/{rule_id}", json=change, headers=server.headers)
            error = assert_error(replaced, 400, "invalid_rule")
            assert (error["details"], error["message"]) == ({"field": field}, message)

    # Nothing reached the log that a read model cannot hold: they all follow it.
    later = http.post("/v2/alerts", json={**VALID, "name": "later"}, headers=server.headers)
    assert later.status_code == 200, later.text
    health = settle(http)
    assert health["status"] == "ok", health
    listed = http.get("/v2/alerts", headers=server.headers).json()
    assert [rule["name"] for rule in listed["alerts"]] == ["", "later"]
