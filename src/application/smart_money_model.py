"""A user's smart-money model: scikit-learn trains it, plain JSON keeps it, Python scores it.

``train`` fits a scikit-learn pipeline (signed-log inputs, ``StandardScaler``,
``LogisticRegression``) on the features of the wallets a user labelled, holding out a
stratified quarter to measure it (precision, recall, ROC AUC). The fitted pipeline is
linear, so it is kept as its numbers in a JSON manifest (``SmartMoneyModel``: version,
feature names, trained_at, the scaler's means and scales, the coefficients, the metrics):
no pickle to load, nothing executable in the file, and the server scores without
scikit-learn installed (the ``smart-money`` extra is for training). ``probability``
reproduces ``predict_proba`` exactly (a unit test holds them together), and
``contributions`` says which features pushed a wallet's score up or down.
See docs/adr/0051-smart-money.md.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from .smart_money import FEATURE_NAMES, WalletFeatures

FORMAT: Final = "defi-realtime/smart-money-model"
FORMAT_VERSION: Final = 1
# Fewer labelled wallets than this, or fewer than ``MIN_PER_CLASS`` of each label, and the
# held-out split measures nothing worth reporting: training is refused.
MIN_WALLETS: Final = 12
MIN_PER_CLASS: Final = 4
HELD_OUT: Final = 0.25


class TrainingRefused(ValueError):
    """The labels cannot train a model (too few, one class only, unknown wallets)."""


class ModelUnavailable(RuntimeError):
    """scikit-learn is not installed (``pip install 'defi-realtime[smart-money]'``)."""


def signed_log(value: float) -> float:
    """``sign(x) * log1p(|x|)``: USD figures and counts span orders of magnitude."""
    return math.copysign(math.log1p(abs(value)), value)


def model_inputs(features: WalletFeatures) -> list[float]:
    return [signed_log(value) for value in features.vector()]


@dataclass(frozen=True, slots=True)
class SmartMoneyModel:
    """A trained logistic model over ``feature_names`` (signed-log, standardised)."""

    version: int
    trained_at: float
    feature_names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    metrics: Mapping[str, float]
    labelled: Mapping[str, int] = field(default_factory=dict)  # wallets per label

    def _standardised(self, features: WalletFeatures) -> list[float]:
        by_name = dict(zip(FEATURE_NAMES, model_inputs(features), strict=True))
        return [
            (by_name[name] - mean) / scale
            for name, mean, scale in zip(self.feature_names, self.means, self.scales, strict=True)
        ]

    def contributions(self, features: WalletFeatures) -> dict[str, float]:
        """Each feature's share of the log-odds (coefficient x standardised input)."""
        return {
            name: coefficient * value
            for name, coefficient, value in zip(
                self.feature_names, self.coefficients, self._standardised(features), strict=True
            )
        }

    def probability(self, features: WalletFeatures) -> float:
        """The model's probability that the wallet is "smart" (label 1)."""
        logit = self.intercept + sum(self.contributions(features).values())
        if logit >= 0:
            return 1.0 / (1.0 + math.exp(-logit))
        odds = math.exp(logit)
        return odds / (1.0 + odds)

    def manifest(self) -> dict[str, Any]:
        raw = asdict(self)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **raw,
            "feature_names": list(self.feature_names),
            "means": list(self.means),
            "scales": list(self.scales),
            "coefficients": list(self.coefficients),
            "metrics": dict(self.metrics),
            "labelled": dict(self.labelled),
        }

    @classmethod
    def from_manifest(cls, raw: Mapping[str, Any]) -> SmartMoneyModel:
        if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
            raise ValueError("not a smart-money model manifest of this version")
        names = tuple(str(name) for name in raw["feature_names"])
        unknown = set(names) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"the model uses features this version has not: {sorted(unknown)}")
        model = cls(
            version=int(raw["version"]),
            trained_at=float(raw["trained_at"]),
            feature_names=names,
            means=tuple(float(v) for v in raw["means"]),
            scales=tuple(float(v) for v in raw["scales"]),
            coefficients=tuple(float(v) for v in raw["coefficients"]),
            intercept=float(raw["intercept"]),
            metrics={str(k): float(v) for k, v in raw["metrics"].items()},
            labelled={str(k): int(v) for k, v in raw.get("labelled", {}).items()},
        )
        if not len(names) == len(model.means) == len(model.scales) == len(model.coefficients):
            raise ValueError("a model's feature names, means, scales and coefficients differ")
        return model


def load_model(path: Path) -> SmartMoneyModel | None:
    """The model stored at ``path``; None when there is none."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return SmartMoneyModel.from_manifest(raw)


def save_model(model: SmartMoneyModel, path: Path) -> None:
    """Write the manifest atomically (a reader never sees half a model)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as out:
        json.dump(model.manifest(), out, indent=2)
        out.write("\n")
    os.replace(out.name, path)


def train(
    features: Mapping[str, WalletFeatures],
    labels: Mapping[str, int],
    *,
    version: int,
    trained_at: float,
    seed: int = 0,
) -> SmartMoneyModel:
    """Fit the model on the labelled wallets (``labels``: wallet -> 0 or 1) whose features
    are known, measured on a stratified held-out quarter; the model kept is the one fitted
    on the other three quarters (so its metrics are its own). Raises ``TrainingRefused``."""
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import precision_score, recall_score, roc_auc_score
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:  # pragma: no cover - the extra is in dev
        raise ModelUnavailable(
            "training needs scikit-learn: pip install 'defi-realtime[smart-money]'"
        ) from error
    known = sorted(wallet for wallet in labels if wallet in features)
    missing = len(labels) - len(known)
    if len(known) < MIN_WALLETS:
        raise TrainingRefused(
            f"{len(known)} labelled wallets have trades ({missing} have none): "
            f"at least {MIN_WALLETS} are needed"
        )
    y = [int(labels[wallet]) for wallet in known]
    counts = {"0": y.count(0), "1": y.count(1)}
    if min(counts.values()) < MIN_PER_CLASS:
        raise TrainingRefused(
            f"labels need at least {MIN_PER_CLASS} wallets of each class, got {counts}"
        )
    x = [model_inputs(features[wallet]) for wallet in known]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT, stratify=y, random_state=seed
    )
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000))
    pipeline.fit(x_train, y_train)
    scores = pipeline.predict_proba(x_test)[:, 1]
    predicted = pipeline.predict(x_test)
    scaler, logistic = pipeline[0], pipeline[-1]
    # A constant feature has scale 0 in the data; StandardScaler divides by 1 then.
    return SmartMoneyModel(
        version=version,
        trained_at=trained_at,
        feature_names=FEATURE_NAMES,
        means=tuple(float(v) for v in scaler.mean_),
        scales=tuple(float(v) for v in scaler.scale_),
        coefficients=tuple(float(v) for v in logistic.coef_[0]),
        intercept=float(logistic.intercept_[0]),
        metrics={
            "precision": float(precision_score(y_test, predicted, zero_division=0)),
            "recall": float(recall_score(y_test, predicted, zero_division=0)),
            "roc_auc": float(roc_auc_score(y_test, scores)),
            "held_out": float(len(y_test)),
            "trained_on": float(len(y_train)),
        },
        labelled=counts,
    )


def _hex(digits: str) -> bool:
    return all(c in "0123456789abcdef" for c in digits)


def read_labels(lines: Sequence[str]) -> dict[str, int]:
    """``wallet,label`` lines (a header line naming ``wallet`` is skipped; ``label`` 1 or
    0, also true/false, smart/other) into wallet -> label, addresses in lower case.
    Raises ``TrainingRefused`` naming the first bad line."""
    import csv

    labels: dict[str, int] = {}
    truthy, falsy = {"1", "true", "yes", "smart"}, {"0", "false", "no", "other"}
    for number, row in enumerate(csv.reader(lines), start=1):
        if not row or not "".join(row).strip() or row[0].strip().startswith("#"):
            continue
        if number == 1 and row[0].strip().lower() == "wallet":
            continue
        if len(row) < 2:
            raise TrainingRefused(f"line {number}: expected wallet,label")
        wallet, raw = row[0].strip().lower(), row[1].strip().lower()
        if not (wallet.startswith("0x") and len(wallet) == 42 and _hex(wallet[2:])):
            raise TrainingRefused(f"line {number}: {row[0]!r} is not a 0x address")
        if raw not in truthy | falsy:
            raise TrainingRefused(f"line {number}: label {row[1]!r} is not 1/0")
        labels[wallet] = 1 if raw in truthy else 0
    return labels
