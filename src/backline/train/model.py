"""The fraud model: an embedding per categorical feature, concatenated with the numeric inputs,
then an MLP with ReLU that ends in one logit.

    cfg = ModelConfig(n_numeric=30, vocab_sizes=(40, 5, 9), embedding_dim=8, hidden=(128, 64))
    model = cfg.build()                       # FraudMLP
    logits = model(x_num, x_cat)              # (N, 30) float32, (N, 3) int64 -> (N,)
    torch.jit.script(model)                   # scriptable: the serving artifact is TorchScript

Class imbalance is handled in the loss, not the model: `BCEWithLogitsLoss(pos_weight=n_neg /
n_pos)` with the counts of the training split (see `pos_weight`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from backline.core.errors import SchemaError


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network before loading its weights."""

    n_numeric: int
    """Width of x_num (the preprocessor's normalised values plus missing indicators)."""
    vocab_sizes: tuple[int, ...]
    """Embedding rows per categorical feature, index 0 (unknown) included."""
    embedding_dim: int = 8
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0

    def build(self) -> FraudMLP:
        return FraudMLP(
            self.n_numeric, self.vocab_sizes, self.embedding_dim, self.hidden, self.dropout
        )

    def to_json(self) -> str:
        return json.dumps({"format": "backline.model/1", **asdict(self)}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            doc = json.loads(text)
            return cls(
                n_numeric=int(doc["n_numeric"]),
                vocab_sizes=tuple(int(v) for v in doc["vocab_sizes"]),
                embedding_dim=int(doc["embedding_dim"]),
                hidden=tuple(int(h) for h in doc["hidden"]),
                dropout=float(doc["dropout"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaError(
                f"model config JSON is not valid ({type(exc).__name__}: {exc}); it is written by "
                "`backline train`, retrain to regenerate it."
            ) from None


class FraudMLP(nn.Module):
    def __init__(
        self,
        n_numeric: int,
        vocab_sizes: Sequence[int],
        embedding_dim: int,
        hidden: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_numeric = n_numeric
        self.n_categorical = len(vocab_sizes)
        self.embeddings = nn.ModuleList(nn.Embedding(size, embedding_dim) for size in vocab_sizes)
        layers: list[nn.Module] = []
        width = n_numeric + embedding_dim * len(vocab_sizes)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        # x_num (N, n_numeric) float32, x_cat (N, n_categorical) int64 -> logits (N,)
        parts = [x_num]
        for i, embedding in enumerate(self.embeddings):
            parts.append(embedding(x_cat[:, i]))  # (N, embedding_dim)
        x = torch.cat(parts, dim=1)  # (N, n_numeric + n_categorical * embedding_dim)
        return self.mlp(x).squeeze(-1)  # (N, 1) -> (N,)


def pos_weight(labels: torch.Tensor) -> float:
    """n_negative / n_positive of the training labels: weighs the rare class up in the loss."""
    positives = float(labels.sum())
    negatives = float(labels.numel()) - positives
    if positives == 0 or negatives == 0:
        raise SchemaError(
            f"the training labels have a single class ({positives:.0f} positive, "
            f"{negatives:.0f} negative); a classifier needs both."
        )
    return negatives / positives
