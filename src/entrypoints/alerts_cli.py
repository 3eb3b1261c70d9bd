"""``defi-realtime alerts``: operator tools for alert rules (backtest, dead letters)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.table import Table

from ..application.following import ProjectionRunner
from .console import err, progress_bar
from .container import opened, opened_async, provide
from .settings import Settings

alerts_cli = typer.Typer(help="Alert rules.", no_args_is_help=True)


def _time(raw: str | None, name: str) -> float | None:
    from ..application.ingest import InvalidItem, parse_timestamp

    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return parse_timestamp(raw)
    except (InvalidItem, ValueError):
        err.print(f"[red]--{name} must be unix seconds or ISO-8601, got {raw!r}[/red]")
        raise typer.Exit(2) from None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(2)


@alerts_cli.command("backtest")
def backtest_command(
    rule: Annotated[str | None, typer.Option(help="id of a stored rule to replay")] = None,
    protocol: Annotated[str | None, typer.Option(help="inline rule: protocol slug")] = None,
    metric: Annotated[str, typer.Option(help="inline rule: tvl | volume_24h | fees_24h")] = "tvl",
    chain: Annotated[str, typer.Option(help="inline rule: 'total' or a chain")] = "total",
    condition: Annotated[str, typer.Option(help="inline rule: threshold | pct_change")] = (
        "threshold"
    ),
    direction: Annotated[str, typer.Option(help="inline rule: above | below")] = "below",
    value: Annotated[
        float | None, typer.Option(help="inline rule: threshold, or percent (-20: falls 20%)")
    ] = None,
    window: Annotated[str | None, typer.Option(help="inline pct_change: 1h | 24h | 7d")] = None,
    cooldown: Annotated[int, typer.Option(help="inline rule: seconds (data time)")] = 3_600,
    start: Annotated[str | None, typer.Option(help="unix seconds or ISO-8601")] = None,
    end: Annotated[str | None, typer.Option(help="unix seconds or ISO-8601")] = None,
) -> None:
    """Replay a rule over stored history; prints {"events": [...]} (when it would have
    fired and resolved) on stdout. Brings the history read model up to date first."""
    from ..application.alert_backtest import BacktestUnsupported, backtest, history_points
    from ..domain.alert_rule import AlertRule, InvalidRule
    from ..domain.alert_values import parse_condition, parse_cooldown, parse_target

    if (rule is None) == (protocol is None):
        raise _fail("give either --rule ID or an inline rule (--protocol SLUG ...)")
    start_at, end_at = _time(start, "start"), _time(end, "end")
    with opened(Settings()) as container:
        app, history = container.application(), container.history()
        if rule is not None:
            try:
                stored: Any = app.repository.get(UUID(rule))
            except Exception:  # a malformed id or no such aggregate
                stored = None
            if not isinstance(stored, AlertRule) or stored.state == "deleted":
                raise _fail(f"no alert rule {rule!r}")
            target, rule_condition = stored.target, stored.condition
            cooldown = stored.cooldown
        else:
            inline: dict[str, Any] = {"kind": condition, "direction": direction, "value": value}
            if window is not None:
                inline["window"] = window
            try:
                target = parse_target({"protocol": protocol, "metric": metric, "chain": chain})
                rule_condition = parse_condition(inline)
                parse_cooldown(cooldown)
            except InvalidRule as error:
                raise _fail(str(error)) from None
        catch_up_history(container.history_runner())
        try:
            points = history_points(history, target, rule_condition, start=start_at, end=end_at)
            if not points:
                raise _fail(f"no stored history for {target}")
            with progress_bar() as progress:
                task = progress.add_task("backtest", total=len(points))
                result = backtest(
                    target,
                    rule_condition,
                    points,
                    cooldown=cooldown,
                    start=start_at,
                    end=end_at,
                    progress=lambda n: progress.advance(task, n),
                )
        except (InvalidRule, BacktestUnsupported) as error:
            raise _fail(str(error)) from None
    table = Table(title=f"backtest: {len(result.events)} transitions over {result.points:,} points")
    table.add_column("state")
    table.add_column("observed at (UTC)")
    table.add_column("measure", justify="right")
    for event in result.events:
        table.add_row(event.state, _iso(event.observed_at), f"{event.measure:,.2f}")
    err.print(table)
    output = {
        "rule": rule,
        "target": target.model_dump(),
        "condition": rule_condition.model_dump(),
        **result.to_json(),
    }
    sys.stdout.write(json.dumps(output) + "\n")


def catch_up_history(runner: ProjectionRunner) -> None:
    """Apply what the history read model has not seen yet (exactly once: safe beside a
    running server, which applies the same log under the same tracking row)."""

    async def main() -> None:
        head = await asyncio.to_thread(runner.event_log.head)
        with progress_bar() as progress:
            task = progress.add_task("history read model", total=head)
            await runner.catch_up_in_steps(
                head, progress=lambda position: progress.update(task, completed=position)
            )

    asyncio.run(main())


@alerts_cli.command("dead-letters")
def dead_letters_command(
    rule: Annotated[str, typer.Argument(help="the rule's id")],
    redrive: Annotated[
        bool, typer.Option("--redrive", help="deliver them again, from a first attempt")
    ] = False,
) -> None:
    """List a rule's dead letters (notifications given up) as JSON on stdout, or with
    --redrive put them back on the work queue under the same idempotency keys. Embedded
    (no AMQP_URL) only the serving process can redrive (its queue is in memory): use
    POST /v2/alerts/{id}/dead-letters/redrive."""
    from ..application.notifications import DeadLetters
    from ..domain.alert_rule import AlertRule

    settings = Settings()
    if redrive and settings.amqp_url is None:
        raise _fail(
            "without AMQP_URL the serving process delivers from memory: redrive through it, "
            "POST /v2/alerts/{id}/dead-letters/redrive"
        )
    try:
        rule_id = UUID(rule)
    except ValueError:
        raise _fail(f"no alert rule {rule!r}") from None

    async def main() -> dict[str, Any]:
        async with opened_async(settings) as container:
            app = container.application()
            try:
                stored: Any = await asyncio.to_thread(app.repository.get, rule_id)
            except Exception:  # no such aggregate
                stored = None
            if not isinstance(stored, AlertRule) or stored.state == "deleted":
                raise _fail(f"no alert rule {rule!r}")
            dead_letters: DeadLetters = await provide(container.dead_letters)
            if redrive:
                jobs = await dead_letters.redrive(str(rule_id))
                return {"rule": str(rule_id), "redriven": [job.idempotency_key for job in jobs]}
            parked = await dead_letters.of_rule(str(rule_id))
            return {"rule": str(rule_id), "deadLetters": [entry.to_json() for entry in parked]}

    output = asyncio.run(main())
    count = len(output.get("redriven", output.get("deadLetters", [])))
    err.print(f"{count} dead letter(s) {'redriven' if redrive else 'parked'}")
    sys.stdout.write(json.dumps(output) + "\n")
