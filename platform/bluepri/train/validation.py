"""Validation during training: sample images, each rank making its share.

The held-out loss validation also reports is `bluepri.denoising.fixed_noise_loss`, shared
with evaluation. Every rank does its share (rows i with i % world == rank, images likewise)
and one all-reduce / all-gather combines them: no rank idles at a barrier while rank 0
works, so validation cannot push the others into a collective timeout.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch.distributed as dist
from PIL import Image


def validation_images(
    generate_image: Callable[[int], Image.Image],
    count: int,
    *,
    rank: int,
    world_size: int,
) -> list[Image.Image]:
    """`count` images, each rank making every world_size-th one; all of them on every rank.

    `generate_image(i)` makes image i (seed offset i); PNG bytes travel through one
    all_gather_object, so the grid does not depend on which rank made which image.
    """
    mine = {i: png_bytes(generate_image(i)) for i in range(rank, count, world_size)}
    shares: list[dict[int, bytes]] = [mine]
    if dist.is_available() and dist.is_initialized() and world_size > 1:
        shares = [{} for _ in range(world_size)]
        dist.all_gather_object(shares, mine)
    merged = {i: data for share in shares for i, data in share.items()}
    return [Image.open(io.BytesIO(merged[i])).convert("RGB") for i in range(count)]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
