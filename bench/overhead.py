"""The fixed costs of a short training run: where a 10-step tiny run's wall time goes.

Runs `bluepri train` (its own process, its own local Ray, the cache prepared once before
and reused) for 10 steps and prints the phase table every run records (`bluepri.timings`),
twice in the same session:

- baseline: Ray Train's default controller poll interval (2 s), what a TorchTrainer
  run gets out of the box;
- bluepri: the interval every bluepri Ray sets (`bluepri.runtime.TRAIN_POLL_ENV`);

and the ratio of their wall times. `--repeat` runs each that many times (interleaved) and
reports the median.

    python bench/overhead.py                      # ~2 minutes on 2 CPU cores
    python bench/overhead.py --steps 10 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLUEPRI = str(Path(sys.executable).with_name("bluepri"))
RAY_DEFAULT_POLL_S = "2.0"  # ray.train.v2's DEFAULT_HEALTH_CHECK_INTERVAL_S
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def train_argv(data: Path, cache_root: Path, out: Path, steps: int) -> list[str]:
    return [
        BLUEPRI, "train", "--pretrained_model_name_or_path=tiny:base",
        f"--train_data_dir={data}", f"--cache_root={cache_root}", f"--output_dir={out}",
        "--resolution=128", "--train_batch_size=4", f"--max_train_steps={steps}",
        "--num_workers=1", "--mixed_precision=no", "--report_to=none",
        "--captioner=tiny:blip", "--seed=0",
    ]  # fmt: skip


def run(argv: list[str], poll_s: str | None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `bluepri train` process and the timings its metrics.json holds;
    `poll_s` replaces the controller poll interval bluepri gives its local Ray."""
    env = dict(os.environ)
    env.pop(POLL_ENV, None)
    if poll_s is not None:
        env[POLL_ENV] = poll_s  # bluepri's local Ray keeps a value the environment sets
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    out = Path(next(a for a in argv if a.startswith("--output_dir=")).split("=", 1)[1])
    return wall, json.loads((out / "metrics.json").read_text())["timings"]


def table(rows: dict[str, dict[str, float]]) -> list[str]:
    """Phases in rows, one column per run kind, largest baseline phase first."""
    names = list(rows)
    phases = sorted(
        {p for timings in rows.values() for p in timings if p != "total"},
        key=lambda p: -rows[names[0]].get(p, 0.0),
    )
    lines = [f"| {'phase':<20} | " + " | ".join(f"{n:>10}" for n in names) + " |",
             "|" + "-" * 22 + "|" + "|".join("-" * 12 for _ in names) + "|"]  # fmt: skip
    for phase in [*phases, "total"]:
        cells = " | ".join(f"{rows[n].get(phase, 0.0):10.2f}" for n in names)
        lines.append(f"| {phase:<20} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from bluepri.config import SynthConfig
    from bluepri.data.synth import synthesize

    root = Path(tempfile.mkdtemp(prefix="bluepri-overhead-"))
    data, cache_root = root / "data", root / "cache"
    synthesize(SynthConfig(out_dir=str(data), num_images=args.images, seed=1))
    # Once, so every measured run reuses the cache (the data stage is not what is measured).
    run(train_argv(data, cache_root, root / "warm", 1), None)

    walls: dict[str, list[float]] = {"baseline": [], "bluepri": []}
    phases: dict[str, list[dict[str, float]]] = {"baseline": [], "bluepri": []}
    for index in range(args.repeat):
        for kind, poll in (("baseline", RAY_DEFAULT_POLL_S), ("bluepri", None)):
            wall, timings = run(train_argv(data, cache_root, root / f"{kind}-{index}", args.steps),
                                poll)  # fmt: skip
            walls[kind].append(wall)
            phases[kind].append(timings)
            print(f"{kind:8} run {index + 1}: {wall:.1f} s wall", flush=True)
    median = {kind: statistics.median(values) for kind, values in walls.items()}
    middle = {
        kind: min(
            phases[kind],
            key=lambda t: abs(t["total"] - statistics.median([p["total"] for p in phases[kind]])),
        )  # fmt: skip
        for kind in phases
    }
    print(f"\n{args.steps}-step tiny run (128 px, batch 4, 1 worker, cache reused), seconds:")
    for line in table(middle):
        print(line)
    ratio = median["baseline"] / median["bluepri"]
    print(
        f"\nprocess wall (median of {args.repeat}): baseline {median['baseline']:.1f} s, "
        f"bluepri {median['bluepri']:.1f} s; ratio {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
