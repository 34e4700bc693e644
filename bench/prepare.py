"""Benchmark the data stage: images/s of `prepare` with 1 and 2 encode actors, against a
single-process loop doing the same work (decode, validate, hash, crop/flip, caption, encode).

    .venv/bin/python bench/prepare.py --images 96 --resolution 128

Prints one table with both rates and the ratios. Each `prepare` writes a fresh cache (a new
`--out`), so no run is a cache hit; the first Ray run also pays Ray's start-up, so a warm-up
run on a small set goes first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def single_process_images_per_s(folder: Path, resolution: int) -> float:
    """The same per-image work as `prepare`, in one process, no Ray."""
    from bluepri.data import decode, transforms
    from bluepri.data.caption import caption_images
    from bluepri.data.encode import encode_latents, encode_prompts, load_text_encoders, load_vae_for
    from bluepri.data.sources import IMAGE_SUFFIXES
    from bluepri.models import load_captioner

    vae = load_vae_for("tiny:base", vae_ref=None)
    text = load_text_encoders("tiny:base")
    captioner = load_captioner("tiny:blip")
    files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)
    started = time.perf_counter()
    for path in files:
        image = decode.decode_image(path.read_bytes()).image
        decode.pixel_sha256(image), decode.perceptual_hash(image)
        prepared = transforms.prepare_image(
            image,
            resolution=resolution,
            center_crop=True,
            random_flip=True,
            rng=np.random.default_rng(0),
        )
        caption = caption_images(captioner, [prepared.image])[0]
        pixels = torch.from_numpy(transforms.to_tensor_input(prepared.image))[None]
        with torch.inference_mode():
            encode_latents(vae, pixels)
            encode_prompts(text.tokenizers, text.encoders, [caption])
    return len(files) / (time.perf_counter() - started)


def ray_images_per_s(folder: Path, resolution: int, actors: int, out: Path) -> float:
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
        num_caption_actors=actors,
        encode_batch_size=8,
        dedup_threshold=None,
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
        baseline = single_process_images_per_s(folder, args.resolution)
        one = ray_images_per_s(folder, args.resolution, 1, root / "cache-1")
        two = ray_images_per_s(folder, args.resolution, 2, root / "cache-2")
    print(f"prepare benchmark: {args.images} images at {args.resolution}px, tiny models")
    print(f"{'run':<34}{'images/s':>10}{'vs loop':>10}")
    print(f"{'single-process loop (baseline)':<34}{baseline:>10.2f}{1.0:>10.2f}")
    print(f"{'prepare, 1 caption+encode actor':<34}{one:>10.2f}{one / baseline:>10.2f}")
    print(f"{'prepare, 2 caption+encode actors':<34}{two:>10.2f}{two / baseline:>10.2f}")
    print(f"2 actors / 1 actor: {two / one:.2f}")


if __name__ == "__main__":
    main()
