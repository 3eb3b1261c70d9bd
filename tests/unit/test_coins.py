"""DeFiLlama's coins API definitions (``application/coins.py``) on a fake price history, and
the one spelling of a token id (``canonical_token_id``) from ingest to the read models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import uuid5

import pytest

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.coins import (
    DEFAULT_SEARCH_WIDTH,
    MAX_COINS,
    MAX_POINTS,
    PERCENTAGE_SEARCH_WIDTH,
    CoinPriceReader,
    CoinQueryError,
    chart_times,
    parse_duration,
    percent_change,
)
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.ports import PriceLookup, PricePoint
from defi_realtime.domain.errors import InvalidObservation
from defi_realtime.domain.token import (
    TOKEN_NAMESPACE,
    Token,
    canonical_token_id,
    check_token_id,
)

T0 = 1_700_000_000.0
USDC = "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
USDC_LOWER = USDC.lower()
USDC_UPPER = "ethereum:0x" + USDC.removeprefix("ethereum:0x").upper()
ETH = "coingecko:ethereum"


class FakePriceHistory:
    """``PriceHistory`` over a list of points, by the port's definitions."""

    def __init__(self, *points: tuple[str, float, float] | tuple[str, float, float, float]) -> None:
        self.points = [
            PricePoint(
                token=point[0],
                timestamp=point[1],
                price=point[2],
                confidence=point[3] if len(point) == 4 else None,
                position=index,
            )
            for index, point in enumerate(points, start=1)
        ]
        self.lookups: list[PriceLookup] = []

    def _of(self, token: str) -> list[PricePoint]:
        # Same timestamp: the highest position wins.
        by_time: dict[float, PricePoint] = {}
        for point in sorted(self.points, key=lambda p: p.position):
            if point.token == token:
                by_time[point.timestamp] = point
        return [by_time[stamp] for stamp in sorted(by_time)]

    def latest(self, tokens: Sequence[str]) -> dict[str, PricePoint]:
        return {token: self._of(token)[-1] for token in tokens if self._of(token)}

    def first(self, tokens: Sequence[str]) -> dict[str, PricePoint]:
        return {token: self._of(token)[0] for token in tokens if self._of(token)}

    def nearest(self, lookups: Sequence[PriceLookup]) -> list[PricePoint | None]:
        self.lookups.extend(lookups)
        answers: list[PricePoint | None] = []
        for lookup in lookups:
            near = [
                point
                for point in self._of(lookup.token)
                if abs(point.timestamp - lookup.at) <= lookup.width
            ]
            near.sort(key=lambda point: (abs(point.timestamp - lookup.at), point.timestamp))
            answers.append(near[0] if near else None)
        return answers


def reader(history: FakePriceHistory, now: float = T0) -> CoinPriceReader:
    return CoinPriceReader(history, now=lambda: now)


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("600", 600),
        ("4h", 14_400),
        ("4H", 14_400),
        ("2d", 172_800),
        ("1w", 604_800),
        ("30m", 1_800),
        ("h", 3_600),
        ("W", 604_800),
        ("1.5h", 5_400),
        ("0", 0),
    ],
)
def test_durations_are_read_as_defillama_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "4s", "-1h", "h4", "4hh", " 4h", "4 h", "nan", "1e3", "4y"])
def test_other_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(text)


def test_chart_times_go_forward_from_start_or_back_from_end_oldest_first() -> None:
    assert chart_times(100.0, forward=True, period=10.0, span=3) == [100.0, 110.0, 120.0]
    assert chart_times(100.0, forward=False, period=10.0, span=3) == [80.0, 90.0, 100.0]
    assert chart_times(100.0, forward=True, period=10.0, span=0) == [100.0]
    assert chart_times(100.0, forward=False, period=10.0, span=1) == [100.0]


def test_percent_change_is_scaled_to_the_requested_period() -> None:
    start = PricePoint(ETH, T0, 100.0, None, 1)
    assert percent_change(start, PricePoint(ETH, T0 + 100, 110.0, None, 2), 100) == pytest.approx(
        10.0
    )
    # The two prices are 200 s apart for a 100 s period: half the change.
    assert percent_change(start, PricePoint(ETH, T0 + 200, 110.0, None, 2), 100) == pytest.approx(
        5.0
    )
    assert percent_change(start, start, 100) is None
    assert percent_change(PricePoint(ETH, T0, 0.0, None, 1), start, 100) is None


# --- current --------------------------------------------------------------------------------


def test_current_is_the_latest_price_no_older_than_search_width() -> None:
    history = FakePriceHistory(
        (ETH, T0 - 7_200, 3_000.0, 0.9),
        (ETH, T0 - 3_600, 3_100.0, 0.99),
        ("coingecko:bitcoin", T0 - 7 * 3_600, 90_000.0),
    )
    found = reader(history).current([ETH, "coingecko:bitcoin", "coingecko:none"])
    # Bitcoin's price is 7 hours old: beyond the default 6 hours.
    assert found == {ETH: PricePoint(ETH, T0 - 3_600, 3_100.0, 0.99, 2)}
    assert DEFAULT_SEARCH_WIDTH == 6 * 3_600
    assert set(reader(history).current(["coingecko:bitcoin"], 8 * 3_600)) == {"coingecko:bitcoin"}
    assert reader(history).current([ETH], 3_599) == {}
    assert set(reader(history).current([ETH], 3_600)) == {ETH}


def test_answers_are_keyed_by_the_spellings_asked_for() -> None:
    history = FakePriceHistory((USDC_LOWER, T0, 1.0))
    found = reader(history).current([USDC, USDC_LOWER, USDC])
    assert list(found) == [USDC, USDC_LOWER]
    assert {point.token for point in found.values()} == {USDC_LOWER}


@pytest.mark.parametrize("coins", [[], [f"coingecko:c{n}" for n in range(MAX_COINS + 1)]])
def test_the_number_of_coins_is_bounded(coins: list[str]) -> None:
    with pytest.raises(CoinQueryError) as caught:
        reader(FakePriceHistory()).current(coins)
    assert caught.value.parameters == ("coins",)


# --- historical and batch ---------------------------------------------------------------------


def test_historical_is_the_nearest_price_within_search_width_either_side() -> None:
    history = FakePriceHistory((ETH, T0 - 100, 1.0), (ETH, T0 + 50, 2.0), (ETH, T0 + 5_000, 3.0))
    prices = reader(history)
    assert prices.historical([ETH], T0)[ETH].price == 2.0
    assert prices.historical([ETH], T0 - 80)[ETH].price == 1.0
    assert prices.historical([ETH], T0 + 4_000)[ETH].price == 3.0
    assert prices.historical([ETH], T0 + 3_000, search_width=1_000) == {}
    # Two equally near prices: the earlier one.
    assert prices.historical([ETH], T0 - 25)[ETH].price == 1.0


def test_batch_prices_each_time_in_order_and_leaves_out_what_finds_nothing() -> None:
    history = FakePriceHistory((ETH, T0, 1.0), (ETH, T0 + 86_400, 2.0), (USDC_LOWER, T0, 1.0))
    found = reader(history).batch(
        {ETH: [T0 + 86_000, T0 + 10, T0 + 40_000], USDC: [T0 - 100_000], "coingecko:x": [T0]}
    )
    assert list(found) == [ETH]
    assert [point.price for point in found[ETH]] == [2.0, 1.0]


def test_batch_is_bounded_in_prices() -> None:
    wanted = {ETH: [T0 + n for n in range(MAX_POINTS)], USDC: [T0]}
    with pytest.raises(CoinQueryError) as caught:
        reader(FakePriceHistory()).batch(wanted)
    assert caught.value.parameters == ("coins",)


# --- chart --------------------------------------------------------------------------------------


def test_chart_points_back_from_now_by_default() -> None:
    history = FakePriceHistory(*((ETH, T0 - day * 86_400 + 60, float(day)) for day in range(5)))
    found = reader(history).chart([ETH], span=3)
    assert [point.price for point in found[ETH]] == [2.0, 1.0, 0.0]
    # Default period 1d, search width a tenth of it: a point 3 hours off is not found.
    assert reader(history, now=T0 + 3 * 3_600).chart([ETH], span=3) == {}


def test_chart_forward_from_start_reports_each_price_once_oldest_first() -> None:
    history = FakePriceHistory((ETH, T0, 1.0), (ETH, T0 + 7_200, 2.0))
    found = reader(history).chart(
        [ETH], start=T0, span=5, period=parse_duration("1h"), search_width=3_600
    )
    # Times T0 .. T0+4h: T0 and T0+1h find the first price (T0+1h: the earlier of two).
    assert [(point.timestamp, point.price) for point in found[ETH]] == [
        (T0, 1.0),
        (T0 + 7_200, 2.0),
    ]


def test_chart_refuses_start_with_end_and_too_many_points() -> None:
    prices = reader(FakePriceHistory())
    with pytest.raises(CoinQueryError) as both:
        prices.chart([ETH], start=T0, end=T0)
    assert both.value.parameters == ("start", "end")
    with pytest.raises(CoinQueryError) as many:
        prices.chart([ETH, USDC], span=MAX_POINTS // 2 + 1)
    assert many.value.parameters == ("span",)
    assert prices.chart([ETH, USDC], span=MAX_POINTS // 2) == {}


# --- percentage and first ---------------------------------------------------------------------


def test_percentage_looks_back_or_forward_a_period() -> None:
    history = FakePriceHistory(
        (ETH, T0 - 86_400, 100.0), (ETH, T0 + 300, 110.0), (ETH, T0 + 86_400, 99.0)
    )
    prices = reader(history)
    back = prices.percentage([ETH], timestamp=T0)
    # 110 at T0+300 against 100 at T0-1d, scaled from 86,700 s to one day.
    assert back[ETH] == pytest.approx(10.0 * 86_400 / 86_700)
    forward = prices.percentage([ETH], timestamp=T0, look_forward=True)
    assert forward[ETH] == pytest.approx((99.0 - 110.0) / 110.0 * 100 * 86_400 / 86_100)
    # Each end within 15 minutes only.
    assert prices.percentage([ETH], timestamp=T0 - PERCENTAGE_SEARCH_WIDTH - 301) == {}
    assert prices.percentage([ETH], timestamp=T0 + 600, period=600) == {}


def test_first_is_the_earliest_price() -> None:
    history = FakePriceHistory((ETH, T0 + 10, 2.0), (ETH, T0, 1.0))
    assert reader(history).first([ETH, "coingecko:x"]) == {ETH: PricePoint(ETH, T0, 1.0, None, 2)}


# --- one spelling of a token id -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_id", "canonical"),
    [
        (USDC, USDC_LOWER),
        ("ethereum:0XA0B86991C6218B36C1D19D4A2E9EB0CE3606EB48", USDC_LOWER),
        (
            "arbitrum:0xFF970A61A04b1cA14834A43f5dE4533eBDDB5CC8",
            "arbitrum:0xff970a61a04b1ca14834a43f5de4533ebddb5cc8",
        ),
        # Not an EVM address: kept as written (base58 is case-sensitive).
        ("solana:EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v", None),
        ("coingecko:ethereum", None),
        ("starknet:0x" + "Ab" * 32, None),
        ("ethereum:0xABC", None),
    ],
)
def test_canonical_token_id(token_id: str, canonical: str | None) -> None:
    expected = token_id if canonical is None else canonical
    assert canonical_token_id(token_id) == expected
    assert check_token_id(token_id) == expected
    assert Token.id_for(token_id) == Token.id_for(expected)
    assert Token.register(token_id).token_id == expected


def test_check_token_id_still_refuses_what_it_refused() -> None:
    with pytest.raises(InvalidObservation):
        check_token_id("Ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48")


@pytest.fixture
def app() -> Iterator[DefiRealtime]:
    application = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        yield application
    finally:
        application.close()


def test_two_spellings_are_one_token_in_the_hot_projection_and_the_history(
    app: DefiRealtime, tmp_path: Path
) -> None:
    result = app.ingest(
        [
            build_batch(
                prices=[
                    {"token": USDC, "price": 1.0, "observed_at": T0},
                    {"token": USDC_LOWER, "price": 0.99, "observed_at": T0 + 60},
                    {"token": USDC_UPPER, "price": 1.01, "observed_at": T0 + 120},
                ]
            )
        ]
    )[0]
    assert (result.accepted, result.rejected) == (3, [])
    # One aggregate: registered once, three prices.
    token = app.repository.get(Token.id_for(USDC))
    assert token.token_id == USDC_LOWER
    assert token.recent == {T0: 1.0, T0 + 60: 0.99, T0 + 120: 1.01}

    batch = EventStoreLog(app).read(0, 100)
    assert {entry.key for entry in batch.entries} == {USDC_LOWER}
    hot = InMemoryHotProjection()
    asyncio.run(hot.apply(batch))
    views = asyncio.run(hot.prices())
    assert [(view.token, view.price) for view in views] == [(USDC_LOWER, 1.01)]
    assert [view.token for view in asyncio.run(hot.prices([check_token_id(USDC)]))] == [USDC_LOWER]

    history = SqlHistoryReadModel(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        history.apply(batch)
        assert history.prices.first([USDC_LOWER])[USDC_LOWER].price == 1.0
        assert history.prices.latest([USDC_LOWER])[USDC_LOWER].price == 1.01
        assert history.prices.latest([USDC]) == {}  # the read model holds one spelling
    finally:
        history.close()


@pytest.mark.parametrize("fast", [True, False])
def test_prices_recorded_before_canonical_ids_reach_the_log_canonical(
    app: DefiRealtime, fast: bool
) -> None:
    # As the code before the rule recorded them: the mixed-case id in both events, under
    # the aggregate ID that spelling had.
    old = Token._create(Token.Registered, id=uuid5(TOKEN_NAMESPACE, USDC), token_id=USDC)
    assert isinstance(old, Token)
    old._price_recorded(USDC, 1.0, T0, None, "old")
    app.save(old)
    stored = app.recorder.select_notifications(start=1, limit=10)
    assert any(USDC.encode() in notification.state for notification in stored)

    batch = EventStoreLog(app, fast=fast).read(0, 100)
    assert [(entry.kind, entry.key) for entry in batch.entries] == [("price", USDC_LOWER)]


def test_subscriptions_and_stored_alert_targets_use_the_canonical_token_id() -> None:
    from defi_realtime.application.realtime.protocol import Filter
    from defi_realtime.domain.alert_values import stored_target

    mixed = "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    lower = "ethereum:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
    assert Filter.parse({"tokenIds": [mixed]}).token_ids == frozenset({lower})
    # A rule stored before ids were normalised watches the token its prices now arrive as.
    assert stored_target({"token": mixed}).token == lower
