"""Benchmark catalogue rendering: `render` on Ray Data against a naive loop, and its memory
as the catalogue grows.

    .venv/bin/python bench/render.py                       # tiny models, CPU
    .venv/bin/python bench/render.py --images 96 --scale 1000 5000
    python bench/render.py --device cuda --dtype float16   # when a GPU is lent

1. catalogues of each `--scale` size at the smallest size and step count that still runs
   both stages (64 px, 2 steps split 1 + 1): images/s and the peak resident memory of the
   driver and of the workers by kind (sampled every 0.2 s from the processes under this
   driver's Ray), which must not grow with the catalogue. Run first, so the driver holds
   nothing else.
2. images/s of `render` (Base and Refiner actor pools, batches of compatible rows,
   streaming writer) against a naive loop over the same diffusers pipelines in one
   process (`generate()` one request at a time, PNG saved), on the same cores, with the
   same steps and sizes. Both include loading the models; Ray's start is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil

SUBJECTS = ["a floor plan of a small flat", "a gear with twelve teeth", "a jet aircraft",
            "a motorcycle, side view", "a chair and a table", "a kitchen with a stove"]  # fmt: skip


def write_catalogue(path: Path, count: int) -> Path:
    with open(path, "w") as handle:
        for i in range(count):
            row = {"id": f"p{i:06d}", "prompt": f"{SUBJECTS[i % len(SUBJECTS)]}, sheet {i}",
                   "prompt_2": "blueprint, white lines on blue", "seed": i}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
    return path


class PeakMemory:
    """Peak RSS of the driver and of its Ray worker processes (by kind) while running."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.driver = 0
        self.workers = {"base actor": 0, "refiner actor": 0, "task worker": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join()

    def sample(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for child in me.children(recursive=True):
                try:
                    title = " ".join(child.cmdline())
                    if not title.startswith("ray::"):
                        continue  # raylet, GCS, dashboard: Ray's own, the same at any size
                    kind = "base actor" if "BaseStage" in title else "task worker"
                    kind = "refiner actor" if "RefinerStage" in title else kind
                    self.workers[kind] = max(self.workers[kind], child.memory_info().rss)
                except psutil.Error:
                    continue
            self.stop.wait(self.interval_s)


def naive_loop(args, catalogue: list[dict], out: Path) -> float:
    """images/s of one process calling generate() once per row, as a script would."""
    from bluepri.config import ModelsConfig
    from bluepri.generate import GenerationRequest, generate, load_pipelines

    started = time.perf_counter()
    models = ModelsConfig(base=args.base, refiner=args.refiner, device=args.device,
                          dtype=args.dtype)  # fmt: skip
    pipes = load_pipelines(models)
    out.mkdir(parents=True, exist_ok=True)
    for row in catalogue:
        request = GenerationRequest(
            prompt=row["prompt"], prompt_2=row["prompt_2"], seed=row["seed"],
            width=args.size, height=args.size, num_inference_steps=args.steps,
        )  # fmt: skip
        generate(pipes, request).image.save(out / f"{row['id']}.png")
    return len(catalogue) / (time.perf_counter() - started)


def render_run(args, catalogue: Path, out: Path, *, size: int, steps: int, frac: float):
    from bluepri.config import ModelsConfig, RenderConfig
    from bluepri.render import render

    config = RenderConfig(
        catalogue=str(catalogue), out=str(out), adapter="none",
        models=ModelsConfig(base=args.base, refiner=args.refiner, device=args.device,
                            dtype=args.dtype),
        width=size, height=size, steps=steps, high_noise_frac=frac,
        base_actors=args.base_actors, refiner_actors=args.refiner_actors,
        base_batch_size=args.batch_size, refiner_batch_size=args.batch_size,
        block_rows=args.block_rows, contact_sheet_images=0, progress_interval_s=30,
    )  # fmt: skip
    with PeakMemory() as memory:
        started = time.perf_counter()
        result = render(config, log=lambda line: print(f"    {line}", flush=True))
        seconds = time.perf_counter() - started
    assert result.ok and result.rendered == result.total, result.failed
    return result.rendered / seconds, seconds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="rows for the loop comparison")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--scale", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--base-actors", type=int, default=1)
    parser.add_argument("--refiner-actors", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-rows", type=int, default=32)
    parser.add_argument("--base", default="tiny:base")
    parser.add_argument("--refiner", default="tiny:refiner")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import ray

    ray.init(num_cpus=args.cpus, configure_logging=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="bench-render-"))
    print(f"{args.cpus} CPUs, {args.base} + {args.refiner} on {args.device} ({args.dtype}); "
          f"pools: {args.base_actors} base + {args.refiner_actors} refiner actors, "
          f"batches of {args.batch_size}; work in {root}")  # fmt: skip

    import bluepri.render  # noqa: F401  (the driver's imports, before measuring)

    print(f"driver RSS after imports: {psutil.Process().memory_info().rss / 2**20:.0f} MiB")
    print("[1/2] catalogue scale: 64 px, 2 steps (1 base + 1 refiner)")
    lines = []
    for count in args.scale:
        catalogue = write_catalogue(root / f"scale-{count}.jsonl", count)
        rate, seconds, memory = render_run(args, catalogue, root / f"scale-{count}", size=64,
                                           steps=2, frac=0.5)  # fmt: skip
        workers = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in memory.workers.items())
        lines.append(
            f"  {count:>6} prompts: {rate:6.2f} images/s, {seconds:7.1f} s; peak RSS MiB: "
            f"driver {memory.driver / 2**20:.0f}, {workers}"
        )
        print(lines[-1], flush=True)
    rows = [json.loads(line) for line in
            write_catalogue(root / "loop.jsonl", args.images).read_text().splitlines()]  # fmt: skip
    print(f"[2/2] {args.images} rows, {args.size} px, {args.steps} steps")
    loop = naive_loop(args, rows, root / "loop")
    print(f"  naive loop: {loop:.2f} images/s")
    ours, _, _ = render_run(args, root / "loop.jsonl", root / "render-loop", size=args.size,
                            steps=args.steps, frac=0.8)  # fmt: skip
    print(f"  render:     {ours:.2f} images/s  ({ours / loop:.2f}x the loop)")

    print("summary")
    print(f"  render vs naive loop: {ours / loop:.2f}x ({ours:.2f} vs {loop:.2f} images/s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
