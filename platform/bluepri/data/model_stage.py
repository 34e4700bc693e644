"""The build's model step (captions, then latents and prompt embeddings) in ONE process.

Captioning and encoding as two actor pools cost two fresh processes, each importing torch,
transformers and diffusers and loading its models (seconds, before the first picture), plus
an object-store hop between them. On CPU, where the two share the same cores anyway, this
module runs both in one place:

- `CaptionAndEncode`: one batch captioned (where asked) and encoded, the `image` column
  dropped. A callable class, so it also serves as a Ray Data actor (models loaded once).
- `run_in_driver`: the same step in the driver process, fed by the streaming read/transform
  tasks (`iter_batches`), each encoded batch written as one parquet shard. No model process
  to wait for: the driver starts encoding at once, and `ModelHelper` actors (when more than
  one model worker is asked for) take batches as soon as they have loaded their models.

Both give the rows the two-pool pipeline gives: `CaptionBatch` then `EncodeBatch`, the same
functions, batch sizes and torch thread count.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from bluepri import storage
from bluepri.data.caption import GIVEN, CaptionBatch
from bluepri.data.columns import object_column
from bluepri.data.encode import EncodeBatch


def given_captions(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with every caption marked as given (no captioner runs)."""
    return {**batch, "caption_source": object_column([GIVEN] * len(batch["caption"]))}


def row_slice(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: values[start:stop] for name, values in batch.items()}


def concat_batches(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of batches with the same columns (ragged columns stay object)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for name in parts[0]:
        columns = [part[name] for part in parts]
        if any(c.dtype == object for c in columns) or len({c.shape[1:] for c in columns}) > 1:
            out[name] = object_column(row for column in columns for row in column)
        else:
            out[name] = np.concatenate(columns)
    return out


class CaptionAndEncode:
    """Caption (in pieces of `caption_batch_size`) then encode one batch; models loaded once.

    `caption` holds `CaptionBatch`'s keyword arguments, or is None when every row keeps its
    given caption; `encode` holds `EncodeBatch`'s. The output has no `image` column.
    """

    def __init__(
        self, caption: dict[str, Any] | None, encode: dict[str, Any], caption_batch_size: int
    ) -> None:
        self.captioner = CaptionBatch(**caption) if caption is not None else None
        self.encoder = EncodeBatch(**encode)
        self.caption_batch_size = caption_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.captioner is None:
            captioned = given_captions(batch)
        else:
            rows, step = len(batch["image"]), self.caption_batch_size
            captioned = concat_batches(
                [self.captioner(row_slice(batch, i, i + step)) for i in range(0, rows, step)]
            )
        encoded = self.encoder(captioned)
        encoded.pop("image", None)
        return encoded


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads set to `count` for the block, then put back: the driver
    computes with the thread count a model actor would have (Ray gives one 1 thread a CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_shard(batch: dict[str, np.ndarray], shards_uri: str, name: str) -> None:
    """One numpy batch as one parquet file, in the Arrow types Ray Data's own writer gives
    (its tensor extension columns): the cache reads the same either way."""
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    table = BlockAccessor.batch_to_block(batch)
    fs, path = storage.resolve(shards_uri)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, f"{path}/{name}", filesystem=fs)


class ModelHelper:
    """A Ray actor that runs `CaptionAndEncode` beside the driver and writes its own shards."""

    def __init__(self, stage_kwargs: dict[str, Any], shards_uri: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.stage = CaptionAndEncode(**stage_kwargs)
        self.shards_uri = shards_uri

    def ready(self) -> int:
        return 0

    def encode_and_write(self, batch: dict[str, np.ndarray], name: str) -> int:
        encoded = self.stage(batch)
        write_shard(encoded, self.shards_uri, name)
        return len(encoded["sample_id"])


def start_helpers(
    count: int,
    stage_kwargs: dict[str, Any],
    shards_uri: str,
    threads: int,
    resources: dict[str, float],
) -> list[Any]:
    """`count` ModelHelper actors (each with `resources`: num_cpus, num_gpus), loading their
    models while the driver already works."""
    if count <= 0:
        return []
    import ray

    actor = ray.remote(**resources)(ModelHelper)
    return [actor.remote(stage_kwargs, shards_uri, threads) for _ in range(count)]


# Batches a helper may hold at once: the next is already there when it finishes one, while
# the driver is busy with a batch of its own.
HELPER_QUEUE = 2


def run_in_driver(
    ds: Any,
    stage: Any,
    shards_uri: str,
    *,
    batch_size: int,
    threads: int,
    helpers: list[Any] | None = None,
) -> int:
    """Stream `ds` through `stage` in this process, one shard per batch; rows written.

    The read/transform tasks keep running in Ray while this process encodes (Ray Data
    prefetches the next batch), so decoding and the models overlap as in the actor pipeline.
    `helpers` (ModelHelper actors) take a batch whenever one has fewer than HELPER_QUEUE
    in hand; until they have loaded their models, and whenever all are that busy, the
    driver encodes the batch itself, so a helper's start-up never holds the stream up. A
    shard's name is its batch number: the same rows in the same shard whoever encodes them.
    """
    import ray

    prefix = uuid.uuid4().hex[:12]
    idle: list[Any] = []  # one entry per batch a helper can take now
    starting = {helper.ready.remote(): helper for helper in helpers or []}
    working: dict[Any, Any] = {}  # a batch's result -> the helper encoding it
    written = 0
    try:
        with torch_threads(threads):
            batches = ds.iter_batches(batch_size=batch_size, batch_format="numpy")
            for index, batch in enumerate(batches):
                if not len(batch.get("sample_id", ())):
                    continue  # every row of its block changed since the scan
                name = f"{prefix}_{index:06d}.parquet"
                for pending, slots in ((starting, HELPER_QUEUE), (working, 1)):
                    if pending:
                        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                        for ref in done:
                            written += ray.get(ref)
                            idle.extend([pending.pop(ref)] * slots)
                if idle:
                    helper = idle.pop()
                    working[helper.encode_and_write.remote(batch, name)] = helper
                    continue
                encoded = stage(batch)
                write_shard(encoded, shards_uri, name)
                written += len(encoded["sample_id"])
            # Helpers still loading their models are not waited for: the work is done.
            written += sum(ray.get(list(working)))
    finally:
        for helper in helpers or []:
            ray.kill(helper)
    return written
