"""GPU benchmark: one LoRA training step and inference of the FULL-size SDXL architecture.

Random weights, real shapes: the UNet and VAE are built from SDXL base 1.0's own config
dicts (written out below, no download), at 1024 px (128 x 128 latents), with 77 x 2048
prompt embeddings as the cache supplies them. Times, for when a GPU is lent:

  train   one optimiser step (forward, Min-SNR loss, backward, AdamW on the LoRA weights)
          with and without gradient checkpointing: ms/step, peak memory, and their ratio
  infer   one image: N UNet steps with classifier-free guidance (batch 2) + VAE decode
  batch   the batched base stage of serve and render: UNet denoising of B different
          requests (CFG, batch 2B) as one batch vs one at a time, seconds per image, and the
          largest difference between a request's batched and single latents, with and
          without bluepri's batch-invariant numerics (bluepri.generate.invariance)

    python bench/gpu.py                       # cuda, fp16, 1024 px
    python bench/gpu.py --dtype bf16 --batch-size 2
    python bench/gpu.py --count-only          # build on the meta device: parameter counts
    PYTHONPATH=platform python bench/gpu.py --only batch --serve-batch 4
"""

from __future__ import annotations

import argparse
import time

import torch

# stabilityai/stable-diffusion-xl-base-1.0/unet/config.json
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-xl-base-1.0/vae/config.json (= madebyollin/sdxl-vae-fp16-fix's)
SDXL_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TEXT_WIDTH, POOLED_WIDTH = 2048, 1280  # CLIP ViT-L (768) + OpenCLIP bigG (1280); bigG pooled


def build_unet(device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    with device:  # allocate straight on the device (or meta): no 10 GB float32 CPU copy
        return UNet2DConditionModel(**SDXL_UNET_CONFIG).to(dtype)


def build_vae(device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    with device:
        return AutoencoderKL(**SDXL_VAE_CONFIG).to(dtype)


def conditioning(batch: int, resolution: int, device: torch.device, dtype: torch.dtype):
    """Cached-style inputs: prompt embeddings, pooled embedding, SDXL's six time ids."""
    prompt_embeds = torch.randn(batch, 77, TEXT_WIDTH, device=device, dtype=dtype)
    pooled = torch.randn(batch, POOLED_WIDTH, device=device, dtype=dtype)
    ids = [resolution, resolution, 0, 0, resolution, resolution]
    time_ids = torch.tensor([ids] * batch, device=device, dtype=dtype)
    return prompt_embeds, {"text_embeds": pooled, "time_ids": time_ids}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def time_train_step(args, device, dtype, *, checkpointing: bool) -> tuple[float, float]:
    """(ms per optimiser step, peak GiB) for LoRA on the UNet's attention, as bluepri trains."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params

    from bluepri.denoising import prediction_target
    from bluepri.models.lora import attach_lora
    from bluepri.train.losses import denoising_loss

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    unet = build_unet(device, dtype)
    unet.requires_grad_(False)
    attach_lora(unet, rank=args.rank)
    cast_training_params(unet, dtype=torch.float32)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    side = args.resolution // 8
    prompt_embeds, added = conditioning(args.batch_size, args.resolution, device, dtype)

    def step() -> None:
        latents = torch.randn(args.batch_size, 4, side, side, device=device, dtype=dtype)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (args.batch_size,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = unet(noisy, timesteps, prompt_embeds, added_cond_kwargs=added).sample
        target = prediction_target(scheduler, latents, noise, timesteps)
        loss = denoising_loss(pred, target, scheduler=scheduler, timesteps=timesteps, snr_gamma=5.0)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    ms = (time.perf_counter() - started) / args.steps * 1000
    memory = peak_gib(device)
    return ms, memory


def time_inference(args, device, dtype) -> float:
    """Seconds for one image: `--inference-steps` UNet steps with CFG, then a VAE decode."""
    from diffusers import EulerDiscreteScheduler

    unet = build_unet(device, dtype).eval()
    vae = build_vae(device, dtype).eval()
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        timestep_spacing="leading",
        steps_offset=1,
    )
    side = args.resolution // 8
    prompt_embeds, added = conditioning(2, args.resolution, device, dtype)  # uncond + cond

    def image() -> None:
        scheduler.set_timesteps(args.inference_steps, device=device)
        latents = torch.randn(1, 4, side, side, device=device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise = unet(model_input, t, prompt_embeds, added_cond_kwargs=added).sample
            uncond, cond = noise.chunk(2)
            latents = scheduler.step(uncond + 5.0 * (cond - uncond), t, latents).prev_sample
        vae.decode(latents / vae.config.scaling_factor)

    with torch.inference_mode():
        image()  # warm-up
        sync(device)
        started = time.perf_counter()
        for _ in range(args.images):
            image()
        sync(device)
    return (time.perf_counter() - started) / args.images


def time_batching(args, device, dtype) -> list[tuple[str, float, float, float]]:
    """(numerics, s/image alone, s/image in a batch of B, max |batched - alone|) per mode."""
    from diffusers import EulerDiscreteScheduler

    from bluepri.generate.invariance import batch_invariant

    unet = build_unet(device, dtype).eval()
    count, side = args.serve_batch, args.resolution // 8
    embeds, added = conditioning(2 * count, args.resolution, device, dtype)  # [uncond, cond]
    noise = [
        torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(i)).to(device, dtype)
        for i in range(count)
    ]

    def denoise(indices: list[int]) -> torch.Tensor:
        scheduler = EulerDiscreteScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
        )
        scheduler.set_timesteps(args.batch_steps, device=device)
        latents = torch.cat([noise[i] for i in indices]) * scheduler.init_noise_sigma
        rows = [i for i in indices] + [count + i for i in indices]  # uncond block, cond block
        text, extra = embeds[rows], {k: v[rows] for k, v in added.items()}
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            out = unet(model_input, t, text, added_cond_kwargs=extra).sample
            uncond, cond = out.chunk(2)
            latents = scheduler.step(uncond + 5.0 * (cond - uncond), t, latents).prev_sample
        return latents

    def timed(fn):
        sync(device)
        started = time.perf_counter()
        value = fn()
        sync(device)
        return value, time.perf_counter() - started

    results = []
    with torch.inference_mode():
        for invariant in (False, True):
            with batch_invariant(invariant):
                denoise([0])  # warm-up (kernel selection, allocator)
                alone, alone_s = timed(lambda: [denoise([i]) for i in range(count)])
                batch, batch_s = timed(lambda: denoise(list(range(count))))
            diff = max((batch[i] - alone[i][0]).abs().max().item() for i in range(count))
            name = "batch-invariant" if invariant else "default kernels"
            results.append((name, alone_s / count, batch_s / count, diff))
    return results


def count_parameters() -> None:
    meta = torch.device("meta")
    unet, vae = build_unet(meta, torch.float32), build_vae(meta, torch.float32)
    print(f"SDXL UNet parameters: {sum(p.numel() for p in unet.parameters()):,}")
    print(f"SDXL VAE parameters:  {sum(p.numel() for p in vae.parameters()):,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--inference-steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=2, help="timed images")
    parser.add_argument("--allow-tf32", action="store_true")
    parser.add_argument("--count-only", action="store_true", help="parameter counts, no device")
    parser.add_argument("--only", choices=["train", "infer", "batch"], help="one part only")
    parser.add_argument("--serve-batch", type=int, default=4, help="requests per batch")
    parser.add_argument("--batch-steps", type=int, default=10, help="UNet steps per request")
    args = parser.parse_args()
    if args.count_only:
        count_parameters()
        return
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: this benchmark is for a lent GPU (see --count-only)")
        torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
        print(f"device: {torch.cuda.get_device_name()}")
    print(f"SDXL {args.resolution}px, {args.dtype}, batch {args.batch_size}, LoRA rank {args.rank}")
    if args.only in (None, "train"):
        plain_ms, plain_gib = time_train_step(args, device, dtype, checkpointing=False)
        ckpt_ms, ckpt_gib = time_train_step(args, device, dtype, checkpointing=True)
        print(f"{'train step':<28} {plain_ms:9.1f} ms {plain_gib:6.1f} GiB")
        print(f"{'train step, grad ckpt':<28} {ckpt_ms:9.1f} ms {ckpt_gib:6.1f} GiB")
        print(
            f"gradient checkpointing: {ckpt_ms / plain_ms:.2f}x time, "
            f"{ckpt_gib / plain_gib:.2f}x peak memory"
        )
    if args.only in (None, "infer"):
        seconds = time_inference(args, device, dtype)
        print(f"{f'image ({args.inference_steps} steps, CFG)':<28} {seconds:9.2f} s")
    if args.only in (None, "batch"):
        print(f"batched base stage: {args.serve_batch} requests x {args.batch_steps} steps, CFG")
        for name, alone, batched, diff in time_batching(args, device, dtype):
            print(
                f"  {name:<16} alone {alone:7.3f} s/image  batched {batched:7.3f} s/image  "
                f"speed-up {alone / batched:5.2f}x  max |batched - alone| {diff:.3g}"
            )


if __name__ == "__main__":
    main()
