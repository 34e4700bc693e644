"""The denoising objective: noise (with offset), timesteps, targets and Min-SNR weights.

Everything random here draws from an explicit `torch.Generator`, never the global RNG, so a
step's noise depends only on the seed that made its generator: that is what lets a resumed
run reproduce an uninterrupted one. The generators, the prediction target and the held-out
loss's fixed draws are shared with evaluation: `bluepri.denoising`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `generator`, moved to `like`'s device."""
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A draw from the cached VAE posterior, `mean + std * eps` (`latent_dist.sample()`)."""
    return mean + std * randn(tuple(mean.shape), generator, mean)


def sample_noise(
    latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0
) -> torch.Tensor:
    """Gaussian noise like `latents`, plus a per-channel offset when `noise_offset` > 0.

    The offset (crosslabs' "diffusion with offset noise") lets the model learn to shift the
    mean brightness, which plain zero-mean noise at high timesteps never teaches it.
    """
    noise = randn(tuple(latents.shape), generator, latents)
    if noise_offset:
        noise = noise + noise_offset * randn((*latents.shape[:2], 1, 1), generator, latents)
    return noise


def sample_timesteps(
    batch_size: int, num_train_timesteps: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """One uniformly drawn training timestep per sample, as a long tensor."""
    steps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    return steps.long().to(device)


def min_snr_weights(snr: torch.Tensor, snr_gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, §3.4), as diffusers' scripts apply them.

    epsilon: min(snr, gamma) / snr; v-prediction: min(snr, gamma) / (snr + 1), because the
    velocity target already carries a (snr + 1) factor relative to the noise target.
    """
    clipped = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def denoising_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    *,
    scheduler,
    timesteps: torch.Tensor,
    snr_gamma: float | None,
) -> torch.Tensor:
    """Mean squared error in float32, Min-SNR weighted per sample when `snr_gamma` is set."""
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = min_snr_weights(snr, snr_gamma, scheduler.config.prediction_type)
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=list(range(1, per_sample.ndim)))
    return (per_sample * weights).mean()
