"""Pretrain the tiny drawing models, `tiny:drawing-base` and `tiny:drawing-refiner`.

The random `tiny:base` draws noise, so a LoRA trained on it has nothing visible to change.
This recipe trains the same tiny SDXL architectures (models/tiny.py) on synthetic drawings
(data/synth.py) until the base draws plain drawings on white paper: a blueprint LoRA then
turns them into blueprints, the paper's effect at toy scale. Three stages, one loop each:

a. VAE, on both styles: pixel MSE + L1 and a small KL; then its latents centred (zero mean,
   unit variance per channel, folded into its 1x1 quant convs) and `scaling_factor = 1`.
b. Base UNet, full weights, on paper drawings only, conditioned exactly as SDXL: the
   penultimate hidden states of both (frozen, random: tiny:base's own) text encoders,
   TE2's pooled embedding and 6 time ids; epsilon prediction on the DDPM forward process
   of the tiny scheduler's betas.
c. Refiner UNet on the low-noise end of the schedule (where `denoising_start=0.8` hands
   over), conditioned on TE2 alone and 5 time ids with an aesthetic score of 6.

The drawings are rendered once into memory; the captions' embeddings and the VAE latents
are computed once; batches are sampled on the device with random flips. One seed drives it
all, and on CPU with a fixed thread count the weight files are identical run to run. No
Ray: it runs wherever torch, diffusers and transformers do.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from bluepri.config import PretrainConfig, SynthConfig
from bluepri.data.encode import encode_prompts
from bluepri.data.synth import drawing
from bluepri.errors import BluepriError
from bluepri.models.loading import TINY_SEED
from bluepri.models.tiny import (
    DRAWING_NAMES,
    RECIPE_NAME,
    build_tiny,
    file_digests,
    tiny_base_unet,
    tiny_refiner_unet,
    tiny_scheduler,
    tiny_vae,
)
from bluepri.storage import output_folder

Log = Callable[[str], None]
AESTHETIC_SCORE = 6.0  # the refiner's conditioning for good pictures (the pipeline's default)
PREVIEW_NAME = "preview.png"
PREVIEW_PROMPTS = (
    "a drawing of a floor plan of a house with four rooms",
    "a drawing of a spur gear with twenty teeth",
    "a drawing of a side view of a sports car with two doors",
    "a drawing of a jet airliner, top view",
)
ENCODE_CHUNK = 256  # pictures or captions per encoder call outside the training loops


class StageResult(BaseModel):
    """One stage's run: its loss curve (mean per `log_every` steps) and time."""

    steps: int
    final_loss: float
    history: list[tuple[int, float]]
    seconds: float


class PretrainResult(BaseModel):
    """What `pretrain_tiny` wrote."""

    out: str
    base: str
    refiner: str
    recipe: str
    preview: str | None
    scaling_factor: float
    stages: dict[str, StageResult]
    seconds: float


@dataclass
class Pool:
    """The pre-rendered drawings: uint8 N x 3 x R x R per style on the device, and captions.

    Both styles come from the same seed, so drawing i is the same sheet in either.
    """

    paper: torch.Tensor
    blueprint: torch.Tensor
    captions: list[str]


@dataclass
class Conditioning:
    """Per-drawing text conditioning, and what a dropped caption is replaced by."""

    embeds: torch.Tensor  # N x 77 x D
    pooled: torch.Tensor  # N x D2
    empty_embeds: torch.Tensor  # 1 x 77 x D
    empty_pooled: torch.Tensor  # 1 x D2


@dataclass
class LatentPool:
    """The VAE posterior of every drawing, unflipped [0] and flipped [1], already scaled."""

    mean: torch.Tensor  # 2 x N x 4 x h x w
    std: torch.Tensor


def pretrain_tiny(config: PretrainConfig, log: Log = print) -> PretrainResult:
    """Train the tiny drawing VAE, base and refiner; save both pipelines and RECIPE.json."""
    started = time.monotonic()
    out = output_folder(config.out)
    with reproducible(config) as device:
        templates = build_templates(out / ".templates")
        pool = render_pool(config, device, log)
        tokenizers, encoders = load_text_encoders(templates / "base", device)
        vae, vae_stage = train_vae(config, pool, device, log)
        latents, scaling_factor = encode_pool(vae, pool.paper, pool.blueprint, log)
        base_cond, refiner_cond = encode_captions(tokenizers, encoders, pool.captions)
        samples = torch.cat([pool.paper[:2], pool.blueprint[2:4]]).cpu()
        del pool, encoders
        base_unet, base_stage = train_unet("base", config, latents, base_cond, device, log)
        refiner_unet, refiner_stage = train_unet(
            "refiner", config, latents, refiner_cond, device, log
        )
        save_pipelines(config, out, templates, vae, base_unet, refiner_unet)
        shutil.rmtree(templates, ignore_errors=True)
        stages = {"vae": vae_stage, "base": base_stage, "refiner": refiner_stage}
        recipe = write_recipe(config, out, device, scaling_factor, stages, started)
        preview = write_preview(config, out, samples, device, log) if config.preview else None
    log(f"pretrain-tiny: done in {time.monotonic() - started:.0f}s -> {out}")
    return PretrainResult(
        out=str(out),
        base=str(out / DRAWING_NAMES[0]),
        refiner=str(out / DRAWING_NAMES[1]),
        recipe=str(recipe),
        preview=str(preview) if preview else None,
        scaling_factor=scaling_factor,
        stages=stages,
        seconds=time.monotonic() - started,
    )


# ---------------------------------------------------------------- setup


@contextmanager
def reproducible(config: PretrainConfig) -> Iterator[torch.device]:
    """Seeded, deterministic torch on the chosen device; torch's process-wide settings are
    restored afterwards, so a caller (a test session) keeps its own."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BluepriError("--device cuda was asked for, but torch sees no CUDA device")
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    if config.device == "cuda":
        # cuBLAS is only deterministic with a fixed workspace, set before it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # TF32 for speed: the UNet's tolerance of noise is far larger than TF32's rounding.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.seed)
    try:
        yield torch.device(config.device)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3:]


def build_templates(folder: Path) -> Path:
    """The random tiny base and refiner (tiny:base's seed): their tokenizers and text
    encoders are kept as they are, their VAE and UNets replaced by the trained ones."""
    shutil.rmtree(folder, ignore_errors=True)
    for name in ("base", "refiner"):
        build_tiny(name, folder / name, seed=TINY_SEED)
    return folder


def render_pool(config: PretrainConfig, device: torch.device, log: Log) -> Pool:
    """`pool_size` drawings per style, square at `resolution`, rendered in parallel."""
    workers = min(config.workers or os.cpu_count() or 1, config.pool_size)
    log(
        f"pretrain-tiny: rendering {config.pool_size} paper + {config.pool_size} blueprint "
        f"drawings at {config.resolution} px ({workers} workers)"
    )
    sets = [synth_config(config, style) for style in ("paper", "blueprint")]
    if workers <= 1:
        rendered = [[drawing(i, s) for i in range(config.pool_size)] for s in sets]
    else:
        # spawn, not fork: the parent holds torch's threads (and maybe CUDA), children need
        # only PIL and numpy.
        chunk = max(1, config.pool_size // (4 * workers))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            rendered = [
                list(pool.map(drawing, range(config.pool_size), repeat(s), chunksize=chunk))
                for s in sets
            ]
    paper, blueprint = (pixels_u8([image for image, _ in r], device) for r in rendered)
    captions = [caption or "" for _, caption in rendered[0]]
    return Pool(paper=paper, blueprint=blueprint, captions=captions)


def synth_config(config: PretrainConfig, style: str) -> SynthConfig:
    side = config.resolution
    return SynthConfig(
        out_dir="unused",
        num_images=config.pool_size,
        seed=config.seed,
        uncaptioned_fraction=0.0,
        min_side=side,
        max_side=side,
        style=style,
    )


def pixels_u8(images: Sequence, device: torch.device) -> torch.Tensor:
    stacked = np.stack([np.asarray(image.convert("RGB")) for image in images])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(device)


def load_text_encoders(folder: Path, device: torch.device) -> tuple[list, list]:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizers = [CLIPTokenizer.from_pretrained(folder / n) for n in ("tokenizer", "tokenizer_2")]
    encoders = [
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
        CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
    ]
    return tokenizers, [e.to(device).eval().requires_grad_(False) for e in encoders]


# ---------------------------------------------------------------- batches and bookkeeping


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


def sample_pixels(pixels: torch.Tensor, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """A random batch, each drawing mirrored left-right with probability 1/2, in [-1, 1]."""
    idx = torch.randint(len(pixels), (batch_size,), generator=gen, device=pixels.device)
    flip = torch.rand(batch_size, generator=gen, device=pixels.device) < 0.5
    x = to_unit_range(pixels[idx])
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def stage_generator(config: PretrainConfig, device: torch.device, stage: int) -> torch.Generator:
    """Each stage's own random stream, so one stage's settings don't move another's draws."""
    return torch.Generator(device=device).manual_seed(config.seed * 1000 + stage)


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int):
    """Linear warm-up, then a cosine decay to a tenth of the learning rate."""
    warmup = min(warmup, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(params: list[torch.nn.Parameter], lr: float, device: torch.device):
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=device.type == "cuda")


class LossLog:
    """Per-step losses kept on the device (no sync per step); every `every` steps their
    mean becomes a history point and a log line."""

    def __init__(self, stage: str, steps: int, every: int, device: torch.device, log: Log):
        self.stage, self.steps, self.every, self.log = stage, steps, every, log
        self.losses = torch.zeros(steps, device=device)
        self.history: list[tuple[int, float]] = []
        self.started = time.monotonic()

    def record(self, step: int, loss: torch.Tensor, lr: float) -> None:
        self.losses[step] = loss.detach()
        done = step + 1
        if done % self.every == 0 or done == self.steps:
            start = self.history[-1][0] if self.history else 0
            mean = float(self.losses[start:done].mean())
            self.history.append((done, mean))
            elapsed = time.monotonic() - self.started
            self.log(
                f"{self.stage}: step {done}/{self.steps} loss {mean:.5f} lr {lr:.2e} "
                f"({elapsed:.0f}s)"
            )

    def result(self) -> StageResult:
        return StageResult(
            steps=self.steps,
            final_loss=self.history[-1][1],
            history=self.history,
            seconds=round(time.monotonic() - self.started, 2),
        )


def graphed(
    make_call: Callable[[], torch.nn.Module],
    sample_args: tuple[torch.Tensor, ...],
    config: PretrainConfig,
    log: Log,
) -> torch.nn.Module:
    """`make_call()`, with its forward and backward captured as CUDA graphs on a GPU.

    A tiny model's step is a few thousand kernel launches that cost more than their work:
    on a sandboxed H200 a base-UNet step took ~110 ms of launching for ~16 ms of GPU time.
    The capture is checked against the eager call once; if it fails or disagrees, the run
    goes on eagerly (slower, same recipe).
    """
    eager = make_call()
    if config.device != "cuda" or not config.cuda_graphs:
        return eager
    try:
        fast = torch.cuda.make_graphed_callables(make_call(), sample_args, allow_unused_input=True)
        with torch.no_grad():
            expected, got = eager(*sample_args)[0], fast(*sample_args)[0]
        error = float((got - expected).abs().max())
        if not error <= 1e-3 * (1.0 + float(expected.abs().max())):
            raise RuntimeError(f"graph output differs from eager by {error:.3g}")
    except Exception as err:  # any capture failure: the eager path is always correct
        log(f"CUDA graphs unavailable ({type(err).__name__}: {err})".splitlines()[0])
        log("running eagerly")
        return eager
    return fast


def optimizer_step(loss: torch.Tensor, optimizer, schedule, params: list) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


# ---------------------------------------------------------------- a. the VAE


class VaeCall(torch.nn.Module):
    """Encode, sample the posterior with the given noise, decode: (reconstruction, KL per
    latent element). Tensors in, tensors out, so a CUDA graph can hold the whole pass."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.mean + posterior.std * eps).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        return recon, kl


def train_vae(config: PretrainConfig, pool: Pool, device: torch.device, log: Log):
    """The tiny AutoencoderKL on both styles, so a LoRA's blueprints decode as well as the
    base's plain drawings. L1 beside MSE keeps the thin lines, which are few pixels."""
    log(
        f"pretrain-tiny: stage a, VAE: {config.vae_steps} steps, batch {config.vae_batch_size}, "
        f"lr {config.vae_lr:g}, both styles"
    )
    torch.manual_seed(config.seed)
    vae = tiny_vae().to(device).train()
    params = list(vae.parameters())
    optimizer = adamw(params, config.vae_lr, device)
    schedule = warmup_cosine(optimizer, config.vae_steps, config.warmup_steps)
    gen = stage_generator(config, device, 1)
    both = torch.cat([pool.paper, pool.blueprint])
    b, side = config.vae_batch_size, config.resolution
    latent_shape = (b, vae.config.latent_channels, side // 8, side // 8)
    sample_args = (
        torch.zeros(b, 3, side, side, device=device),
        torch.zeros(latent_shape, device=device),
    )
    call = graphed(lambda: VaeCall(vae), sample_args, config, log)
    losses = LossLog("vae", config.vae_steps, config.log_every, device, log)
    for step in range(config.vae_steps):
        x = sample_pixels(both, b, gen)
        eps = torch.randn(latent_shape, generator=gen, device=device)
        recon, kl = call(x, eps)
        loss = F.mse_loss(recon, x) + F.l1_loss(recon, x) + config.kl_weight * kl
        optimizer_step(loss, optimizer, schedule, params)
        losses.record(step, loss, schedule.get_last_lr()[0])
    return vae.eval().requires_grad_(False), losses.result()


@torch.no_grad()
def encode_pool(
    vae, paper: torch.Tensor, blueprint: torch.Tensor, log: Log
) -> tuple[LatentPool, float]:
    """Centre the VAE's latents (`center_latents`), then return the paper drawings' posteriors,
    unflipped and flipped, as the UNets see them. Returns the scaling factor (1.0: the
    centred latents already have unit variance per channel)."""
    mean, std = latent_moments(vae, torch.cat([paper, blueprint]))
    center_latents(vae, mean, std)
    vae.register_to_config(scaling_factor=1.0)
    log(
        "vae: latents centred per channel (means "
        + ", ".join(f"{m:+.3f}" for m in mean.tolist())
        + "; stds "
        + ", ".join(f"{s:.3f}" for s in std.tolist())
        + ") -> scaling_factor 1.0"
    )
    paper_mean, paper_std = zip(
        *(posterior(vae, paper, flip) for flip in (False, True)), strict=True
    )
    return LatentPool(mean=torch.stack(paper_mean), std=torch.stack(paper_std)), 1.0


def posterior(vae, pixels: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of every drawing (mirrored when `flip`)."""
    means, stds = [], []
    for chunk in pixels.split(ENCODE_CHUNK):
        x = to_unit_range(chunk)
        dist = vae.encode(x.flip(-1) if flip else x).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def latent_moments(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of posterior samples (spread of the means plus the
    posterior's own variance) over `pixels`."""
    means, stds = posterior(vae, pixels, flip=False)
    mean = means.mean(dim=(0, 2, 3))
    variance = means.var(dim=(0, 2, 3)) + stds.pow(2).mean(dim=(0, 2, 3))
    return mean, variance.sqrt()


def center_latents(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Re-parametrise the VAE so its latents are zero-mean, unit-variance per channel, with
    the same reconstructions: folded into the 1x1 `quant_conv` (encoder side) and
    `post_quant_conv` (decoder side).

    Why: drawings are mostly flat ground, so one latent channel sits far from zero (about
    -1.9 here). SDXL's schedule leaves a little signal even at t=999, so a UNet trained on
    such latents learns to copy that offset from its input instead of making it; sampling
    from pure noise then misses it, and the decoder paints the wrong ground (blue). A
    centred latent space has nothing to copy. SDXL's pipelines need no extra config for it.
    """
    channels = mean.numel()
    quant, post = vae.quant_conv, vae.post_quant_conv
    scale = 1.0 / std
    # quant_conv outputs [mean | logvar]: mean' = (mean - m) / s, logvar' = logvar - 2 log s.
    quant.weight[:channels] *= scale.view(-1, 1, 1, 1)
    quant.bias[:channels] = (quant.bias[:channels] - mean) * scale
    quant.bias[channels:] -= 2.0 * torch.log(std)
    # post_quant_conv sees z = s * z' + m: fold s into its input weights and m into its bias.
    weight = post.weight[:, :, 0, 0]
    post.bias += weight @ mean
    post.weight *= std.view(1, -1, 1, 1)


# ---------------------------------------------------------------- b, c. the UNets


@torch.no_grad()
def encode_captions(
    tokenizers: list, encoders: list, captions: list[str]
) -> tuple[Conditioning, Conditioning]:
    """The base's conditioning (both encoders) and the refiner's (TE2 alone), once.

    A dropped caption is what the pipelines feed for an empty negative prompt: zeros for
    the base (`force_zeros_for_empty_prompt`), the encoded "" for the refiner.
    """
    parts = [encode_prompts(tokenizers, encoders, list(c)) for c in chunked(captions)]
    embeds = torch.cat([e for e, _ in parts])
    pooled = torch.cat([p for _, p in parts])
    empty_embeds, empty_pooled = encode_prompts(tokenizers[1:], encoders[1:], [""])
    base = Conditioning(embeds, pooled, torch.zeros_like(embeds[:1]), torch.zeros_like(pooled[:1]))
    # SDXL's prompt_embeds are [TE1 | TE2] on the last axis: the refiner's are the TE2 part.
    te1_width = encoders[0].config.hidden_size
    refiner = Conditioning(embeds[..., te1_width:].contiguous(), pooled, empty_embeds, empty_pooled)
    return base, refiner


def chunked(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), ENCODE_CHUNK):
        yield items[start : start + ENCODE_CHUNK]


@dataclass(frozen=True)
class UNetStage:
    """What differs between the base and the refiner stage."""

    build: Callable[[], torch.nn.Module]
    steps: int
    batch_size: int
    lr: float
    timesteps: tuple[int, int]  # the range trained on, [low, high)
    time_ids: tuple[float, ...]  # without the batch axis
    seed_offset: int


class UNetCall(torch.nn.Module):
    """The UNet's epsilon prediction with SDXL's conditioning as plain tensor arguments, so
    a CUDA graph can hold the pass."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, noisy, t, embeds, pooled, time_ids) -> tuple[torch.Tensor]:
        added = {"text_embeds": pooled, "time_ids": time_ids}
        return (self.unet(noisy, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample,)


def unet_stage(name: str, config: PretrainConfig) -> UNetStage:
    side = float(config.resolution)
    if name == "base":
        # original size, crop top-left, target size
        return UNetStage(
            tiny_base_unet,
            config.base_steps,
            config.base_batch_size,
            config.base_lr,
            (0, 1000),
            (side, side, 0.0, 0.0, side, side),
            2,
        )
    # original size, crop top-left, aesthetic score
    return UNetStage(
        tiny_refiner_unet,
        config.refiner_steps,
        config.refiner_batch_size,
        config.refiner_lr,
        (0, config.refiner_max_timestep),
        (side, side, 0.0, 0.0, AESTHETIC_SCORE),
        3,
    )


def train_unet(
    name: str,
    config: PretrainConfig,
    latents: LatentPool,
    cond: Conditioning,
    device: torch.device,
    log: Log,
):
    """Full-weight epsilon-prediction training of the base or refiner UNet on the paper
    drawings; returns the EMA of its weights (what is saved) and the stage's losses."""
    stage = unet_stage(name, config)
    low, high = stage.timesteps
    log(
        f"pretrain-tiny: stage {'b' if name == 'base' else 'c'}, {name} UNet: {stage.steps} "
        f"steps, batch {stage.batch_size}, lr {stage.lr:g}, timesteps [{low}, {high})"
    )
    torch.manual_seed(config.seed + stage.seed_offset)
    unet = stage.build().to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    params, ema_params = list(unet.parameters()), list(ema.parameters())
    optimizer = adamw(params, stage.lr, device)
    schedule = warmup_cosine(optimizer, stage.steps, config.warmup_steps)
    gen = stage_generator(config, device, stage.seed_offset)
    noise_scheduler = ddpm_scheduler()
    alphas = noise_scheduler.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    b = stage.batch_size
    time_ids = torch.tensor(stage.time_ids, device=device).repeat(b, 1)
    n, shape = latents.mean.shape[1], latents.mean.shape[2:]
    sample_args = (
        torch.zeros((b, *shape), device=device),
        torch.zeros(b, dtype=torch.long, device=device),
        torch.zeros((b, *cond.embeds.shape[1:]), device=device),
        torch.zeros((b, *cond.pooled.shape[1:]), device=device),
        time_ids,
    )
    call = graphed(lambda: UNetCall(unet), sample_args, config, log)
    losses = LossLog(name, stage.steps, config.log_every, device, log)
    for step in range(stage.steps):
        idx = torch.randint(n, (b,), generator=gen, device=device)
        flip = torch.randint(2, (b,), generator=gen, device=device)
        # A fresh posterior sample each time, as latent_dist.sample() gives in diffusers.
        eps = torch.randn((b, *shape), generator=gen, device=device)
        clean = latents.mean[flip, idx] + latents.std[flip, idx] * eps
        noise = torch.randn((b, *shape), generator=gen, device=device)
        if config.noise_offset and name == "base":
            # Offset noise: a per-channel constant in the noise, so the UNet learns to make
            # (and a LoRA to change) the ground's colour rather than copy it from its input.
            # The refiner starts from a picture whose ground is already made: none there.
            offset = torch.randn((b, shape[0], 1, 1), generator=gen, device=device)
            noise = noise + config.noise_offset * offset
        t = torch.randint(low, high, (b,), generator=gen, device=device)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        keep = torch.rand(b, generator=gen, device=device) >= config.caption_dropout
        embeds = torch.where(keep[:, None, None], cond.embeds[idx], cond.empty_embeds)
        pooled = torch.where(keep[:, None], cond.pooled[idx], cond.empty_pooled)
        (pred,) = call(noisy, t, embeds, pooled, time_ids)
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            # Min-SNR: easy low-noise steps don't dominate the gradient (Hang et al. 2023).
            per_sample = per_sample * snr[t].clamp(max=config.snr_gamma) / snr[t]
        loss = per_sample.mean()
        optimizer_step(loss, optimizer, schedule, params)
        # EMA with diffusers' warm-up: early weights are forgotten fast.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        losses.record(step, loss, schedule.get_last_lr()[0])
    return ema, losses.result()


def ddpm_scheduler():
    """The training-time (DDPM) view of the tiny scheduler's betas, for `add_noise`."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(tiny_scheduler().config)


# ---------------------------------------------------------------- saving


def save_pipelines(
    config: PretrainConfig, out: Path, templates: Path, vae, base_unet, refiner_unet
) -> None:
    """Each template with its VAE and UNet swapped for the trained ones; written beside the
    target and renamed into place, so a crash never leaves half a model folder."""
    for name, template, unet in (
        (DRAWING_NAMES[0], templates / "base", base_unet),
        (DRAWING_NAMES[1], templates / "refiner", refiner_unet),
    ):
        staging = out / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(template, staging)
        staging.chmod(0o755)  # the template was a private temp folder
        for part, model in (("vae", vae), ("unet", unet)):
            shutil.rmtree(staging / part)
            # .half(), not .to(dtype): diffusers' .to warns about fp32 modules these lack.
            exported = copy.deepcopy(model).to("cpu")
            exported = exported.half() if config.fp16 else exported.float()
            exported.save_pretrained(staging / part, safe_serialization=True)
        shutil.rmtree(out / name, ignore_errors=True)
        os.replace(staging, out / name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "cpu"


def command_line(config: PretrainConfig) -> str:
    """The command that makes these weights again, whatever process ran the recipe (the CLI,
    a test, a notebook): every setting that differs from the defaults, as `key=value`."""
    defaults = PretrainConfig(out=config.out).model_dump()
    settings = [
        f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
        for key, value in config.model_dump().items()
        if key != "out" and value != defaults[key]
    ]
    return shlex.join(["bluepri", "models", "pretrain-tiny", "--out", config.out, *settings])


def write_recipe(
    config: PretrainConfig,
    out: Path,
    device: torch.device,
    scaling_factor: float,
    stages: dict[str, StageResult],
    started: float,
) -> Path:
    """RECIPE.json: how the weights were made, and the sha256 of every file they hold."""
    import diffusers
    import transformers

    recipe = {
        "command": command_line(config),
        "argv": sys.argv,
        "config": config.model_dump(),
        "seed": config.seed,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "scaling_factor": scaling_factor,
        "stages": {name: stage.model_dump() for name, stage in stages.items()},
        "seconds": round(time.monotonic() - started, 1),
        "files": file_digests(out, DRAWING_NAMES),
    }
    path = out / RECIPE_NAME
    path.write_text(json.dumps(recipe, indent=2) + "\n")
    return path


def write_preview(
    config: PretrainConfig, out: Path, drawings: torch.Tensor, device: torch.device, log: Log
) -> Path:
    """preview.png, four rows: a few training drawings (paper and blueprint), their VAE
    reconstructions, base samples and base -> refiner samples, from the saved folders loaded
    as any user would (float32, vanilla diffusers)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from PIL import Image

    base = StableDiffusionXLPipeline.from_pretrained(
        out / DRAWING_NAMES[0], dtype=torch.float32
    ).to(device)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        out / DRAWING_NAMES[1],
        vae=base.vae,
        text_encoder_2=base.text_encoder_2,
        dtype=torch.float32,
    ).to(device)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    prompts, side = list(PREVIEW_PROMPTS), config.resolution
    common = {"num_inference_steps": 20, "height": side, "width": side}
    seed = torch.Generator(device=device)
    plain = base(prompts, generator=seed.manual_seed(config.seed), **common).images
    handed = base(
        prompts,
        generator=seed.manual_seed(config.seed),
        denoising_end=0.8,
        output_type="latent",
        **common,
    ).images
    refined = refiner(
        prompts,
        image=handed,
        num_inference_steps=20,
        denoising_start=0.8,
        generator=seed.manual_seed(config.seed),
    ).images
    with torch.no_grad():
        x = to_unit_range(drawings.to(device))
        recon = base.vae.decode(base.vae.encode(x).latent_dist.mean).sample
    rows = [to_pictures(x), to_pictures(recon), plain, refined]
    grid = Image.new("RGB", (side * max(len(r) for r in rows), side * len(rows)), "white")
    for row_index, row in enumerate(rows):
        for column, picture in enumerate(row):
            grid.paste(picture, (column * side, row_index * side))
    path = out / PREVIEW_NAME
    grid.save(path)
    log(f"pretrain-tiny: preview (drawings, VAE, base, base+refiner) -> {path}")
    return path


def to_pictures(x: torch.Tensor) -> list:
    from PIL import Image

    rgb = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(picture.numpy()) for picture in rgb]
