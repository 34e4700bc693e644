"""Held-out denoising loss of a base model (+ adapter) on a cache's validation split.

The same measurement the training loop reports at each validation (fixed noise and
timesteps per sample id), so numbers from different runs, trials and days compare: the
tune stage re-measures the candidate and the champion with it before promoting.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bluepri.artifacts import has_adapter, read_adapter_info
from bluepri.config import TrainConfig, build_config
from bluepri.errors import BluepriError


def heldout_loss(
    cache_uri: str,
    base_ref: str,
    adapter: str | Path | None = None,
    *,
    prediction_type: str | None = None,
    vae_ref: str | None = None,
) -> float:
    """Mean held-out MSE of `base_ref` with `adapter` (a LoRA folder) on `cache_uri`'s val rows."""
    from bluepri.train.data import read_split
    from bluepri.train.loop import unet_prediction
    from bluepri.train.models import load_models
    from bluepri.train.validation import validation_loss

    val = read_split(cache_uri, "val")
    if len(val) == 0:
        raise BluepriError(f"cache {cache_uri} has no validation rows to measure on")
    config = build_config(
        TrainConfig,
        {
            "pretrained_model_name_or_path": base_ref,
            "pretrained_vae_model_name_or_path": vae_ref,
            "prediction_type": prediction_type,
            "cache": cache_uri,
        },
    )
    device = torch.device("cpu")
    models = load_models(config, device)
    if adapter is not None:
        folder = Path(adapter)
        models.pipe.load_lora_weights(str(folder))
        trained = read_adapter_info(str(folder)).trained_modules if has_adapter(str(folder)) else []
        for name in trained:
            if name != "unet":  # captions must then go through the adapted text encoders
                models.trainable[name] = getattr(models.pipe, name)
    return validation_loss(
        val,
        predict=lambda noisy, timesteps, batch: unet_prediction(models, noisy, timesteps, batch),
        noise_scheduler=models.noise_scheduler,
        rank=0,
        world_size=1,
        device=device,
    )
