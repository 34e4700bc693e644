"""Benchmark the data stage: images/s of `prepare` against a single-process loop doing the
same work (decode, validate, hash, crop/flip, caption, encode), one image at a time.

    .venv/bin/python bench/prepare.py --images 96 --resolution 128

`prepare` runs five ways: its CPU default (`model_stage` auto, `num_encode_actors` unset: the
models run in the driver, fed by Ray tasks that read and transform, with one helper actor from
64 images on), the driver with one model worker and with two (the driver and one helper
actor) whatever the size, and as a Ray Data pool of one and of two caption+encode actors. A
second loop, captioning in batches of 8 and encoding as `prepare` does, is printed too: it
shows how much of `prepare`'s lead is batching, not Ray.

Prints one table with the rates and the ratios against the one-at-a-time loop (the
baseline). Each `prepare` writes a fresh cache (a new `--out`), so no run is a cache hit;
the first Ray run also pays Ray's start-up, so a warm-up run on a small set goes first. The
loops load their models before their clocks start; `prepare` loads them inside its run
(the seconds the loop took to load them are printed below the table).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def single_process_images_per_s(folder: Path, resolution: int, batch: int) -> tuple[float, float]:
    """(images/s, seconds loading the models) of the same per-image work as `prepare`, in
    one process, no Ray; captions and encodes `batch` images at a time (the VAE in the
    pieces `prepare` gives it on CPU)."""
    from bluepri.data import decode, transforms
    from bluepri.data.caption import caption_images
    from bluepri.data.encode import (
        encode_pixel_rows,
        encode_prompts,
        load_text_encoders,
        load_vae_for,
        vae_pixels_per_call,
    )
    from bluepri.data.sources import IMAGE_SUFFIXES
    from bluepri.models import load_captioner

    loading = time.perf_counter()
    vae = load_vae_for("tiny:base", vae_ref=None)
    text = load_text_encoders("tiny:base")
    captioner = load_captioner("tiny:blip")
    loading = time.perf_counter() - loading
    files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)
    started = time.perf_counter()
    for first in range(0, len(files), batch):
        pictures = []
        for path in files[first : first + batch]:
            image = decode.decode_image(path.read_bytes()).image
            decode.pixel_sha256(image), decode.perceptual_hash(image)
            prepared = transforms.prepare_image(
                image,
                resolution=resolution,
                center_crop=True,
                random_flip=True,
                rng=np.random.default_rng(0),
            )
            pictures.append(prepared.image)
        captions = caption_images(captioner, pictures)
        rows = [transforms.to_tensor_input(p) for p in pictures]
        with torch.inference_mode():
            encode_pixel_rows(vae, rows, pixels_per_call=vae_pixels_per_call("cpu"))
            encode_prompts(text.tokenizers, text.encoders, captions)
    return len(files) / (time.perf_counter() - started), loading


def ray_images_per_s(
    folder: Path, resolution: int, actors: int | None, out: Path, model_stage: str = "auto"
) -> float:
    from bluepri.config import PrepareConfig
    from bluepri.data.prepare import prepare

    config = PrepareConfig(
        source=str(folder),
        out=str(out),
        resolution=resolution,
        center_crop=True,
        random_flip=True,
        base="tiny:base",
        captioner="tiny:blip",
        recaption=True,
        num_encode_actors=actors,
        num_caption_actors=actors or 1,
        encode_batch_size=8,
        dedup_threshold=None,
        model_stage=model_stage,
    )
    started = time.perf_counter()
    info = prepare(config, log=lambda _: None)
    return info.num_rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()

    from bluepri.config import SynthConfig
    from bluepri.data.synth import synthesize
    from bluepri.runtime import ensure_ray

    torch.set_num_threads(1)
    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "set"
        synthesize(SynthConfig(out_dir=str(folder), num_images=args.images, seed=0))
        warm = root / "warm"
        synthesize(SynthConfig(out_dir=str(warm), num_images=8, seed=1))
        ray_images_per_s(warm, args.resolution, 1, root / "cache-warm")
        baseline, loading = single_process_images_per_s(folder, args.resolution, batch=1)
        batched, _ = single_process_images_per_s(folder, args.resolution, batch=8)
        runs = {
            "prepare, default": (None, "auto"),
            "prepare, models in the driver": (1, "auto"),
            "prepare, driver + 1 helper actor": (2, "auto"),
            "prepare, 1 caption+encode actor": (1, "actors"),
            "prepare, 2 caption+encode actors": (2, "actors"),
        }
        rates = {
            name: ray_images_per_s(folder, args.resolution, actors, root / f"cache-{i}", stage)
            for i, (name, (actors, stage)) in enumerate(runs.items())
        }
    print(f"prepare benchmark: {args.images} images at {args.resolution}px, tiny models")
    print(f"{'run':<36}{'images/s':>10}{'vs loop':>10}")
    print(f"{'single-process loop (baseline)':<36}{baseline:>10.2f}{1.0:>10.2f}")
    print(f"{'single-process loop, batches of 8':<36}{batched:>10.2f}{batched / baseline:>10.2f}")
    for name, rate in rates.items():
        print(f"{name:<36}{rate:>10.2f}{rate / baseline:>10.2f}")
    print(f"the loops' model loading, not timed: {loading:.2f} s")


if __name__ == "__main__":
    main()
