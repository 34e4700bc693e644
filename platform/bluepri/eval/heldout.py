"""Held-out denoising loss of a base model and any number of adapters on a cache's val rows.

The same measurement the training loop reports at each validation (`bluepri.denoising`:
fixed noise and timesteps per sample id), so numbers from different runs, trials and days
compare. The base is loaded ONCE and every adapter is measured on it in turn (loaded into
the pipeline by name, as generation loads them); promotion and evaluation both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bluepri.artifacts import has_adapter, read_adapter_info
from bluepri.errors import BluepriError


def heldout_losses(
    cache_uri: str,
    base_ref: str,
    adapters: Sequence[str | Path | None],
    *,
    prediction_type: str | None = None,
    vae_ref: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> list[float]:
    """Mean held-out MSE of `base_ref` with each of `adapters` (LoRA folders; None: the base
    alone) on `cache_uri`'s val rows, in order. An adapter's own prediction type (its
    adapter.json) wins over `prediction_type`, as it was trained with it."""
    from bluepri.denoising import (
        fixed_noise_loss,
        load_denoising_models,
        read_split,
        unet_prediction,
    )
    from bluepri.generate.adapters import AdapterCache, adapter_folder
    from bluepri.models.loading import parse_dtype

    val = read_split(cache_uri, "val")
    if len(val) == 0:
        raise BluepriError(f"cache {cache_uri} has no validation rows to measure on")
    models = load_denoising_models(
        base_ref,
        weight_dtype=parse_dtype(dtype),
        device=torch.device(device),
        vae_ref=vae_ref,
        prediction_type=prediction_type,
    )
    default_prediction = models.noise_scheduler.config.prediction_type
    loaded = AdapterCache(models.pipe, capacity=1)  # one at a time: memory stays one adapter
    losses = []
    for adapter in adapters:
        info = read_adapter_info(str(adapter)) if adapter and has_adapter(str(adapter)) else None
        resolved = adapter_folder(str(adapter)) if adapter is not None else None
        loaded.activate(resolved)
        # Captions go through the text encoders the adapter changed, else come from the cache.
        models.text_adapted = {m for m in (info.trained_modules if info else []) if m != "unet"}
        models.noise_scheduler.register_to_config(
            prediction_type=(info.prediction_type if info else None) or default_prediction
        )
        loss = fixed_noise_loss(
            val,
            predict=lambda noisy, timesteps, batch: unet_prediction(
                models, noisy, timesteps, batch
            ),
            noise_scheduler=models.noise_scheduler,
            device=models.device,
        )
        losses.append(float(loss))
    return losses


def heldout_loss(
    cache_uri: str,
    base_ref: str,
    adapter: str | Path | None = None,
    *,
    prediction_type: str | None = None,
    vae_ref: str | None = None,
) -> float:
    """Mean held-out MSE of `base_ref` with one `adapter` (a LoRA folder; None: the base)."""
    return heldout_losses(
        cache_uri, base_ref, [adapter], prediction_type=prediction_type, vae_ref=vae_ref
    )[0]
