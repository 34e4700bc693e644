"""Training throughput on the tiny SDXL: data-parallel scaling, and what the cache buys.

1. scaling  samples/s of `bluepri.train.train` with 1 and 2 Ray Train workers (one CPU and
            so one torch thread each, Ray's default), and the 2-vs-1 ratio.
2. cache    steps/s of one worker's training step fed from the prepared cache versus
            encoding every batch with the VAE and both text encoders first (what diffusers'
            script does each step), and the cached-vs-encoding ratio. Same step function,
            same batch, one torch thread, no Ray.
3. cores    while the 2 workers train (Linux), the cores they use and the cores every other
            process (Ray's own, this driver) uses, sampled from /proc: on a machine with as
            many cores as workers, what others take stalls both ranks at the all-reduce.

    python bench/train.py                     # ~2-3 minutes on 2 CPU cores
    python bench/train.py --resolution 256 --steps 30
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build_cache(folder: Path, resolution: int, num_images: int) -> tuple[Path, str]:
    from bluepri.config import PrepareConfig, SynthConfig
    from bluepri.data.prepare import prepare
    from bluepri.data.synth import synthesize

    images = folder / "synth"
    synthesize(SynthConfig(out_dir=str(images), num_images=num_images, seed=1))
    config = PrepareConfig(
        source=str(images),
        out=str(folder / "cache"),
        resolution=resolution,
        center_crop=True,
        base="tiny:base",
        captioner="tiny:blip",
        val_fraction=0.1,
    )
    return images, prepare(config, log=lambda _: None).uri


class CoreShare:
    """Where the machine's cores go during a run, from /proc: every 0.2 s, each process's
    CPU seconds. `while_training` averages over the intervals in which every Ray Train worker
    was busy (the training steps, not start-up or validation's barriers)."""

    WORKER = "RayTrainWo"  # Ray's process title for a Ray Train worker (cut to 16 chars)
    INTERVAL_S = 0.2

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[int, tuple[float, bool]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self) -> CoreShare:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def sample(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        while not self.stop.is_set():
            processes = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline") as cmd:
                        name, fields = stat.read().rsplit(")", 1)
                        title = cmd.read()
                except OSError:  # the process ended
                    continue
                cpu = (int(fields.split()[11]) + int(fields.split()[12])) / ticks
                processes[int(pid)] = (cpu, self.WORKER in name or self.WORKER in title)
            self.samples.append((time.monotonic(), processes))
            self.stop.wait(self.INTERVAL_S)

    def while_training(self, workers: int) -> tuple[float, float] | None:
        """Mean cores used by the workers and by every other process while all trained."""
        busy_s = worker_cpu = other_cpu = 0.0
        for (start, before), (end, after) in itertools.pairwise(self.samples):
            used = {pid: cpu - before[pid][0] for pid, (cpu, _) in after.items() if pid in before}
            by_workers = sum(cpu for pid, cpu in used.items() if after[pid][1])
            if by_workers > 0.8 * workers * (end - start):
                busy_s += end - start
                worker_cpu += by_workers
                other_cpu += sum(used.values()) - by_workers
        return (worker_cpu / busy_s, other_cpu / busy_s) if busy_s else None


def scaling(
    cache_uri: str, folder: Path, steps: int, batch_size: int
) -> tuple[dict[int, float], tuple[float, float] | None]:
    """samples/s over all workers, training steps only (validation and start-up excluded),
    and the cores of the 2-worker run's training steps (workers, everything else)."""
    from bluepri.config import TrainConfig
    from bluepri.train import train

    results, cores = {}, None
    for workers in (1, 2):
        config = TrainConfig(
            pretrained_model_name_or_path="tiny:base",
            cache=cache_uri,
            output_dir=str(folder / f"workers-{workers}"),
            num_workers=workers,
            train_batch_size=batch_size,
            max_train_steps=steps,
            checkpointing_steps=10_000,
            lr_warmup_steps=0,
            seed=0,
            in_process=False,  # one worker is a Ray Train worker too, 1 CPU and 1 thread
        )
        with CoreShare() as share:
            results[workers] = train(config, log=lambda _: None).samples_per_s
        cores = share.while_training(workers) if os.path.isdir("/proc") else None
    return results, cores


def cached_vs_encoding(
    cache_uri: str, images: Path, resolution: int, steps: int, batch_size: int
) -> tuple[float, float]:
    """(cached steps/s, encode-every-step steps/s) of one worker's training step."""
    import numpy as np
    import torch
    from PIL import Image

    from bluepri.config import TrainConfig
    from bluepri.data import transforms
    from bluepri.data.encode import encode_latent_dist, encode_prompts
    from bluepri.denoising import collate, derived_generator, read_split
    from bluepri.train.loop import training_loss
    from bluepri.train.models import add_adapters, build_optimizer, load_models

    torch.set_num_threads(1)
    config = TrainConfig(pretrained_model_name_or_path="tiny:base", cache=cache_uri)
    models = load_models(config, torch.device("cpu"))
    add_adapters(models, config, seed=0, te_rates=(0.0, 0.0))
    optimizer = build_optimizer(models, config, {"unet": 1e-4})
    rows = read_split(cache_uri, "train")
    keys = {row["sample_id"]: row["key"] for row in cache_keys_rows(cache_uri)}
    batch = collate([rows[i] for i in range(batch_size)])
    # The same pictures as pixels, cropped as the cache was, for the encode-every-step path.
    pixels = torch.from_numpy(
        np.stack(
            [
                transforms.to_tensor_input(
                    transforms.prepare_image(
                        Image.open(images / keys[rows.sample_ids[i]]).convert("RGB"),
                        resolution=resolution,
                        center_crop=True,
                        random_flip=False,
                        rng=np.random.default_rng(0),
                    ).image
                )
                for i in range(batch_size)
            ]
        )
    )

    def step(step_batch) -> None:
        loss = training_loss(models, step_batch, derived_generator(0, "bench"), config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def encoded_batch():
        latents = encode_latent_dist(models.pipe.vae, pixels)
        with torch.no_grad():
            embeds, pooled = encode_prompts(
                models.tokenizers, models.text_encoders, batch["caption"]
            )
        return {
            **batch,
            "latents": latents.mean,
            "latents_std": latents.std,
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
        }

    rates = []
    for make_batch in (lambda: batch, encoded_batch):
        step(make_batch())  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            step(make_batch())
        rates.append(steps / (time.perf_counter() - started))
    return rates[0], rates[1]


def cache_keys_rows(cache_uri: str) -> list[dict]:
    from bluepri.artifacts import shard_dataset

    return shard_dataset(cache_uri).to_table(columns=["sample_id", "key"]).to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per measurement")
    parser.add_argument("--batch-size", type=int, default=2, help="per worker")
    args = parser.parse_args()

    import ray

    from bluepri.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="bluepri-bench-train-") as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        images, cache_uri = build_cache(folder, args.resolution, args.images)
        per_workers, cores = scaling(cache_uri, folder, args.steps, args.batch_size)
        cached, encoding = cached_vs_encoding(
            cache_uri, images, args.resolution, args.steps, args.batch_size
        )
        total = time.perf_counter() - started
    ray.shutdown()

    print(f"tiny SDXL, {args.resolution}px, batch {args.batch_size} per worker, {args.steps} steps")
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'samples/s, 1 worker':<44}{per_workers[1]:>12.1f}")
    print(f"{'samples/s, 2 workers':<44}{per_workers[2]:>12.1f}")
    print(f"{'scaling 2 vs 1 worker':<44}{per_workers[2] / per_workers[1]:>11.2f}x")
    if cores is not None:
        print(f"{'cores while 2 workers train: workers':<44}{cores[0]:>12.2f}")
        print(f"{'cores while 2 workers train: other processes':<44}{cores[1]:>12.2f}")
    print(f"{'steps/s, cached latents + embeddings':<44}{cached:>12.2f}")
    print(f"{'steps/s, VAE + text encoders every step':<44}{encoding:>12.2f}")
    print(f"{'cached vs encoding every step':<44}{cached / encoding:>11.2f}x")
    print(f"(whole benchmark: {total:.0f} s)")


if __name__ == "__main__":
    main()
