"""Length-grouped samplers of LLaVA (``--group_by_modality_length``).

The sampler yields the *global* order of one epoch; the launcher (accelerate, under HF Trainer)
cuts it into consecutive batches of `batch_size` and deals batch ``k`` to rank ``k % world``.
A megabatch is ``batch_size * world_size`` indices sorted longest first and split into
`world_size` batches of similar total length, so the ranks (and accumulation steps, if
``world_size`` counts them, as LLaVA passes ``world_size * gradient_accumulation_steps``) get
batches of similar cost. With modality grouping every megabatch holds only image samples or only
text-only samples (lengths > 0 and < 0), except one mixed megabatch made of the two remainders.

All randomness comes from one generator seeded with ``seed + epoch`` (`set_epoch`), so every
rank computes the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_to_even_chunks(
    indices: Sequence[int], lengths: Sequence[int], num_chunks: int
) -> list[list[int]]:
    """Deal `indices` (longest first) into `num_chunks` chunks of equal count and similar total
    length: each index goes to the open chunk with the smallest total so far. If the count does
    not divide evenly, deal round-robin instead."""
    if len(indices) % num_chunks:
        return [list(indices[k::num_chunks]) for k in range(num_chunks)]
    size = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        k = min(range(num_chunks), key=lambda c: totals[c])
        chunks[k].append(index)
        totals[k] = float("inf") if len(chunks[k]) == size else totals[k] + lengths[index]
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """A random permutation cut into megabatches, each sorted longest first and split evenly."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch = batch_size * world_size
    out: list[int] = []
    for start in range(0, len(perm), megabatch):
        group = sorted(perm[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(group, lengths, world_size):
            out += chunk
    return out


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """LLaVA's modality grouping: `lengths` > 0 are image samples, < 0 text-only ones.

    Each modality is length-grouped on its own; its full megabatches are shuffled together; the
    two last (partial) megabatches are joined into one mixed group placed at the end, or, if it
    holds a full megabatch, that full megabatch goes first and the rest at the end. A dataset
    with one modality only is plainly length-grouped.
    """
    if any(n == 0 for n in lengths):
        raise ValueError("modality lengths must be non-zero: > 0 with an image, < 0 without")
    image = [i for i, n in enumerate(lengths) if n > 0]
    text = [i for i, n in enumerate(lengths) if n < 0]
    if not image or not text:
        return length_grouped_indices([abs(n) for n in lengths], batch_size, world_size, generator)
    megabatch = batch_size * world_size

    def megabatches(indices: list[int]) -> list[list[int]]:
        sub = [abs(lengths[i]) for i in indices]
        order = [indices[j] for j in length_grouped_indices(sub, batch_size, world_size, generator)]
        return [order[k : k + megabatch] for k in range(0, len(order), megabatch)]

    image_mb, text_mb = megabatches(image), megabatches(text)
    leftover = image_mb.pop() + text_mb.pop()
    full = image_mb + text_mb
    full = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
    if len(leftover) >= megabatch:
        full = [leftover[:megabatch], *full]
        leftover = leftover[megabatch:]
    if leftover:
        full.append(leftover)
    return [i for group in full for i in group]


class LengthGroupedSampler(Sampler[int]):
    """Yields every index once per epoch, grouped by length (and by modality if asked).

    `lengths`: per-sample lengths; with `group_by_modality`, signed modality lengths
    (`LazySupervisedDataset.modality_lengths`). `world_size`: batches dealt per megabatch
    (LLaVA: ``world_size * gradient_accumulation_steps``).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch_size: int,
        world_size: int = 1,
        group_by_modality: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(
                f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}"
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.group_by_modality = group_by_modality
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        group = (
            modality_length_grouped_indices if self.group_by_modality else length_grouped_indices
        )
        return iter(group(self.lengths, self.batch_size, self.world_size, generator))
