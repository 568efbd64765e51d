"""Run under ``torchrun --nproc-per-node 2`` by tests/test_dense_distributed.py (not a test file).

    dense_dist_checks.py OUT.json [CHECKPOINT EVAL.json ...]

Each rank holds half of a batch; the checks compare the cross-rank pieces against the same
computation on the whole batch in one process: `CrossRankBatchNorm` (output, input and weight
gradients, running statistics), the pooled segmentation cross-entropy and SILog (value; gradient
as DDP would average it), `mean_across_ranks`, `gather_objects` and `broadcast_object`. Rank 0
writes the worst relative differences as JSON to OUT.json. Then each CHECKPOINT is evaluated by
the real ``vitsplit-vlm dense eval`` in these two processes (sharded; it uses the group this
script made), its metrics in EVAL.json.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from vitsplit_vlm.dense.distributed import (
    CrossRankBatchNorm,
    broadcast_object,
    gather_objects,
    mean_across_ranks,
    sum_across_ranks,
)
from vitsplit_vlm.dense.losses import SILogLoss, seg_loss


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def gathered(t: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors concatenated along dim 0 (rank order)."""
    parts = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def check_batch_norm(rank: int) -> dict[str, float]:
    torch.manual_seed(0)
    x, w = torch.randn(4, 8, 6, 5) * 3 + 1, torch.randn(4, 8, 6, 5)
    ref = nn.BatchNorm2d(8)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    whole = x.clone().requires_grad_()
    y_ref = ref(whole)
    (y_ref * w).sum().backward()
    bn = CrossRankBatchNorm(8)
    bn.load_state_dict(nn.BatchNorm2d(8).state_dict())
    with torch.no_grad():
        bn.weight.copy_(ref.weight)
        bn.bias.copy_(ref.bias)
    half = x[2 * rank : 2 * rank + 2].clone().requires_grad_()
    y = bn(half)
    (y * w[2 * rank : 2 * rank + 2]).sum().backward()
    return {
        "bn_out": rel(gathered(y.detach()), y_ref.detach()),
        "bn_grad_x": rel(gathered(half.grad), whole.grad),
        "bn_grad_weight": rel(sum_across_ranks(bn.weight.grad.clone()), ref.weight.grad),
        "bn_running_var": rel(bn.running_var, ref.running_var),
        "bn_running_mean": rel(bn.running_mean, ref.running_mean),
    }


def check_pooled_losses(rank: int) -> dict[str, float]:
    """Each rank's loss averages to the whole batch's; its gradient, averaged over ranks (as
    DDP does), equals the whole batch's gradient."""
    torch.manual_seed(1)
    logits = torch.randn(4, 5, 7, 7)
    labels = torch.randint(0, 5, (4, 28, 28))
    labels[0, :20] = 255  # the shards hold different numbers of labelled pixels
    pred, depth = torch.rand(4, 1, 7, 7) * 4 + 0.1, torch.rand(4, 1, 14, 14) * 9
    depth[1, :, :10] = 0
    out = {}
    for name, fn, inputs, target in (
        ("seg", lambda a, b, sharded: seg_loss(a, b, sharded=sharded), logits, labels),
        ("silog", lambda a, b, sharded: SILogLoss()(a, b, sharded=sharded), pred, depth),
    ):
        whole = inputs.clone().requires_grad_()
        ref = fn(whole, target, False)
        ref.backward()
        part = inputs[2 * rank : 2 * rank + 2].clone().requires_grad_()
        loss = fn(part, target[2 * rank : 2 * rank + 2], True)
        loss.backward()
        mean_loss = sum_across_ranks(loss.detach().clone()) / dist.get_world_size()
        grad = gathered(part.grad) / dist.get_world_size()  # DDP's average of the gradients
        out[f"{name}_loss"] = rel(mean_loss, ref.detach())
        out[f"{name}_grad"] = rel(grad, whole.grad)
    return out


def check_objects(rank: int) -> dict[str, float]:
    means = mean_across_ranks({"a": float(rank), "b": 2.0 * rank}, torch.device("cpu"))
    objects = gather_objects({"rank": rank})
    shared = broadcast_object({"from": rank})
    ok = means == {"a": 0.5, "b": 1.0} and shared == {"from": 0}
    ok = ok and (objects == [{"rank": 0}, {"rank": 1}] if rank == 0 else objects is None)
    return {"objects_wrong": 0.0 if ok else 1.0}


def main(path: str, evaluations: list[str]) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    results = {**check_batch_norm(rank), **check_pooled_losses(rank), **check_objects(rank)}
    worst = [None, None]
    dist.all_gather_object(worst, results)
    if rank == 0:
        merged = {k: max(r[k] for r in worst) for k in results}
        with open(path, "w") as f:
            json.dump(merged, f)
    from vitsplit_vlm.cli import main as vitsplit_vlm

    for checkpoint, out in zip(evaluations[::2], evaluations[1::2], strict=True):
        assert vitsplit_vlm(["dense", "eval", "--checkpoint", checkpoint, "--out", out]) == 0
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
