"""End-to-end CLI tests: the installed ``defi-realtime`` command in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import connect

from defi_realtime.entrypoints.cli import cli
from tests.e2e.conftest import assert_error, settle, start_server, wait_for
from tests.services import require_file

CLI = str(Path(sys.executable).with_name("defi-realtime"))
CLI_TIMEOUT = 60
T0 = 1_765_000_000.0


def run(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL", "REQUIRE_KEY_FOR_READS"}
    }
    env.update({"DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    result = subprocess.run(
        [CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check:
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def totals(output: str) -> dict[str, int]:
    """The numbers of the ingest summary table."""
    found = {}
    for name in ("accepted", "duplicates", "rejected"):
        match = re.search(rf"\b{name}\b\W*?([\d,]+)", output)
        assert match is not None, f"no {name!r} in the summary:\n{output}"
        found[name] = int(match.group(1).replace(",", ""))
    return found


def jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


OBSERVATIONS = [
    {
        "protocol": "aave-v3",
        "value": 30e9,
        "observed_at": T0 - 86_400,
        "name": "Aave V3",
        "category": "Lending",
        "chains": ["Ethereum", "Arbitrum"],
    },
    {"protocol": "aave-v3", "value": 33e9, "observed_at": T0},
    {"protocol": "aave-v3", "chain": "Ethereum", "value": 20e9, "observed_at": T0},
    {"protocol": "lido", "value": 25e9, "observed_at": "2025-12-06T05:46:40Z", "name": "Lido"},
    {"token": "coingecko:ethereum", "price": 3100.5, "observed_at": T0, "confidence": 0.99},
]


def test_keys_create_prints_only_the_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run(data_dir, "keys", "create", "--name", "x")
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert result.stdout == lines[0] + "\n"
    key = lines[0]
    assert re.fullmatch(r"drt_[A-Za-z0-9_-]{40,}", key), key

    second = run(data_dir, "keys", "create", "--name", "x").stdout.strip()
    assert second != key

    bad = run(data_dir, "keys", "create", "--name", "x", "--tier", "platinum", check=False)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "platinum" in bad.stderr

    # The printed key is a working key of a server over the same DATA_DIR.
    with (
        start_server(data_dir, api_key=key) as server,
        httpx.Client(base_url=server.base_url) as http,
    ):
        body = {"prices": [{"token": "coingecko:ethereum", "price": 1.0, "observed_at": T0}]}
        response = http.post("/v2/ingest", json=body, headers={"X-API-Key": key})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
        wrong = http.post("/v2/ingest", json=body, headers={"X-API-Key": key + "x"})
        assert_error(wrong, 401, "unauthorized")


def test_accounts_and_their_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``accounts create|list`` and ``keys create --account|list|rotate|revoke`` (in-process:
    each subprocess costs a second of imports; ``keys create`` itself runs above)."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(cli, list(args), prog_name="defi-realtime")
        assert result.exit_code == 0, result.output
        return result.stdout

    account = ok("accounts", "create", "--name", "acme").strip()
    assert uuid.UUID(account)
    key = ok(
        "keys",
        "create",
        "--account",
        account,
        "--name",
        "ci",
        "--tier",
        "enterprise",
        "--allow-ip",
        "10.0.0.0/8",
        "--allow-ip",
        "::1",
    ).strip()
    assert re.fullmatch(r"drt_[A-Za-z0-9_-]{40,}", key)
    refused = runner.invoke(cli, ["keys", "create", "--allow-ip", "10.0.0.0/8"])
    assert refused.exit_code == 2
    assert "enterprise" in refused.output
    unknown = runner.invoke(cli, ["keys", "create", "--account", str(uuid.uuid4())])
    assert unknown.exit_code == 2
    assert "not found" in unknown.output
    ok("keys", "create", "--name", "ci")  # another account: not listed under acme

    [listed] = [json.loads(line) for line in ok("keys", "list", "--account", account).splitlines()]
    assert (listed["account_id"], listed["name"], listed["state"]) == (account, "ci", "live")
    assert listed["allowed_ips"] == ["10.0.0.0/8", "::1/128"]
    assert key not in json.dumps(listed)  # never the secret
    assert len(ok("keys", "list").splitlines()) == 2

    successor = ok("keys", "rotate", key, "--grace", "0").strip()
    assert successor.startswith("drt_")
    assert successor != key
    states = {
        row["key_id"]: row["state"]
        for row in map(json.loads, ok("keys", "list", "--account", account).splitlines())
    }
    assert sorted(states.values()) == ["expired", "live"]
    ok("keys", "revoke", successor)
    assert "revoked" in ok("keys", "list", "--account", account)
    again = runner.invoke(cli, ["keys", "revoke", successor])
    assert again.exit_code == 2
    accounts = [json.loads(line) for line in ok("accounts", "list").splitlines()]
    assert [row["name"] for row in accounts] == ["acme", "ci"]


def test_ingest_file_reports_totals_then_duplicates(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bad_lines = [
        {"protocol": "aave-v3", "value": -1, "observed_at": T0 + 60},
        {"protocol": "ghost", "value": 1, "observed_at": T0},
    ]
    path = jsonl(tmp_path / "observations.jsonl", OBSERVATIONS + bad_lines)
    with path.open("a") as fh:
        fh.write("{not json\n")

    first = run(data_dir, "ingest", str(path))
    assert first.stdout == ""  # the summary and progress go to stderr
    assert totals(first.stderr) == {"accepted": 5, "duplicates": 0, "rejected": 3}

    second = run(data_dir, "ingest", str(path))
    assert totals(second.stderr) == {"accepted": 0, "duplicates": 5, "rejected": 3}

    missing = run(data_dir, "ingest", str(tmp_path / "nope.jsonl"), check=False)
    assert missing.returncode == 2
    unknown = run(data_dir, "ingest", str(jsonl(tmp_path / "odd.jsonl", [{"x": 1}])), check=False)
    assert unknown.returncode == 2
    assert "cannot import" in unknown.stderr

    # A server started afterwards over the same DATA_DIR serves what was imported, and its
    # realtime hub knows the listings (a category filter matches without a new listing).
    with start_server(data_dir) as server, httpx.Client(base_url=server.base_url) as http:
        settle(http)
        view = http.get("/v2/protocols/aave-v3").json()
        assert (view["tvl"], view["chainTvls"], view["category"]) == (
            33e9,
            {"Ethereum": 20e9},
            "Lending",
        )
        assert view["change_1d"] == pytest.approx(10.0)
        assert http.get("/v2/protocols/lido").json()["tvl"] == 25e9
        prices = http.get("/v2/realtime/prices").json()["data"]
        assert [(p["token"], p["price"]) for p in prices] == [("coingecko:ethereum", 3100.5)]
        points = http.get("/v2/protocols/aave-v3/metrics").json()["points"]
        assert [p["value"] for p in points] == [30e9, 33e9]
        asyncio.run(_category_update_after_restart(server.ws_url, server.base_url, server.headers))


REAL_SNAPSHOTS = (
    Path(__file__).resolve().parents[3] / "shared/data/defillama/protocol-snapshots.jsonl.gz"
)


@pytest.mark.postgres
@pytest.mark.slow
def test_real_snapshot_file_into_postgres_then_again() -> None:
    """The shared snapshot file (59,910 rows, newest capture first) into an empty PostgreSQL
    store: every row accepted but the 31 negative values, the newest details kept; a second
    import records nothing."""
    require_file(REAL_SNAPSHOTS)
    import psycopg

    from tests.services import postgres_url

    admin = postgres_url()
    name = f"dr_cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    try:

        def ingest() -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "AMQP_URL"}}
            env.update({"DATABASE_URL": url, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
            result = subprocess.run(
                [CLI, "ingest", str(REAL_SNAPSHOTS)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            return result

        def recorded() -> dict[str, int]:
            with psycopg.connect(url, autocommit=True) as connection:
                rows = connection.execute(
                    "SELECT topic, count(*) FROM defirealtime_events GROUP BY topic"
                ).fetchall()
            return {topic.rsplit(":", 1)[1]: count for topic, count in rows}

        first = ingest()
        # 46,600 observations + 1,487 listings of untracked protocols; older snapshots' details
        # (1,263 of them used to flip the details back in time) change nothing.
        assert totals(first.stderr) == {"accepted": 48_087, "duplicates": 11_792, "rejected": 31}
        assert "31 x value must be non-negative" in first.stderr
        assert recorded() == {"Protocol.Listed": 6_689, "Protocol.MetricRecorded": 46_600}
        second = ingest()
        assert totals(second.stderr) == {"accepted": 0, "duplicates": 59_879, "rejected": 31}
        assert recorded() == {"Protocol.Listed": 6_689, "Protocol.MetricRecorded": 46_600}
        with psycopg.connect(url, autocommit=True) as connection:
            # The newest capture's details (2025-12-19): Aave V3's 18 chains of that day.
            state = connection.execute(
                "SELECT convert_from(state, 'utf8') FROM defirealtime_events "
                "WHERE topic LIKE '%Listed' AND convert_from(state, 'utf8') LIKE "
                '\'%"slug":"aave-v3"%\''
            ).fetchone()
        assert state is not None
        listed = json.loads(state[0])
        assert (listed["name"], len(listed["chains"]), listed["observed_at"]) == (
            "Aave V3",
            18,
            1_766_175_443.0,
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _category_update_after_restart(
    ws_url: str, base_url: str, headers: dict[str, str]
) -> None:
    async with asyncio.timeout(10):
        async with connect(ws_url) as ws, httpx.AsyncClient(base_url=base_url) as http:
            message = {"type": "subscribe", "channel": "protocols"}
            await ws.send(json.dumps({**message, "params": {"categories": ["Lending"]}}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            body = {
                "observations": [
                    {"protocol": "lido", "value": 26e9, "observed_at": T0 + 60},
                    {"protocol": "aave-v3", "value": 34e9, "observed_at": T0 + 60},
                ]
            }
            response = await http.post("/v2/ingest", json=body, headers=headers)
            assert response.status_code == 200, response.text
            frame = json.loads(await ws.recv())
            assert (frame["type"], frame["data"]["id"], frame["data"]["value"]) == (
                "update",
                "aave-v3",
                34e9,
            )


def test_projections_rebuild(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run(data_dir, "ingest", str(jsonl(tmp_path / "o.jsonl", OBSERVATIONS)))
    assert not (data_dir / "history.sqlite").exists()  # ingest writes the event store only
    result = run(data_dir, "projections", "rebuild")
    assert result.stdout == ""
    assert (data_dir / "history.sqlite").exists()
    with start_server(data_dir) as server, httpx.Client(base_url=server.base_url) as http:
        points = wait_for(lambda: http.get("/v2/protocols/aave-v3/metrics").json()["points"], bool)
        assert [p["value"] for p in points] == [30e9, 33e9]


def test_projections_rebuild_one_projection(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run(data_dir, "ingest", str(jsonl(tmp_path / "o.jsonl", OBSERVATIONS)))
    hot = run(data_dir, "projections", "rebuild", "hot")
    assert "rebuild hot" in hot.stderr
    assert "rebuild history" not in hot.stderr
    bad = run(data_dir, "projections", "rebuild", "everything", check=False)
    assert bad.returncode == 2
    assert "unknown projection 'everything'" in bad.stderr
    history = run(data_dir, "projections", "rebuild", "history")
    assert "rebuild history" in history.stderr
    assert "rebuild hot" not in history.stderr


def test_data_survives_a_server_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    body = {"observations": OBSERVATIONS[:3]}
    with start_server(data_dir) as server, httpx.Client(base_url=server.base_url) as http:
        first = http.post("/v2/ingest", json=body, headers=server.headers)
        assert first.status_code == 200, first.text
        assert first.json()["accepted"] == 3
        key = server.api_key
    with (
        start_server(data_dir, api_key=key) as server,
        httpx.Client(base_url=server.base_url) as http,
    ):
        assert http.get("/v2/protocols/aave-v3").json()["tvl"] == 33e9
        again = http.post("/v2/ingest", json=body, headers=server.headers)
        assert again.status_code == 200, again.text
        assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 3)


SUBCOMMANDS = [
    ("serve",),
    ("worker",),
    ("ingest",),
    ("keys",),
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "rotate"),
    ("keys", "revoke"),
    ("accounts",),
    ("accounts", "create"),
    ("accounts", "list"),
    ("projections",),
    ("projections", "rebuild"),
    ("collect",),
    ("alerts",),
    ("alerts", "backtest"),
    ("smart-money",),
    ("smart-money", "train"),
]


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_subcommand_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: Any) -> None:
    # In-process (each subprocess costs a second of imports); the installed command's
    # own --help runs below.
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="defi-realtime")
    assert result.exit_code == 0, result.output
    assert f"Usage: defi-realtime {' '.join(command)}" in result.output, result.output
    assert "--help" in result.output
    assert list(tmp_path.iterdir()) == []  # --help opens nothing


def test_installed_command_help(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert "Usage: defi-realtime" in result.stdout
    for command in ("serve", "worker", "ingest", "keys", "projections"):
        assert re.search(rf"^\W*{command}\b", result.stdout, re.MULTILINE), result.stdout
    assert list(tmp_path.iterdir()) == []


def test_smart_money_train_stores_a_versioned_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded blocks (as a collector records them) where eight wallets sell higher than
    they bought and eight lower; train from their labels, twice: versions 1 and 2."""
    from defi_realtime.adapters.event_store_log import EventStoreLog
    from defi_realtime.application.app import DefiRealtime
    from defi_realtime.application.evm_facts import ChainStep
    from defi_realtime.domain.evm import EvmChain
    from defi_realtime.entrypoints.settings import Settings
    from tests.unit.test_mev import E6, E18, PAIR, USDC, WETH, swap

    data = tmp_path / "data"
    data.mkdir()
    setting = {
        "chain_id": 1337,
        "name": "Dev",
        "rpc_urls": ["http://127.0.0.1:9"],
        "tokens": [
            {"address": USDC, "symbol": "USDC", "decimals": 6, "usd": 1.0},
            {"address": WETH, "symbol": "WETH", "decimals": 18},
        ],
        "pools": [
            {"address": PAIR, "protocol": "dex", "protocol_name": "Dex", "kind": "v2",
             "token0": USDC, "token1": WETH},
        ],
    }  # fmt: skip
    monkeypatch.setenv("EVM_CHAINS", json.dumps([setting]))
    wallets = [f"0x{index + 1:040x}" for index in range(16)]
    app = DefiRealtime(env=Settings(data_dir=data).event_store_env)
    try:
        app.record_chain_step(
            ChainStep(1337, "evm:1337", opening=lambda: EvmChain.open(1337, "Dev", 100))
        )
        for number in (100, 101):
            facts = []
            for index, wallet in enumerate(wallets):
                good = index % 2 == 0
                if number == 100:
                    trade = (USDC, 1_000 * E6), (WETH, E18 // 2)
                else:
                    usdc = (1_100 + 10 * index if good else 900 - 10 * index) * E6
                    trade = (WETH, E18 // 2), (USDC, usdc)
                facts.append(swap(index, PAIR, wallet, *trade, log=index, block=number))
            block = {"number": number, "hash": f"0xb{number}",
                     "parent_hash": "0x00" if number == 100 else "0xb100",
                     "timestamp": T0 + number * 12}  # fmt: skip
            app.record_chain_step(ChainStep(1337, "evm:1337", blocks=[block], facts=facts))
        assert len(EventStoreLog(app).read(0, 100).entries) >= 2
    finally:
        app.close()
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "wallet,label\n" + "".join(f"{w},{1 - i % 2}\n" for i, w in enumerate(wallets))
    )
    first = json.loads(run(data, "smart-money", "train", str(labels)).stdout)
    assert (first["version"], first["feature_names"][0]) == (1, "realised_pnl_usd")
    assert first["labelled"] == {"0": 8, "1": 8}
    assert set(first["metrics"]) >= {"precision", "recall", "roc_auc"}
    second = run(data, "smart-money", "train", str(labels), "--seed", "1")
    assert json.loads(second.stdout)["version"] == 2
    assert "held-out wallets; saved to" in second.stderr
    stored = json.loads((data / "smart-money-model.json").read_text())
    assert stored["version"] == 2
    few = tmp_path / "few.csv"
    few.write_text("".join(f"{w},1\n" for w in wallets[:5]))
    refused = run(data, "smart-money", "train", str(few), check=False)
    assert refused.returncode == 2
    assert "at least 12 are needed" in refused.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("wallet,label\nalice,1\n")
    assert "line 2" in run(data, "smart-money", "train", str(bad), check=False).stderr
