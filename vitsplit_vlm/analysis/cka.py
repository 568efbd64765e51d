"""Linear CKA between layers: the full-batch value and a minibatch estimator that streams.

Full batch (Kornblith et al. 2019): with X (n, D_x), Y (n, D_y) centred over the n examples,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F).

It needs every example at once. The minibatch estimator (Nguyen et al. 2021, "Do wide and deep
networks learn the same things?") instead averages the *unbiased* HSIC estimator of Song et al.
(2012) over minibatches of linear Gram matrices K = X X^T, L = Y Y^T (n >= 4 examples each):

    HSIC_1(K, L) = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1]
                   / (n (n-3)),      K~, L~ = K, L with the diagonal set to zero;

    CKA_mb(X, Y) = mean_b HSIC_1(K_b, L_b) / sqrt(mean_b HSIC_1(K_b, K_b) mean_b HSIC_1(L_b, L_b)).

Each term is unbiased, so the average over batches converges to the population value whatever
the batch size, and memory is one batch of Gram matrices: (layers, n, n). `MinibatchCKA` keeps
the running sums for every layer pair at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MIN_BATCH = 4  # HSIC_1 divides by n - 3


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Full-batch linear CKA between two (n, D) feature sets (Kornblith et al. 2019)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def linear_grams(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """L feature sets (n, D_l) over the same n examples -> (L, n, n) float64 Gram matrices with
    zeroed diagonals (the K~ of `unbiased_hsic`)."""
    n = features[0].shape[0]
    grams = torch.empty(len(features), n, n, dtype=torch.float64, device=features[0].device)
    for i, f in enumerate(features):
        if f.ndim != 2 or f.shape[0] != n:
            raise ValueError(f"feature set {i}: expected ({n}, D), got {tuple(f.shape)}")
        f = f.double()
        grams[i] = f @ f.T
    grams.diagonal(dim1=1, dim2=2).zero_()
    return grams


def unbiased_hsic(grams: torch.Tensor) -> torch.Tensor:
    """(L, n, n) zero-diagonal Gram matrices -> (L, L) matrix of HSIC_1 for every pair."""
    n = grams.shape[-1]
    if n < MIN_BATCH:
        raise ValueError(f"the unbiased HSIC needs at least {MIN_BATCH} examples, got {n}")
    flat = grams.reshape(grams.shape[0], -1)
    trace = flat @ flat.T  # tr(K~ L~) = sum_ij K~_ij L~_ij (symmetric)
    sums = flat.sum(1)  # 1^T K~ 1
    rows = grams.sum(2)  # K~ 1, (L, n)
    cross = rows @ rows.T  # 1^T K~ L~ 1
    hsic = trace + torch.outer(sums, sums) / ((n - 1) * (n - 2)) - 2 / (n - 2) * cross
    return hsic / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA between every pair of L feature sets, accumulated over minibatches.

    acc = MinibatchCKA(num_layers)
    for batch in ...: acc.update([layer_features (n, D_l) for each layer])
    acc.compute()  # (L, L), symmetric, ones on the diagonal
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.hsic_sum = torch.zeros(num_layers, num_layers, dtype=torch.float64)
        self.batches = 0
        self.examples = 0

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """One minibatch: `num_layers` tensors (n, D_l) over the same n >= 4 examples."""
        if len(features) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} feature sets, got {len(features)}")
        self.hsic_sum += unbiased_hsic(linear_grams(features)).cpu()
        self.batches += 1
        self.examples += features[0].shape[0]

    def compute(self) -> torch.Tensor:
        """(L, L) CKA; a layer whose features do not vary (zero self-HSIC) gets NaN."""
        if not self.batches:
            raise ValueError("no minibatch was added")
        hsic = self.hsic_sum / self.batches
        norms = hsic.diagonal().clamp(min=0).sqrt()
        return hsic / torch.outer(norms, norms)


def minibatch_cka(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Minibatch CKA of two (n, D) sets over consecutive batches (a smaller last one is kept
    if it has at least `MIN_BATCH` examples)."""
    acc = MinibatchCKA(2)
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        if xb.shape[0] >= MIN_BATCH:
            acc.update([xb, yb])
    return float(acc.compute()[0, 1])
