"""The training cache as each worker reads it, and the deterministic order of its rows.

The cache's format and reader belong to `bluepri.artifacts`, its rows as a torch Dataset to
`bluepri.denoising` (evaluation reads them too). Every worker reads the cache's rows itself
(sorted by sample id, so the file layout does not matter) and walks a per-epoch permutation
drawn from (seed, epoch), sharded by rank. The order is a pure function of those numbers, so
a restarted worker finds its exact place from (epoch, batch index) alone: no replayed epoch,
no skipped sample. Ray Data's streaming split would read faster at scale but its order is
not reproducible across a restart.

Rows of different latent sizes (aspect-ratio buckets) never share a batch: the permutation
is grouped by size, each group padded to a multiple of the worker count by wrapping around
(as torch's DistributedSampler pads), and cut into global batches that ranks slice.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from pydantic import BaseModel

from bluepri.artifacts import BucketKey

# -- order ------------------------------------------------------------------------------------


def epoch_batches(
    buckets: list[BucketKey],
    *,
    seed: int,
    epoch: int,
    world_size: int,
    rank: int,
    batch_size: int,
) -> list[list[int]]:
    """This rank's batches (row indices) for `epoch`, a pure function of the arguments.

    Each global batch holds up to `batch_size * world_size` rows of one bucket, a multiple of
    `world_size`; rank r takes every world_size-th row, so ranks always get equal batches.
    """
    rng = np.random.default_rng([seed, epoch])
    by_bucket: dict[BucketKey, list[int]] = defaultdict(list)
    for index in rng.permutation(len(buckets)).tolist():
        by_bucket[buckets[index]].append(index)
    global_batches: list[list[int]] = []
    step = batch_size * world_size
    for key in sorted(by_bucket):
        rows = by_bucket[key]
        padded = math.ceil(len(rows) / world_size) * world_size
        rows = [rows[i % len(rows)] for i in range(padded)]
        global_batches.extend(rows[i : i + step] for i in range(0, len(rows), step))
    if len(by_bucket) > 1:  # interleave buckets instead of training on one size at a time
        global_batches = [global_batches[i] for i in rng.permutation(len(global_batches))]
    return [batch[rank::world_size] for batch in global_batches]


def batches_per_epoch(buckets: list[BucketKey], world_size: int, batch_size: int) -> int:
    """How many batches each rank sees per epoch (the same every epoch)."""
    counts: dict[BucketKey, int] = defaultdict(int)
    for key in buckets:
        counts[key] += 1
    step = batch_size * world_size
    return sum(math.ceil(math.ceil(n / world_size) * world_size / step) for n in counts.values())


class TrainPlan(BaseModel):
    """The run's shape, computed once on the driver and handed to every worker."""

    cache_uri: str
    cache_fingerprint: str
    resolution: int
    num_train: int
    num_val: int
    has_text_embeds: bool
    world_size: int
    train_batch_size: int
    gradient_accumulation_steps: int
    batches_per_epoch: int
    updates_per_epoch: int
    max_train_steps: int
    num_epochs: int
    seed: int
    learning_rate: float
    text_encoder_lr: float
    text_encoder_2_lr: float


def accumulation_groups(num_batches: int, accumulation: int, start: int = 0) -> list[range]:
    """Batch-index ranges that end in one optimiser step; the last one of an epoch may be
    shorter (the epoch's end forces a step, as accelerate does)."""
    return [
        range(begin, min(begin + accumulation, num_batches))
        for begin in range(start, num_batches, accumulation)
    ]
