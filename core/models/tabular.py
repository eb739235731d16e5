"""Networks for tables: a feature vector (standardised numbers + category embeddings) in."""

from __future__ import annotations

import torch
from torch import nn

from core.config import RunConfig
from core.models import register_model

TABULAR = ("tabular-classification", "tabular-regression")


@register_model(
    tasks=TABULAR,
    description="Multi-layer perceptron (hidden sizes and dropout from the config)",
    default=True,
)
def mlp(in_dim: int, out_dim: int, cfg: RunConfig) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


@register_model(tasks=TABULAR, description="Linear model: logistic or linear regression on the features")
def linear(in_dim: int, out_dim: int, cfg: RunConfig) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def embedding_dim(cardinality: int) -> int:
    return int(min(32, max(2, round(1.6 * cardinality**0.56))))


class TabularNet(nn.Module):
    """Raw columns in: NaN imputation and standardisation live in the module, so in the export."""

    num_mean: torch.Tensor
    num_std: torch.Tensor

    def __init__(self, n_numeric: int, cardinalities: list[int], body: nn.Module) -> None:
        super().__init__()
        self.n_numeric = n_numeric
        self.register_buffer("num_mean", torch.zeros(n_numeric))
        self.register_buffer("num_std", torch.ones(n_numeric))
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in cardinalities)
        self.body = body

    @staticmethod
    def in_dim(n_numeric: int, cardinalities: list[int]) -> int:
        return n_numeric + sum(embedding_dim(c) for c in cardinalities)

    def forward(self, numeric: torch.Tensor | None, categorical: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if numeric is not None and self.n_numeric:
            filled = torch.where(torch.isnan(numeric), self.num_mean, numeric)
            parts.append((filled - self.num_mean) / self.num_std)
        if categorical is not None:
            for i, emb in enumerate(self.embeddings):
                parts.append(emb(categorical[:, i]))
        return self.body(torch.cat(parts, dim=1))
