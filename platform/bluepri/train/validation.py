"""Validation during training: a held-out denoising loss and a grid of sample images.

The loss is measured on the cache's `val` rows with FIXED noise and timesteps: each row's
draws come from a generator seeded by its sample id and a constant, never by the run's
seed, so two runs (or two Tune trials) on the same cache are measured on identical inputs.
It uses the posterior mean latents and the unweighted MSE of the prediction target, so
runs with different `snr_gamma` stay comparable.

Every rank does its share (rows i with i % world == rank, images likewise) and one
all-reduce / all-gather combines them: no rank idles at a barrier while rank 0 works, so
validation cannot push the others into a collective timeout.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image

from bluepri.train.data import CacheSplit, collate
from bluepri.train.losses import derived_generator, per_sample_mse, prediction_target

VAL_SEED = "bluepri-validation-v1"  # fixed: the same inputs in every run and trial
VAL_DRAWS = 4  # (noise, timestep) pairs per held-out row; averages out timestep variance
VAL_BATCH = 8


def fixed_draws(
    sample_id: str, latent_shape: tuple[int, ...], num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`VAL_DRAWS` noises and timesteps for one row, a pure function of its sample id.

    Timesteps are stratified (one from each quarter of the schedule) so every measurement
    covers high and low noise alike.
    """
    generator = derived_generator(VAL_SEED, sample_id)
    noise = torch.randn((VAL_DRAWS, *latent_shape), generator=generator)
    width = num_train_timesteps / VAL_DRAWS
    offsets = torch.rand(VAL_DRAWS, generator=generator)
    timesteps = (
        ((torch.arange(VAL_DRAWS) + offsets) * width).long().clamp(max=num_train_timesteps - 1)
    )
    return noise, timesteps


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def validation_loss(
    val: CacheSplit,
    *,
    predict: Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor],
    noise_scheduler: Any,
    rank: int,
    world_size: int,
    device: torch.device,
) -> float | None:
    """Mean held-out MSE over every val row and draw; the same number on every rank.

    `predict(noisy_latents, timesteps, batch)` runs the UNet on a collated batch (the loop
    supplies it, so the conditioning matches training). None when the cache has no val rows.
    """
    if len(val) == 0:
        return None
    mine = list(range(rank, len(val), world_size))
    total = torch.zeros(2, dtype=torch.float64)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    with torch.no_grad():
        for start in range(0, len(mine), VAL_BATCH):
            rows = [val[i] for i in mine[start : start + VAL_BATCH]]
            batch = collate(rows)
            latents = batch["latents"].to(device)
            for draw in range(VAL_DRAWS):
                draws = [
                    fixed_draws(
                        val.sample_ids[r["index"]], tuple(latents.shape[1:]), num_train_timesteps
                    )
                    for r in rows
                ]
                noise = torch.stack([n[draw] for n, _ in draws]).to(device)
                timesteps = torch.stack([t[draw] for _, t in draws]).to(device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                pred = predict(noisy, timesteps, batch)
                target = prediction_target(noise_scheduler, latents, noise, timesteps)
                errors = per_sample_mse(pred, target)
                total += torch.tensor([errors.double().sum().item(), float(len(rows))])
    total = all_reduce_sum(total)
    return float(total[0] / total[1])


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
