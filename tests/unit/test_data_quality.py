"""The data-quality validator flags; it never drops."""

from __future__ import annotations

from dataclasses import replace

from defi_realtime.application.data_quality import STALE_AFTER, check
from defi_realtime.application.views import ProtocolView

T0 = 1_700_000_000.0


def view(slug: str, **fields: object) -> ProtocolView:
    base = ProtocolView(
        slug=slug,
        name=slug,
        category="Dexs",
        chains=("Ethereum",),
        url="",
        tvl=100.0,
        chain_tvls={},
        change_1h=None,
        change_1d=None,
        change_7d=None,
        volume_24h=None,
        fees_24h=None,
        updated_at=T0,
        position=1,
        tvl_at=T0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_each_check_and_its_threshold() -> None:
    views = [
        view("fine", chain_tvls={"Ethereum": 60.0, "Base": 40.5}, change_1h=19.9, change_1d=-49.9),
        view("split", chain_tvls={"Ethereum": 60.0, "Base": 50.0}),
        view("jumpy", change_1h=-20.0, change_1d=50.0),
        view("quiet", tvl_at=T0 - STALE_AFTER - 1),
        view("just-in-time", tvl_at=T0 - STALE_AFTER),
        view("no-tvl", tvl=None, tvl_at=None, chain_tvls={"Ethereum": 5.0}),
    ]
    findings = check(views)
    assert [(f.protocol, f.kind) for f in findings] == [
        ("jumpy", "sudden_jump"),
        ("jumpy", "sudden_jump"),
        ("quiet", "stale"),
        ("split", "chains_do_not_add_up"),
    ]
    split = findings[-1]
    assert split.details == {"tvl": 100.0, "chains_sum": 110.0, "difference_percent": 10.0}
    assert [f.details["window"] for f in findings[:2]] == ["change_1h", "change_1d"]
    assert check([]) == []
