"""Smart money on request: a chain's wallets ranked, one wallet's profile.

Computed from the history read model's wallet moves (ADR 0051): features need every move
of the chain (prices and the order of a token's buyers are the chain's, not the wallet's),
and a linear pass over them costs milliseconds per thousand moves (docs/benchmarks.md). A
chain's features are computed at most once per ``FEATURES_TTL`` seconds, by one thread at a
time: a burst of requests (anyone may ask) and the channel's refreshes share one pass, and
an answer is at most that old. The user's model, when one is trained, is read again when
its file changes, so a new training shows without a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cachetools import TTLCache

from .evm_facts import TokenSpec
from .ports import WalletMovesReadModel
from .smart_money import SCORE_FORMULA, ScoreParts, WalletFeatures, default_score, wallet_features
from .smart_money_model import SmartMoneyModel, load_model

Ranking = Literal["default", "model"]

# Seconds a chain's computed features are reused.
FEATURES_TTL: Final = 2.0


class NoModel(LookupError):
    """A model ranking was asked for, and no model was trained."""


class UnknownChain(LookupError):
    """The chain is not one the collectors follow, or none was named among several."""


@dataclass(frozen=True, slots=True)
class WalletScore:
    """A wallet's place: its features, the default score with its terms, and the model's
    probability with each feature's contribution (when a model is trained)."""

    rank: int
    features: WalletFeatures
    default: ScoreParts
    model_probability: float | None
    model_contributions: Mapping[str, float] | None
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "wallet": self.features.wallet,
            "rank": self.rank,
            "score": self.score,
            "defaultScore": self.default.score,
            "defaultTerms": self.default.to_json(),
            "modelProbability": self.model_probability,
            "modelContributions": (
                None if self.model_contributions is None else dict(self.model_contributions)
            ),
            "features": self.features.to_json(),
        }


@dataclass(frozen=True, slots=True)
class SmartMoneyRanking:
    chain_id: int
    ranking: Ranking
    wallets_ranked: int
    wallets: tuple[WalletScore, ...]
    model: SmartMoneyModel | None

    def to_json(self) -> dict[str, Any]:
        model = self.model
        return {
            "chainId": self.chain_id,
            "ranking": self.ranking,
            "formula": SCORE_FORMULA,
            "walletsRanked": self.wallets_ranked,
            "model": None
            if model is None
            else {
                "version": model.version,
                "trainedAt": model.trained_at,
                "features": list(model.feature_names),
                "metrics": dict(model.metrics),
                "labelled": dict(model.labelled),
            },
            "wallets": [wallet.to_json() for wallet in self.wallets],
        }


class SmartMoneyReader:
    """Ranks a chain's wallets from its moves (blocking: call it from a thread)."""

    def __init__(
        self,
        moves: WalletMovesReadModel,
        tokens: Mapping[int, Mapping[str, TokenSpec]],
        model_path: Path | None = None,
        *,
        features_ttl: float = FEATURES_TTL,
    ) -> None:
        self.moves = moves
        self.tokens = tokens
        self.model_path = model_path
        self._features: TTLCache[int, dict[str, WalletFeatures]] = TTLCache(
            maxsize=256, ttl=features_ttl
        )
        self._computing = threading.Lock()
        self._model: tuple[tuple[int, int] | None, SmartMoneyModel | None] = (None, None)

    def chain(self, chain_id: int | None) -> int:
        """``chain_id``, or the only chain followed when None; ``UnknownChain`` otherwise."""
        if chain_id is None:
            if len(self.tokens) == 1:
                return next(iter(self.tokens))
            raise UnknownChain(
                f"name a chain (chainId): followed are {sorted(self.tokens) or 'none'}"
            )
        if chain_id not in self.tokens:
            raise UnknownChain(f"chain {chain_id} is not followed (EVM_CHAINS)")
        return chain_id

    def model(self) -> SmartMoneyModel | None:
        """The trained model, read again when its file changed (None: none trained)."""
        if self.model_path is None:
            return None
        try:
            stat = self.model_path.stat()
        except FileNotFoundError:
            return None
        version = (stat.st_mtime_ns, stat.st_size)
        seen, model = self._model
        if seen != version:
            model = load_model(self.model_path)
            self._model = (version, model)
        return model

    def features(self, chain_id: int) -> dict[str, WalletFeatures]:
        """Every wallet's features on the chain (wallets with a trade, or a transfer), at
        most ``features_ttl`` seconds old."""
        with self._computing:
            features = self._features.get(chain_id) if self._features.ttl > 0 else None
            if features is None:
                features = wallet_features(
                    self.moves.wallet_moves(chain_id), self.tokens.get(chain_id, {})
                )
                if self._features.ttl > 0:
                    self._features[chain_id] = features
            return features

    def leaders(self, chain_id: int, limit: int) -> dict[Ranking, list[tuple[str, float]]]:
        """The top ``limit`` traders of a chain as ``(wallet, score)``, best first, by the
        default score and, when a model is trained, by the model (``100 * probability``):
        what the ``smart-money`` channel streams (one pass over the moves for both)."""
        model = self.model()
        traders = [f for f in self.features(chain_id).values() if f.trades > 0]
        by: dict[Ranking, list[tuple[str, float]]] = {
            "default": [(f.wallet, default_score(f).score) for f in traders]
        }
        if model is not None:
            by["model"] = [(f.wallet, 100 * model.probability(f)) for f in traders]
        return {
            ranking: sorted(scores, key=lambda s: (-s[1], s[0]))[:limit]
            for ranking, scores in by.items()
        }

    def rank(
        self,
        chain_id: int | None = None,
        *,
        ranking: Ranking = "default",
        limit: int = 20,
        wallet: str | None = None,
    ) -> SmartMoneyRanking:
        """The top ``limit`` traders (at least one swap) by ``ranking``; with ``wallet``,
        that wallet alone (``wallets`` empty when it never traded)."""
        chain = self.chain(chain_id)
        model = self.model()
        if ranking == "model" and model is None:
            raise NoModel("no model is trained: defi-realtime smart-money train LABELS.csv")
        traders = [f for f in self.features(chain).values() if f.trades > 0]
        scored: list[WalletScore] = []
        for features in traders:
            parts = default_score(features)
            probability = None if model is None else model.probability(features)
            scored.append(
                WalletScore(
                    rank=0,
                    features=features,
                    default=parts,
                    model_probability=probability,
                    model_contributions=None if model is None else model.contributions(features),
                    score=parts.score
                    if ranking == "default" or probability is None
                    else 100 * probability,
                )
            )
        scored.sort(key=lambda s: (-s.score, s.features.wallet))
        ranked = tuple(
            WalletScore(
                rank=index,
                features=s.features,
                default=s.default,
                model_probability=s.model_probability,
                model_contributions=s.model_contributions,
                score=s.score,
            )
            for index, s in enumerate(scored, start=1)
        )
        chosen = (
            tuple(s for s in ranked if s.features.wallet == wallet)
            if wallet is not None
            else ranked[:limit]
        )
        return SmartMoneyRanking(chain, ranking, len(ranked), chosen, model)
