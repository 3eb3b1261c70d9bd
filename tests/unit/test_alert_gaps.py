"""Issue 13 part 6, in-process: the SSRF guard's decision at rule creation, and which
alert transitions go to the owner's sockets."""

from __future__ import annotations

import pytest

from defi_realtime.adapters.webhook_notifier import SsrfRefused, WebhookGuard
from defi_realtime.application.alert_channels import check_webhook_targets
from defi_realtime.application.delivery import progress_of
from defi_realtime.application.log import LogEntry
from defi_realtime.application.realtime.frames import channel_of
from defi_realtime.domain.alert_rule import InvalidRule
from defi_realtime.domain.alert_values import parse_channels

PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://10.1.2.3/hook",
    "https://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:9000/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
    "http://localhost:8080/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
]


class FakeResolver:
    """Answers names from a table, in-process (no DNS); remembers what it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError("no such name")
        return self.table[host]


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_a_private_or_loopback_webhook_is_refused_at_creation(url: str) -> None:
    with pytest.raises(SsrfRefused):
        await WebhookGuard().check_new(url)
    # The same decision as at delivery (``check``): one rule, not two.
    with pytest.raises(SsrfRefused):
        await WebhookGuard(resolver=FakeResolver({})).check(url)
    # Allowed by configuration: accepted at creation and called at delivery.
    await WebhookGuard(allow_private=True).check_new(url)
    await WebhookGuard(allow_private=True).check(url)


async def test_names_are_decided_by_the_resolver_and_public_addresses_pass() -> None:
    await WebhookGuard().check_new("https://93.184.216.34/hook")
    await WebhookGuard().check_new("https://[2606:4700:4700::1111]/hook")
    # Without a creation resolver a name waits for delivery (no DNS while creating).
    await WebhookGuard().check_new("https://intranet.test/hook")
    resolver = FakeResolver({"intranet.test": ["10.0.0.5"], "hooks.test": ["93.184.216.34"]})
    guard = WebhookGuard(resolver=resolver, creation_resolver=resolver)
    with pytest.raises(SsrfRefused, match=r"10\.0\.0\.5"):
        await guard.check_new("https://intranet.test/hook")
    await guard.check_new("https://hooks.test/hook")
    await guard.check_new("https://unknown.test/hook")  # does not resolve now: delivery decides
    with pytest.raises(ConnectionError):
        await guard.check("https://unknown.test/hook")
    assert resolver.asked == ["intranet.test", "hooks.test", "unknown.test", "unknown.test"]


async def test_an_egress_allow_list_refuses_other_hosts_without_asking_dns() -> None:
    resolver = FakeResolver({"hooks.example.org": ["93.184.216.34"]})
    guard = WebhookGuard(
        resolver=resolver,
        creation_resolver=resolver,
        allowed_hosts=frozenset({"hooks.example.org", "93.184.216.35"}),
    )
    await guard.check_new("https://HOOKS.example.org./hook")
    await guard.check("https://hooks.example.org/hook")
    await guard.check("https://93.184.216.35/hook")
    for url in ("https://elsewhere.example.org/hook", "https://93.184.216.34/hook"):
        with pytest.raises(SsrfRefused, match="WEBHOOK_ALLOWED_HOSTS"):
            await guard.check_new(url)
        with pytest.raises(SsrfRefused, match="WEBHOOK_ALLOWED_HOSTS"):
            await guard.check(url)
    assert resolver.asked == ["hooks.example.org.", "hooks.example.org"]
    # Private targets stay refused unless allowed, listed or not.
    with pytest.raises(SsrfRefused, match="not a public address"):
        await WebhookGuard(allowed_hosts=frozenset({"127.0.0.1"})).check("http://127.0.0.1/h")


async def test_the_refusal_names_the_channel() -> None:
    channels = parse_channels(
        [
            {"kind": "websocket"},
            {"kind": "webhook", "url": "https://93.184.216.34/ok"},
            {"kind": "webhook", "url": "http://127.0.0.1:9/hook"},
        ]
    )
    with pytest.raises(InvalidRule, match=r"channels\[2\]\.url is refused") as refused:
        await check_webhook_targets(WebhookGuard(), channels)
    assert refused.value.field == "channels[2].url"
    await check_webhook_targets(WebhookGuard(allow_private=True), channels)
    await check_webhook_targets(WebhookGuard(), None)  # channels not changed


def transition(channel_kinds: list[str] | None) -> LogEntry:
    data = {
        "owner": "alice",
        "measure": 1.0,
        "observed_at": 1_700_000_000.0,
        "idempotency_key": "rule:1",
        "channel_kinds": channel_kinds,
    }
    return LogEntry(7, "alert_triggered", "rule", data, 1_700_000_000.0)


def test_only_a_rule_with_a_websocket_channel_reaches_the_sockets() -> None:
    assert channel_of(transition(["websocket"])) == "alerts"
    assert channel_of(transition(["webhook", "websocket"])) == "alerts"
    assert channel_of(transition(["webhook"])) is None
    assert channel_of(transition(["email"])) is None
    # Recorded before transitions named their channels: it went to the sockets then, and
    # a replay shows it as it was.
    assert channel_of(transition(None)) == "alerts"


@pytest.mark.parametrize(
    ("statuses", "attempts", "settled", "redriven_after"),
    [
        ([], 0, False, 0),
        (["failed", "failed"], 2, False, 0),
        (["failed", "delivered"], 2, True, 0),
        (["failed", "dead_lettered"], 2, True, 0),
        # Redriven: the key is open again, its budget counts from the redrive.
        (["failed", "dead_lettered", "redriven"], 2, False, 2),
        (["failed", "dead_lettered", "redriven", "failed"], 3, False, 2),
        (["failed", "dead_lettered", "redriven", "failed", "dead_lettered"], 4, True, 2),
        (["dead_lettered", "redriven", "delivered"], 2, True, 1),
        # A copy delivered before a redrive stays delivered (the worker drops the redrive).
        (["delivered", "redriven"], 1, True, 1),
    ],
)
def test_progress_counts_attempts_and_rounds(
    statuses: list[str], attempts: int, settled: bool, redriven_after: int
) -> None:
    progress = progress_of(statuses)
    assert (progress.attempts, progress.settled, progress.redriven_after) == (
        attempts,
        settled,
        redriven_after,
    )
