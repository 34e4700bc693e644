"""The denoising measurement training and evaluation share: the cache's rows as tensors, SDXL's
conditioning of the UNet, and the fixed-noise held-out loss.

Training reports the held-out loss at each validation; evaluation and promotion measure
base and adapters with the same function on the same rows, so their numbers compare. Both
import it from here, neither from the other's internals.

The held-out loss uses FIXED noise and timesteps: each row's draws come from a generator
seeded by its sample id and a constant, never by a run's seed, so two runs (or two Tune
trials, or tonight's champion and last week's) on the same cache are measured on identical
inputs. It uses the posterior mean latents and the unweighted MSE of the prediction
target, so runs with different `snr_gamma` stay comparable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bluepri.artifacts import TENSOR_COLUMNS, BucketKey, bucket_key, read_split_rows

VAL_SEED = "bluepri-validation-v1"  # fixed: the same inputs in every run, trial and evaluation
VAL_DRAWS = 4  # (noise, timestep) pairs per held-out row; averages out timestep variance
VAL_BATCH = 16  # (row, draw) pairs per forward pass
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")


# -- the cache's rows --------------------------------------------------------------------------


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
    """All rows of `split` ('train' or 'val'), sorted by sample id, as a torch Dataset."""
    rows = read_split_rows(cache_uri, split)
    return CacheSplit(rows.sample_ids, rows.captions, rows.arrays)


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


# -- the models and the UNet's prediction ----------------------------------------------------


@dataclass
class DenoisingModels:
    """A loaded SDXL base (frozen parts in the weight dtype) and the DDPM noise schedule.

    `text_adapted` names the text encoders that carry LoRA weights (trained or loaded): their
    captions must go through them, not come from the cache's frozen embeddings.
    """

    pipe: Any  # StableDiffusionXLPipeline
    noise_scheduler: Any  # DDPMScheduler: add_noise, velocity and SNR of the training process
    weight_dtype: torch.dtype
    device: torch.device
    text_adapted: set[str] = field(default_factory=set)

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def tokenizers(self) -> list[Any]:
        return [self.pipe.tokenizer, self.pipe.tokenizer_2]

    @property
    def text_encoders(self) -> list[Any]:
        return [self.pipe.text_encoder, self.pipe.text_encoder_2]

    def autocast(self) -> AbstractContextManager:
        """Autocast for fp16/bf16; plain float32 otherwise."""
        if self.weight_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)


def load_denoising_models(
    base_ref: str,
    *,
    weight_dtype: torch.dtype,
    device: torch.device,
    vae_ref: str | None = None,
    prediction_type: str | None = None,
    into: type[DenoisingModels] = DenoisingModels,
) -> DenoisingModels:
    """SDXL base (+ replacement VAE) in `weight_dtype`, frozen, and its DDPM noise schedule;
    `prediction_type` overrides the schedule's (and the sampler's) parameterisation."""
    from diffusers import DDPMScheduler

    from bluepri.models.loading import from_pretrained, load_base, quiet_progress_bars, resolve_ref

    quiet_progress_bars()
    pipe = load_base(base_ref, dtype=weight_dtype, device=str(device), vae_ref=vae_ref)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    resolved = resolve_ref(base_ref, "base")
    noise_scheduler = from_pretrained(DDPMScheduler, resolved, "base", subfolder="scheduler")
    if prediction_type is not None:
        # Train, measure and sample with the same parameterisation.
        noise_scheduler.register_to_config(prediction_type=prediction_type)
        pipe.scheduler.register_to_config(prediction_type=prediction_type)
    return into(
        pipe=pipe, noise_scheduler=noise_scheduler, weight_dtype=weight_dtype, device=device
    )


def text_conditioning(
    models: DenoisingModels, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled): from the cache when the encoders are as cached, else encoded
    now (with gradients when training them)."""
    from bluepri.data.encode import encode_prompts

    if "prompt_embeds" in batch and not models.text_adapted:
        return batch["prompt_embeds"].to(models.device), batch["pooled_prompt_embeds"].to(
            models.device
        )
    with torch.set_grad_enabled(bool(models.text_adapted) and torch.is_grad_enabled()):
        return encode_prompts(models.tokenizers, models.text_encoders, list(batch["caption"]))


def unet_prediction(
    models: DenoisingModels,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    batch: dict[str, Any],
) -> torch.Tensor:
    """The UNet's output for noisy latents under SDXL's text and size conditioning."""
    dtype = models.weight_dtype
    with models.autocast():
        prompt_embeds, pooled = text_conditioning(models, batch)
        added = {
            "time_ids": batch["time_ids"].to(models.device, dtype=dtype),
            "text_embeds": pooled.to(dtype),
        }
        return models.unet(
            noisy_latents.to(dtype),
            timesteps,
            prompt_embeds.to(dtype),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


# -- targets and the fixed-noise loss -------------------------------------------------------


def derived_generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded from a hash of `parts` (e.g. seed, step, micro-batch, rank).

    Hashing keeps neighbouring seeds independent (seed 1 step 2 and seed 2 step 1 differ);
    a CPU generator gives the same numbers on every device.
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def prediction_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {kind!r}")


def per_sample_mse(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Unweighted MSE per sample: the held-out metric, comparable across snr_gamma values."""
    error = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    return error.mean(dim=list(range(1, error.ndim)))


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


def fixed_noise_loss(
    val: CacheSplit,
    *,
    predict: Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor],
    noise_scheduler: Any,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> float | None:
    """Mean held-out MSE over every val row and draw; the same number on every rank.

    `predict(noisy_latents, timesteps, batch)` runs the UNet on a collated batch (so the
    conditioning matches training). Every rank measures rows i with i % world == rank and
    one all-reduce combines them. None when there are no rows.
    """
    if len(val) == 0:
        return None
    device = device or torch.device("cpu")
    mine = list(range(rank, len(val), world_size))
    # Every (row, draw) pair of this rank, VAL_BATCH to a forward pass: on small sets one
    # pass instead of one per draw (per-pass overhead dominates a small UNet's forward).
    pairs = [(index, draw) for index in mine for draw in range(VAL_DRAWS)]
    total = torch.zeros(2, dtype=torch.float64)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    with torch.no_grad():
        for start in range(0, len(pairs), VAL_BATCH):
            chunk = pairs[start : start + VAL_BATCH]
            rows = [val[index] for index, _ in chunk]
            batch = collate(rows)
            latents = batch["latents"].to(device)
            drawn = {
                index: fixed_draws(
                    val.sample_ids[index], tuple(latents.shape[1:]), num_train_timesteps
                )
                for index in dict.fromkeys(index for index, _ in chunk)
            }
            noise = torch.stack([drawn[index][0][draw] for index, draw in chunk]).to(device)
            timesteps = torch.stack([drawn[index][1][draw] for index, draw in chunk]).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            pred = predict(noisy, timesteps, batch)
            target = prediction_target(noise_scheduler, latents, noise, timesteps)
            errors = per_sample_mse(pred, target)
            total += torch.tensor([errors.double().sum().item(), float(len(chunk))])
    total = all_reduce_sum(total)
    return float(total[0] / total[1])
