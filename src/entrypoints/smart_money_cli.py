"""``defi-realtime smart-money``: train the user's smart-money model from labelled wallets."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from .alerts_cli import catch_up_history
from .console import err
from .container import opened
from .settings import Settings

smart_money_cli = typer.Typer(
    help="Smart money (wallets ranked by their trades).", no_args_is_help=True
)


@smart_money_cli.command("train")
def train_command(
    labels: Annotated[
        Path,
        typer.Argument(
            help="CSV of wallet,label (1: smart, 0: not), a header line allowed",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    chain_id: Annotated[
        int | None, typer.Option("--chain-id", help="the EVM chain (optional when one)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the held-out split")] = 0,
) -> None:
    """Train a model on the features of the labelled wallets' recorded trades, measure it
    on a held-out quarter of them, and store it (versioned, with its features and metrics)
    where SMART_MONEY_MODEL says; prints the manifest on stdout. The model is only as good
    as the labels: the metrics are on your own wallets (docs/onchain.md)."""
    from ..application.smart_money_model import (
        ModelUnavailable,
        TrainingRefused,
        read_labels,
        save_model,
        train,
    )
    from ..application.smart_money_reader import UnknownChain

    settings = Settings()
    try:
        wanted = read_labels(labels.read_text().splitlines())
    except TrainingRefused as error:
        err.print(f"[red]{labels}: {error}[/red]")
        raise typer.Exit(2) from None
    with opened(settings) as container:
        catch_up_history(container.history_runner())
        reader = container.smart_money()
        try:
            chain = reader.chain(chain_id)
            features = reader.features(chain)
            previous = reader.model()
            model = train(
                features,
                wanted,
                version=1 if previous is None else previous.version + 1,
                trained_at=time.time(),
                seed=seed,
            )
        except (UnknownChain, TrainingRefused, ModelUnavailable) as error:
            err.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
    path = settings.smart_money_model_path
    save_model(model, path)
    metrics = model.metrics
    err.print(
        f"model v{model.version} on chain {chain}: precision {metrics['precision']:.2f}, "
        f"recall {metrics['recall']:.2f}, ROC AUC {metrics['roc_auc']:.2f} on "
        f"{metrics['held_out']:.0f} held-out wallets; saved to {path}"
    )
    sys.stdout.write(json.dumps(model.manifest()) + "\n")
