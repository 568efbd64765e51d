"""Which frozen layers feed the prior head: uniform indices or a learned sparse gate (paper §3.2, App. B.1)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def uniform_indices(*, s: int, n: int, last: int) -> list[int]:
    """Block indices `s + int(i * (last - s) / (n - 1))`, `i = 0..n-1` (paper Eq. 2, `last = N-1`).

    >>> uniform_indices(s=2, n=4, last=11)
    [2, 5, 8, 11]
    """
    if n == 1:
        return [s]
    return [s + int(i * (last - s) / (n - 1)) for i in range(n)]


class SparseGate(nn.Module):
    """Learned top-n selection over `num_layers` frozen layers (official `LearnableGate`).

    Scores `G` (num_layers, n) start uniform(0, 1). Per column: softmax over layers at
    `temperature`, keep the top-n entries (zero elsewhere); the straight-through estimator
    `gate = sparse - G.detach() + G` makes the forward pass use the sparse gate while the
    backward pass reaches every score; columns are renormalised to sum to 1.
    """

    def __init__(self, num_layers: int, n: int, temperature: float = 0.5) -> None:
        super().__init__()
        self.n = n
        self.temperature = temperature
        self.scores = nn.Parameter(torch.empty(num_layers, n).uniform_(0.0, 1.0))

    def forward(self) -> torch.Tensor:
        """Gate weights (num_layers, n): n non-zeros per column, each column sums to 1."""
        scores = self.scores
        soft = F.softmax(scores / self.temperature, dim=0)
        top = soft.topk(self.n, dim=0).indices
        sparse = torch.zeros_like(soft).scatter(0, top, soft.gather(0, top))
        gate = sparse - scores.detach() + scores
        return gate / gate.sum(dim=0, keepdim=True)

    def select(self, layers: torch.Tensor) -> torch.Tensor:
        """Mix stacked layers (B, L, C, h, w) into n maps (B, n, C, h, w)."""
        return torch.einsum("bldhw,lk->bkdhw", layers, self.forward())
