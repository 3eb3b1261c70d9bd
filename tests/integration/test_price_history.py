"""``SqlPriceHistory`` (the ``PriceHistory`` port) on SQLite and on the real PostgreSQL.

Prices enter as the log delivers them (``SqlHistoryReadModel.apply``); every read is
checked against a plain reference over the same observations, including the chunk
boundaries of the statements (500 lookups, 500 rows) and corrections (one time observed
twice: the highest position wins). PostgreSQL is required under ``CI=true``
(``tests/services.py``): the test fails there, not skips, without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.ports import PriceLookup, PricePoint
from tests.services import throwaway_schema

T0 = 1_700_000_000.0
ETH = "coingecko:ethereum"
BTC = "coingecko:bitcoin"

Observation = tuple[str, float, float, float | None]  # token, observed_at, price, confidence


def entries(observations: Sequence[Observation], first: int = 1) -> list[LogEntry]:
    return [
        LogEntry(
            position=position,
            kind="price",
            key=token,
            data={"price": price, "observed_at": at, "confidence": confidence, "source": "t"},
            recorded_at=T0,
        )
        for position, (token, at, price, confidence) in enumerate(observations, start=first)
    ]


def record(model: SqlHistoryReadModel, *observations: Observation) -> None:
    applied = model.position()
    model.apply(
        LogBatch(
            after=applied,
            last=applied + len(observations),
            entries=tuple(entries(observations, applied + 1)),
        )
    )


def points(observations: Sequence[Observation]) -> list[PricePoint]:
    return [
        PricePoint(token, at, price, confidence, position)
        for position, (token, at, price, confidence) in enumerate(observations, start=1)
    ]


# --- the reference: the port's definitions over a plain list -----------------------------------


def of_token(recorded: Sequence[PricePoint], token: str) -> list[PricePoint]:
    by_time: dict[float, PricePoint] = {}
    for point in sorted(recorded, key=lambda p: p.position):
        if point.token == token:
            by_time[point.timestamp] = point  # a later position corrects the time
    return [by_time[stamp] for stamp in sorted(by_time)]


def reference_nearest(recorded: Sequence[PricePoint], lookup: PriceLookup) -> PricePoint | None:
    near = [
        point
        for point in of_token(recorded, lookup.token)
        if lookup.at - lookup.width <= point.timestamp <= lookup.at + lookup.width
    ]
    near.sort(key=lambda point: (abs(point.timestamp - lookup.at), point.timestamp))
    return near[0] if near else None


class PriceHistoryContract:
    """Every test; a subclass supplies ``url``."""

    @pytest.fixture
    def model(self, url: str) -> Iterator[SqlHistoryReadModel]:
        model = SqlHistoryReadModel(url)
        try:
            yield model
        finally:
            model.close()

    def test_nothing_recorded_finds_nothing(self, model: SqlHistoryReadModel) -> None:
        prices = model.prices
        assert prices.latest([ETH]) == {}
        assert prices.first([ETH]) == {}
        assert prices.latest([]) == {}
        assert prices.nearest([]) == []
        assert prices.nearest([PriceLookup(ETH, T0, 1e9)]) == [None]

    def test_latest_and_first_with_corrections(self, model: SqlHistoryReadModel) -> None:
        record(
            model,
            (ETH, T0 + 10, 2.0, 0.9),
            (ETH, T0, 1.0, None),
            (BTC, T0 + 5, 50.0, 0.5),
            (ETH, T0 + 10, 2.5, 0.95),  # corrects T0 + 10
            (ETH, T0, 1.5, None),  # corrects T0
        )
        prices = model.prices
        assert prices.latest([ETH, BTC, "coingecko:none"]) == {
            ETH: PricePoint(ETH, T0 + 10, 2.5, 0.95, 4),
            BTC: PricePoint(BTC, T0 + 5, 50.0, 0.5, 3),
        }
        assert prices.first([ETH, ETH]) == {ETH: PricePoint(ETH, T0, 1.5, None, 5)}

    def test_nearest_within_the_width_either_side(self, model: SqlHistoryReadModel) -> None:
        record(
            model,
            (ETH, T0, 1.0, None),
            (ETH, T0 + 100, 2.0, None),
            (ETH, T0 + 100.25, 3.0, 0.7),
            (BTC, T0 + 40, 9.0, None),
        )
        found = model.prices.nearest(
            [
                PriceLookup(ETH, T0 + 40, 100),  # 40 after one, 60 before the next
                PriceLookup(ETH, T0 + 50, 100),  # equally near: the earlier
                PriceLookup(ETH, T0 + 60, 100),
                PriceLookup(ETH, T0 + 100.2, 0.1),  # fractions of a second are exact
                PriceLookup(ETH, T0 + 100.25, 0),  # width 0: that time only
                PriceLookup(ETH, T0 - 11, 10),  # just out of reach
                PriceLookup(ETH, T0 + 210.25, 110),  # exactly at the edge
                PriceLookup(BTC, T0 + 40, 0),  # another token at the same time
                PriceLookup(ETH, T0 + 40, 100),  # a lookup twice
            ]
        )
        assert [None if point is None else point.price for point in found] == [
            1.0,
            1.0,
            2.0,
            3.0,
            3.0,
            None,
            3.0,
            9.0,
            1.0,
        ]
        assert found[3] == PricePoint(ETH, T0 + 100.25, 3.0, 0.7, 3)

    def test_many_tokens_and_lookups_cross_the_statement_chunks(
        self, model: SqlHistoryReadModel
    ) -> None:
        tokens = [f"coingecko:t{n}" for n in range(520)]
        observations: list[Observation] = [
            (token, T0 + 60 * k, float(n * 10 + k), None)
            for n, token in enumerate(tokens)
            for k in range(2)
        ]
        record(model, *observations)
        recorded = points(observations)
        prices = model.prices
        latest = prices.latest(tokens)
        assert [latest[token].price for token in tokens] == [n * 10 + 1.0 for n in range(520)]
        first = prices.first(tokens)
        assert [first[token].price for token in tokens] == [n * 10.0 for n in range(520)]
        lookups = [
            PriceLookup(token, T0 + offset, 25) for token in tokens[:210] for offset in (0, 40, 70)
        ]
        assert len(lookups) > 500  # two statements of lookups, two of rows
        assert prices.nearest(lookups) == [reference_nearest(recorded, look) for look in lookups]

    # function_scoped_fixture: the examples share the model; each records its own tokens.
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
            HealthCheck.too_slow,
        ],
    )
    @given(
        observations=st.lists(
            st.tuples(
                st.sampled_from(["a", "b"]),
                st.integers(0, 40).map(lambda n: T0 + n * 2.5),
                st.floats(0, 1e6, allow_nan=False),
                st.none() | st.floats(0, 1),
            ),
            max_size=30,
        ),
        lookups=st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.integers(-10, 50).map(lambda n: T0 + n * 2.5),
                st.sampled_from([0.0, 1.25, 2.5, 5.0, 30.0]),
            ),
            min_size=1,
            max_size=12,
        ),
    )
    def test_reads_match_a_plain_reference(
        self,
        model: SqlHistoryReadModel,
        observations: list[Observation],
        lookups: list[tuple[str, float, float]],
    ) -> None:
        model.reset()
        if observations:
            record(model, *observations)
        recorded = points(observations)
        tokens = ["a", "b", "c"]
        prices = model.prices
        assert prices.latest(tokens) == {
            token: of_token(recorded, token)[-1] for token in tokens if of_token(recorded, token)
        }
        assert prices.first(tokens) == {
            token: of_token(recorded, token)[0] for token in tokens if of_token(recorded, token)
        }
        wanted = [PriceLookup(token, at, width) for token, at, width in lookups]
        assert prices.nearest(wanted) == [reference_nearest(recorded, look) for look in wanted]


class TestSqlitePriceHistory(PriceHistoryContract):
    @pytest.fixture
    def url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        return f"sqlite:///{tmp_path_factory.mktemp('prices') / 'history.db'}"


@pytest.mark.postgres
class TestPostgresPriceHistory(PriceHistoryContract):
    @pytest.fixture
    def url(self) -> Iterator[str]:
        """A throwaway schema, made the only one on ``search_path`` for the model."""
        with throwaway_schema("prices_test") as url:
            yield url
