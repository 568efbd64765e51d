"""Which samples each optimiser step trains on, for any number of processes and accumulation steps.

Every epoch has one order of the training set (`epoch_order`, seeded by the run's seed and the
epoch). Consecutive runs of ``global_batch`` indices are the global batches, one per optimiser
step; the last incomplete one is dropped (unless the set is smaller than one batch, which is then
the only batch). A global batch is cut into ``world_size x accumulation`` equal shards: micro-step
``m`` of rank ``r`` trains on shard ``m * world_size + r``, so the ranks' shards of one micro-step
are one contiguous piece of the global batch, and 1 process x accumulation A sees the same
micro-batches as A processes together. Augmentation is seeded per sample (`DenseDataset`), so
the union of the shards is, sample for sample, the batch one process would draw.

`DataPosition` (epoch, global batches done in it) is where a resumed run continues.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from .datasets import Batch, DenseDataset, collate

EPOCH_SEED_STRIDE = 100003  # the generator seed of an epoch is seed * stride + epoch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of `n` training samples in `epoch`: a permutation of ``range(n)``.

    Identical to what one process drew before sharding existed, through ``DataLoader(shuffle=
    True, generator=torch.Generator().manual_seed(seed * 100003 + epoch))``: the loader first took
    one int64 from that generator (its worker base seed), then its sampler a ``randperm``.
    """
    generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


@dataclass(frozen=True)
class BatchPlan:
    """Global batch = per-device batch x `world_size` x `accumulation`."""

    global_batch: int
    world_size: int = 1
    accumulation: int = 1

    def __post_init__(self) -> None:
        if self.accumulation < 1:
            raise ValueError(f"--accumulation: must be >= 1, got {self.accumulation}")
        if self.global_batch < 1:
            raise ValueError(f"--global-batch: must be >= 1, got {self.global_batch}")
        if self.global_batch % self.shards:
            raise ValueError(
                f"--global-batch {self.global_batch} is not divisible by world size "
                f"{self.world_size} x --accumulation {self.accumulation} = {self.shards}: the "
                "per-device batch must be a whole number of images"
            )

    @property
    def shards(self) -> int:
        """Micro-batches per optimiser step over all ranks."""
        return self.world_size * self.accumulation

    @property
    def per_device(self) -> int:
        """Images per micro-step on one rank."""
        return self.global_batch // self.shards

    def check_dataset(self, size: int) -> None:
        """A set smaller than one global batch is one partial batch; it must still give every
        shard an image."""
        if size < self.shards:
            raise ValueError(
                f"the training set has {size} image(s), fewer than world size {self.world_size}"
                f" x --accumulation {self.accumulation}: some process would get no image"
            )

    def epoch_batches(self, order: Sequence[int]) -> list[list[int]]:
        """The global batches of one epoch's order (incomplete last batch dropped)."""
        full = len(order) // self.global_batch
        if full == 0:
            return [list(order)]
        size = self.global_batch
        return [list(order[i * size : (i + 1) * size]) for i in range(full)]

    def shard(self, batch: Sequence[int], micro: int, rank: int) -> list[int]:
        """Rank `rank`'s indices of micro-step `micro` of a global batch (equal shards; a
        partial batch is cut as evenly as possible)."""
        index = micro * self.world_size + rank
        base, extra = divmod(len(batch), self.shards)
        start = index * base + min(index, extra)
        return list(batch[start : start + base + (index < extra)])


@dataclass
class DataPosition:
    """Where the data stream stands: `batch` global batches of `epoch` are done."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}


class ShardSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (index lists) of the given global batches, in order."""

    def __init__(self, batches: Sequence[Sequence[int]], plan: BatchPlan, rank: int) -> None:
        self.batches, self.plan, self.rank = batches, plan, rank

    def __len__(self) -> int:
        return len(self.batches) * self.plan.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            for micro in range(self.plan.accumulation):
                yield self.plan.shard(batch, micro, self.rank)


def global_batches(
    dataset: DenseDataset,
    plan: BatchPlan,
    *,
    seed: int,
    rank: int = 0,
    num_workers: int = 0,
    start: DataPosition | None = None,
) -> Iterator[tuple[DataPosition, list[Batch]]]:
    """Endless ``(position after it, this rank's micro-batches)`` per optimiser step, from
    `start` (default: the beginning). `set_epoch` re-seeds augmentation each epoch."""
    plan.check_dataset(len(dataset))
    epoch, first = (start.epoch, start.batch) if start is not None else (0, 0)
    while True:
        dataset.set_epoch(epoch)
        batches = plan.epoch_batches(epoch_order(len(dataset), seed, epoch))
        loader = DataLoader(
            dataset,
            batch_sampler=ShardSampler(batches[first:], plan, rank),
            collate_fn=collate,
            num_workers=num_workers,
            # the loader draws its worker base seed here, not from the global RNG
            generator=torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch),
        )
        micro_batches = iter(loader)
        for index in range(first, len(batches)):
            step = [next(micro_batches) for _ in range(plan.accumulation)]
            yield DataPosition(epoch, index + 1), step
        epoch, first = epoch + 1, 0
