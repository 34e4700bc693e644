"""The training cache as each worker reads it, and the deterministic order of its rows.

Every worker reads the cache's rows itself (sorted by sample id, so the file layout does not
matter) and walks a per-epoch permutation drawn from (seed, epoch), sharded by rank. The
order is a pure function of those numbers, so a restarted worker finds its exact place from
(epoch, batch index) alone: no replayed epoch, no skipped sample. Ray Data's streaming split
would read faster at scale but its order is not reproducible across a restart.

Rows of different latent sizes (aspect-ratio buckets) never share a batch: the permutation
is grouped by size, each group padded to a multiple of the worker count by wrapping around
(as torch's DistributedSampler pads), and cut into global batches that ranks slice.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from bluepri import storage
from bluepri.errors import BluepriError

MANIFEST = "manifest.json"
SHARDS = "shards"
TENSOR_COLUMNS = ("latents", "latents_std", "prompt_embeds", "pooled_prompt_embeds", "time_ids")

BucketKey = tuple[int, int]  # target (height, width) in pixels


def read_manifest(cache_uri: str) -> dict[str, Any]:
    """The cache's manifest; a folder without one is not a (complete) cache."""
    manifest_uri = storage.join(cache_uri, MANIFEST)
    if not storage.is_file(manifest_uri):
        raise BluepriError(f"{cache_uri!r} is not a prepared cache (no {MANIFEST})")
    return storage.read_json(manifest_uri)


def shard_dataset(cache_uri: str):
    """The cache's shards as a pyarrow dataset (Ray's tensor columns come back as such)."""
    import pyarrow.dataset as pads
    import ray.data  # noqa: F401  (registers Ray's Arrow tensor extension types)

    fs, path = storage.resolve(storage.join(cache_uri, SHARDS))
    return pads.dataset(path, filesystem=fs, format="parquet")


def row_arrays(column) -> list[np.ndarray]:
    """One numpy array per row of a tensor column (fixed-shape or ragged)."""
    rows: list[np.ndarray] = []
    for chunk in column.chunks:
        rows.extend(np.asarray(row) for row in chunk.to_numpy())
    return rows


def bucket_key(time_ids: np.ndarray) -> BucketKey:
    """The target size recorded in SDXL's time ids: rows of one size can share a batch."""
    return int(time_ids[4]), int(time_ids[5])


@dataclass
class CacheIndex:
    """Split and size bucket of every row, sorted by sample id: what planning needs."""

    sample_ids: list[str]
    splits: list[str]
    buckets: list[BucketKey]
    columns: list[str]

    def split_buckets(self, split: str) -> list[BucketKey]:
        return [b for b, s in zip(self.buckets, self.splits, strict=True) if s == split]


def read_index(cache_uri: str) -> CacheIndex:
    """The small columns only: cheap enough for the driver to plan from."""
    dataset = shard_dataset(cache_uri)
    table = dataset.to_table(columns=["sample_id", "split", "time_ids"])
    ids = table.column("sample_id").to_pylist()
    splits = table.column("split").to_pylist()
    buckets = [bucket_key(t) for t in row_arrays(table.column("time_ids"))]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return CacheIndex(
        sample_ids=[ids[i] for i in order],
        splits=[splits[i] for i in order],
        buckets=[buckets[i] for i in order],
        columns=list(dataset.schema.names),
    )


class CacheSplit(torch.utils.data.Dataset):
    """The rows of one split, sorted by sample id, held in memory as numpy arrays."""

    def __init__(self, sample_ids: list[str], captions: list[str], arrays: dict[str, list]):
        self.sample_ids = sample_ids
        self.captions = captions
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def buckets(self) -> list[BucketKey]:
        return [bucket_key(t) for t in self.arrays["time_ids"]]

    @property
    def has_text_embeds(self) -> bool:
        return "prompt_embeds" in self.arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = {name: values[index] for name, values in self.arrays.items()}
        return {**row, "caption": self.captions[index], "index": index}


def read_split(cache_uri: str, split: str) -> CacheSplit:
    """All rows of `split` ('train' or 'val'), sorted by sample id."""
    import pyarrow.compute as pc

    dataset = shard_dataset(cache_uri)
    names = dataset.schema.names
    wanted = ["sample_id", "split", "caption", *(c for c in TENSOR_COLUMNS if c in names)]
    table = dataset.to_table(columns=wanted)
    table = table.filter(pc.equal(table.column("split"), split))
    ids = table.column("sample_id").to_pylist()
    order = sorted(range(len(ids)), key=ids.__getitem__)
    captions = table.column("caption").to_pylist()
    arrays = {}
    for name in wanted[3:]:
        rows = row_arrays(table.column(name))
        arrays[name] = [rows[i] for i in order]
    return CacheSplit([ids[i] for i in order], [captions[i] for i in order], arrays)


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch's arrays (one size bucket, so shapes agree) into float tensors."""
    batch: dict[str, Any] = {
        "caption": [r["caption"] for r in rows],
        "index": torch.tensor([r["index"] for r in rows]),
    }
    for name in TENSOR_COLUMNS:
        if name in rows[0]:
            batch[name] = torch.from_numpy(np.stack([r[name] for r in rows])).float()
    return batch


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
