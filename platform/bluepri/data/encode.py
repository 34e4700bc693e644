"""Encode prepared pictures and captions into what the SDXL UNet trains on.

This module owns step 6 of the data stage: VAE latents and, for frozen text encoders, both
encoders' prompt embeddings, computed once into the cache instead of on every training
step. The pure functions take the models explicitly, so training and tests call them too:

- `encode_prompts` conditions exactly as SDXL does (diffusers' `encode_prompt` in both the
  pipeline and `train_text_to_image_lora_sdxl.py`): each tokenizer pads/truncates to 77
  tokens, each encoder's penultimate hidden state, concatenated on the last axis, and the
  pooled embedding from the LAST encoder.
- `encode_latents` stores the VAE posterior's mean and std (both times the scaling factor)
  and guards against fp16 overflow by recomputing non-finite samples in float32.

`EncodeBatch` wraps them for a Ray Data actor pool: models loaded once per actor, one numpy
batch (one picture size, grouped by bucket upstream) encoded per call; on CPU the VAE takes
it in pieces of at most CPU_VAE_PIXELS_PER_CALL pixels (large activations are slower in
bulk there).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from bluepri.data.columns import stack_column
from bluepri.data.transforms import to_tensor_input
from bluepri.errors import BluepriError
from bluepri.models.loading import from_pretrained, load_vae, parse_dtype, resolve_ref


def encode_prompts(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    captions: list[str],
    captions_2: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds (B, 77, d1+d2), pooled_prompt_embeds (B, d2)) as SDXL computes them.

    `captions_2` goes to the second encoder (the pipeline's `prompt_2`); by default both
    encoders read `captions`. Gradients are left to the caller: wrap the call in
    `torch.inference_mode()` for frozen encoders, leave it bare to train them.
    """
    if len(tokenizers) != len(text_encoders):
        raise ValueError("encode_prompts needs one tokenizer per text encoder")
    prompts = [captions, captions if captions_2 is None else captions_2]
    hidden_states, pooled = [], None
    for tokenizer, text_encoder, texts in zip(tokenizers, text_encoders, prompts, strict=False):
        ids = tokenizer(
            list(texts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        output = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
        # SDXL uses the penultimate layer ("clip skip 1" is built in) and the pooled,
        # projected embedding of the last encoder (OpenCLIP bigG's text_embeds).
        hidden_states.append(output.hidden_states[-2])
        pooled = output[0]
    return torch.cat(hidden_states, dim=-1), pooled


class Fp32Vae:
    """A float32 copy of a low-precision VAE, made on first use and then kept.

    fp16 SDXL VAEs overflow on some pictures (hence the fp16-fixed VAE); the copy is only
    paid for when that happens. Upcast from the loaded weights, so it is the same network
    with fp16-rounded weights, which is far below the posterior's own noise.
    """

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self._copy: Any = None

    def get(self) -> Any:
        if self.vae.dtype == torch.float32:
            return self.vae
        if self._copy is None:
            self._copy = copy.deepcopy(self.vae).to(torch.float32).eval()
        return self._copy


@dataclass
class Latents:
    """A batch's VAE posterior, float32, already times the scaling factor."""

    mean: torch.Tensor
    std: torch.Tensor
    recomputed: torch.Tensor  # bool per sample: recomputed in float32 by the NaN guard


def encode_latents(
    vae: Any,
    pixels: torch.Tensor,
    *,
    nan_guard: bool = True,
    fp32_vae: Fp32Vae | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean * scaling_factor, std * scaling_factor, samples recomputed in float32).

    `pixels` is N x 3 x H x W in [-1, 1]; the outputs are float32 N x 4 x H/8 x W/8.
    Training draws its own latents from the cached posterior, `mean + std * eps` with its
    own seeded noise (what `latent_dist.sample()` does), or uses `mean` (the mode).
    With `nan_guard`, samples whose latents are not finite are encoded again by a float32
    copy of the VAE; pass an `Fp32Vae` kept across calls to build that copy only once.
    """
    result = encode_latent_dist(vae, pixels, nan_guard=nan_guard, fp32_vae=fp32_vae)
    return result.mean, result.std, int(result.recomputed.sum())


def encode_latent_dist(
    vae: Any,
    pixels: torch.Tensor,
    *,
    nan_guard: bool = True,
    fp32_vae: Fp32Vae | None = None,
) -> Latents:
    """`encode_latents` with the per-sample recompute flags (the cache stores them)."""
    if fp32_vae is not None and fp32_vae.vae is not vae:
        raise ValueError("fp32_vae must wrap the same VAE that encodes")
    mean, std = _posterior(vae, pixels)
    bad = ~(_finite_rows(mean) & _finite_rows(std))
    if nan_guard and bad.any():
        if vae.dtype == torch.float32:
            raise BluepriError(
                f"the VAE gave non-finite latents in float32 for {int(bad.sum())} picture(s); "
                "the VAE weights or the input pixels are broken"
            )
        fallback = (fp32_vae or Fp32Vae(vae)).get()
        mean[bad], std[bad] = _posterior(fallback, pixels[bad.to(pixels.device)])
        if not (_finite_rows(mean) & _finite_rows(std)).all():
            raise BluepriError("the VAE gave non-finite latents even in float32")
    return Latents(mean=mean, std=std, recomputed=bad if nan_guard else torch.zeros_like(bad))


def _posterior(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior mean and std in float32 on the CPU-or-device of the VAE.

    `no_grad`, not `inference_mode`: the VAE is always frozen, and training may feed these
    latents straight into a UNet that records gradients, which inference tensors forbid.
    """
    scale = vae.config.scaling_factor
    with torch.no_grad():
        dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return dist.mean.float() * scale, dist.std.float() * scale


def _finite_rows(tensor: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(tensor).flatten(1).all(dim=1)


@dataclass
class TextEncoders:
    """SDXL's two tokenizers and text encoders, in pipeline order."""

    tokenizers: list[Any]
    encoders: list[Any]


def load_vae_for(
    base_ref: str, *, vae_ref: str | None, dtype: str = "float32", device: str = "cpu"
) -> Any:
    """The base's own VAE, or the replacement `vae_ref` (e.g. the fp16-fixed one)."""
    if vae_ref:
        return load_vae(vae_ref, dtype=dtype, device=device).eval()
    from diffusers import AutoencoderKL

    resolved = resolve_ref(base_ref, "base")
    vae = from_pretrained(
        AutoencoderKL, resolved, "base", subfolder="vae", dtype=parse_dtype(dtype)
    )
    return vae.to(device).eval()


def load_text_encoders(
    base_ref: str, *, dtype: str = "float32", device: str = "cpu"
) -> TextEncoders:
    """Both tokenizers and text encoders of an SDXL base, loaded on their own.

    Loading components rather than the whole pipeline keeps the UNet (10 GB in float32 for
    the real base) out of every encode actor.
    """
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    resolved = resolve_ref(base_ref, "base")
    torch_dtype = parse_dtype(dtype)
    tokenizers = [
        from_pretrained(CLIPTokenizer, resolved, "base", subfolder=name)
        for name in ("tokenizer", "tokenizer_2")
    ]
    encoders = [
        from_pretrained(loader, resolved, "base", subfolder=name, dtype=torch_dtype)
        .to(device)
        .eval()
        for loader, name in (
            (CLIPTextModel, "text_encoder"),
            (CLIPTextModelWithProjection, "text_encoder_2"),
        )
    ]
    return TextEncoders(tokenizers=tokenizers, encoders=encoders)


def pixel_rows(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The batch's pictures as float32 3 x H x W rows in [-1, 1].

    From `pixels` when present (a 4-D array, or an object array of 3-D rows), else from
    `image` (uint8 H x W x 3 rows) through the same `to_tensor_input` the transforms use.
    """
    if "pixels" in batch:
        return [np.asarray(row, dtype=np.float32) for row in batch["pixels"]]
    return [
        to_tensor_input(Image.fromarray(np.asarray(row, dtype=np.uint8))) for row in batch["image"]
    ]


# Pixels per VAE call on CPU. The VAE's activations at 512 px already outgrow the caches:
# per picture, one 512 px picture a call is the fastest (tiny VAE, one thread: ~150 ms a
# picture alone, ~190 in twos, ~235 in eights), while small pictures gain from sharing a
# call (128 px: ~4.6 ms alone, ~3.4 in eights). GPUs take the whole batch at once.
CPU_VAE_PIXELS_PER_CALL = 512 * 512


def vae_pixels_per_call(device: str) -> int | None:
    """The VAE call size limit for `device`: CPU_VAE_PIXELS_PER_CALL on CPU, else none."""
    return None if device.startswith("cuda") else CPU_VAE_PIXELS_PER_CALL


def encode_pixel_rows(
    vae: Any,
    rows: list[np.ndarray],
    fp32_vae: Fp32Vae | None = None,
    pixels_per_call: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per-row (latents, latents_std, recomputed 0/1), one VAE call per picture size, or
    per piece of at most `pixels_per_call` pixels (at least one picture).

    Rows of one size are encoded together; a batch that mixes aspect buckets still works,
    row i's result always lands back at row i.
    """
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_shape[row.shape].append(i)
    means: list[Any] = [None] * len(rows)
    stds: list[Any] = [None] * len(rows)
    flags = [0] * len(rows)
    for shape, same_size in by_shape.items():
        step = len(same_size)
        if pixels_per_call is not None:
            step = max(1, pixels_per_call // (shape[-2] * shape[-1]))
        for first in range(0, len(same_size), step):
            indices = same_size[first : first + step]
            pixels = torch.from_numpy(np.stack([rows[i] for i in indices]))
            latents = encode_latent_dist(vae, pixels, fp32_vae=fp32_vae)
            for j, i in enumerate(indices):
                means[i] = latents.mean[j].cpu().numpy()
                stds[i] = latents.std[j].cpu().numpy()
                flags[i] = int(latents.recomputed[j])
    return means, stds, flags


def caption_list(captions: Any) -> list[str]:
    """The `caption` column as str; a missing caption here is a bug upstream, not ""."""
    out = []
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(f"row {i} has caption {caption!r}; captioning must run first")
        out.append(caption)
    return out


class EncodeBatch:
    """Encodes a Ray Data numpy batch; models loaded once per actor, one call per batch.

    Use with `Dataset.map_batches(EncodeBatch, fn_constructor_args=(base_ref,),
    fn_constructor_kwargs={...}, compute=ActorPoolStrategy(...))`. Input: `pixels` (float32
    N x 3 x H x W in [-1, 1]) or, without it, `image` (uint8 H x W x 3 rows), and `caption`.
    Batches grouped by bucket encode in one VAE call; mixed sizes are encoded per size and
    give object-array latent columns. Output: the batch without `pixels` (the object store
    should not hold them twice; `image` is left for the caller to drop), plus `latents`,
    `latents_std`, `nan_recomputed` and, when `encode_text`, `prompt_embeds` and
    `pooled_prompt_embeds`, all float32 numpy, row i computed from row i only.
    """

    def __init__(
        self,
        base_ref: str,
        *,
        vae_ref: str | None = None,
        encode_text: bool = True,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        self.vae = load_vae_for(base_ref, vae_ref=vae_ref, dtype=dtype, device=device)
        self.fp32_vae = Fp32Vae(self.vae)
        self.pixels_per_call = vae_pixels_per_call(device)
        self.text = (
            load_text_encoders(base_ref, dtype=dtype, device=device) if encode_text else None
        )
        self.rows_encoded = 0
        self.batches_encoded = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {name: values for name, values in batch.items() if name != "pixels"}
        with torch.inference_mode():
            rows = pixel_rows(batch)
            means, stds, flags = encode_pixel_rows(
                self.vae, rows, self.fp32_vae, self.pixels_per_call
            )
            out["latents"], out["latents_std"] = stack_column(means), stack_column(stds)
            out["nan_recomputed"] = np.asarray(flags, dtype=np.int32)
            if self.text is not None:
                captions = caption_list(batch["caption"])
                embeds, pooled = encode_prompts(self.text.tokenizers, self.text.encoders, captions)
                out["prompt_embeds"] = embeds.float().cpu().numpy()
                out["pooled_prompt_embeds"] = pooled.float().cpu().numpy()
        self.rows_encoded += len(rows)
        self.batches_encoded += 1
        return out
