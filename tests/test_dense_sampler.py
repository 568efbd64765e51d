"""The global-batch sampler: the order one process always drew, shards that add up to the global
batch for any world size x accumulation, a data position that continues the same order."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from vitsplit_vlm.dense.sampler import BatchPlan, DataPosition, epoch_order, global_batches
from vitsplit_vlm.playground.dense_sets import write_dense_sets


def test_epoch_order_is_the_order_one_process_drew_before():
    """Before sharding, `train` iterated ``DataLoader(shuffle=True, generator=...)``."""
    for n, seed, epoch, batch in ((10, 0, 0, 4), (7, 3, 2, 8), (33, 1, 5, 16)):
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        loader = DataLoader(range(n), batch_size=batch, shuffle=True, generator=generator,
                            drop_last=n >= batch)  # fmt: skip
        old = [b.tolist() for b in loader]
        assert BatchPlan(batch).epoch_batches(epoch_order(n, seed, epoch)) == old


@pytest.mark.parametrize("world,accumulation", [(1, 1), (2, 1), (1, 4), (2, 2), (4, 1)])
def test_shards_of_every_rank_and_micro_step_make_the_global_batch(world, accumulation):
    plan = BatchPlan(8, world, accumulation)
    assert plan.per_device == 8 // (world * accumulation)
    batch = list(range(100, 108))
    pieces = [[plan.shard(batch, m, r) for r in range(world)] for m in range(accumulation)]
    assert list(itertools.chain.from_iterable(itertools.chain(*pieces))) == batch
    for m, ranks in enumerate(pieces):  # one micro-step's shards: one contiguous piece
        assert sum(ranks, []) == BatchPlan(8, 1, accumulation).shard(batch, m, 0)
    partial = [1, 2, 3, 4, 5]  # a set smaller than one batch: as even as possible
    cut = [plan.shard(partial, m, r) for m in range(accumulation) for r in range(world)]
    assert sum(cut, []) == partial and max(map(len, cut)) - min(map(len, cut)) <= 1


def test_bad_plans_name_the_flag():
    with pytest.raises(ValueError, match=r"--global-batch 6 is not divisible by world size 4"):
        BatchPlan(6, 4)
    with pytest.raises(ValueError, match=r"world size 1 x --accumulation 4 = 4"):
        BatchPlan(6, 1, 4)
    with pytest.raises(ValueError, match="--accumulation: must be >= 1"):
        BatchPlan(4, 1, 0)
    with pytest.raises(ValueError, match="fewer than world size 2 x --accumulation 2"):
        BatchPlan(4, 2, 2).check_dataset(3)


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return write_dense_sets(tmp_path_factory.mktemp("dense") / "data", num_train=5, num_val=1).ade


def test_a_data_position_continues_the_same_stream(ade):
    from vitsplit_vlm.dense import transforms as T
    from vitsplit_vlm.dense.datasets import ADE20K

    ds = ADE20K(ade, "train", transforms=T.seg_train_pipeline((112, 28), (28, 28)))
    plan = BatchPlan(2)  # 5 images: 2 batches per epoch, one image dropped
    stream = global_batches(ds, plan, seed=7)
    first = [(pos, [m["path"] for b in micro for m in b.metas]) for pos, micro in
             itertools.islice(stream, 5)]  # fmt: skip
    assert [p for p, _ in first] == [DataPosition(0, 1), DataPosition(0, 2), DataPosition(1, 1),
                                     DataPosition(1, 2), DataPosition(2, 1)]  # fmt: skip
    resumed = global_batches(ds, plan, seed=7, start=DataPosition(0, 2))
    again = [(pos, [m["path"] for b in micro for m in b.metas]) for pos, micro in
             itertools.islice(resumed, 3)]  # fmt: skip
    assert again == first[2:]
    images = [b.images for _, micro in itertools.islice(global_batches(ds, plan, seed=7), 3)
              for b in micro]  # fmt: skip
    images_again = [b.images for _, micro in
                    itertools.islice(global_batches(ds, plan, seed=7, start=DataPosition(1, 0)), 1)
                    for b in micro]  # fmt: skip
    assert torch.equal(images[2], images_again[0])  # the same augmentation (epoch-seeded)
