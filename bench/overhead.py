"""The fixed costs of a short training run: bluepri beside the diffusers example script.

Runs, on the same tiny SDXL base (`tiny:base`, the folder bluepri builds offline) and the
same synthetic blueprints (32 captioned images), at 128 px, batch 4, 1 worker, fp32, no
validation images, no held-out split and no per-epoch validation:

- worker-group: `bluepri train --worker_group`, the run on a Ray Train worker group of one
  (its own local Ray, the 0.25 s controller poll every bluepri Ray sets), what every run
  was before one-worker runs trained in their own process;
- bluepri: `bluepri train` as it is (one local worker, no retries: in this process, no Ray,
  `TrainConfig.in_process`);
- script: diffusers' `examples/text_to_image/train_text_to_image_lora_sdxl.py`, run as it is
  in a venv of its own (`bench/script_env.sh` builds it: the script imports torchvision,
  which needs another torch than bluepri's, so the two torch versions differ).

Each `bluepri train` is its own process, the cache prepared once before and reused; the
script gets its datasets cache built once before and reused. Both run at `--steps` (10) and
at `--long-steps` (30). It prints the phase table (bluepri's from
the run's metrics.json, `bluepri.timings`; the script's from the parent's clock on its log:
to "Running training", to step 1, to the last step, to exit) and two ratios:

- (a) wall of a `--steps` run, bluepri / script (issue 15's target: at most 1.5x);
- (b) time per step, script / bluepri (target: at least 1.4x), three ways: wall per extra
  step, (wall[long] - wall[short]) / (long - short) of the median walls; loop per extra
  step, the same difference of the training loop's phases only (no start-up noise); and
  in the loop, the mean of steps 2..long of the long runs (bluepri's `steps` phase, the
  script's tqdm).

The script and the in-process bluepri run with OMP_NUM_THREADS=1 (`--script-threads`), the
one thread Ray gives bluepri's 1-CPU worker: the same compute for all three.

`--repeat` runs each that many times, interleaved, and reports medians; the table is the
run nearest the median.

    make bench-script-env       # once: bench/script_env.sh, the script's venv and the script
    python bench/overhead.py --script-python /work/script-venv/bin/python \\
        --diffusers-script /work/script-venv/train_text_to_image_lora_sdxl.py
    python bench/overhead.py --long-steps 0          # bluepri only, no script: ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

BLUEPRI = str(Path(sys.executable).with_name("bluepri"))
NO_EPOCH_VALIDATION = 1_000_000  # --validation_epochs: validate once, at the end
# The script's log lines its phases are timed by: the end of its set-up, and its tqdm bar.
SCRIPT_SETUP_DONE = "***** Running training *****"
SCRIPT_STEP = re.compile(r"Steps:.*?\|\s*(\d+)/(\d+) \[")
KINDS = ("worker-group", "bluepri", "script")
LOOP_PHASES = ("first_step", "steps", "loop_other", "checkpoints", "validation_loss",
               "validation_images", "validation_report")  # fmt: skip
SMALL = 0.05  # seconds: phases below it in every column share one row of the table


@dataclass
class Run:
    """One process: its wall seconds, its phases and the 1-minute load when it started."""

    wall: float
    phases: dict[str, float]
    load: float


@dataclass
class Results:
    runs: dict[tuple[str, int], list[Run]] = field(default_factory=dict)

    def add(self, kind: str, steps: int, run: Run) -> None:
        self.runs.setdefault((kind, steps), []).append(run)

    def wall(self, kind: str, steps: int) -> float | None:
        runs = self.runs.get((kind, steps))
        return statistics.median(r.wall for r in runs) if runs else None

    def middle(self, kind: str, steps: int) -> Run | None:
        """The run whose wall is nearest the median."""
        runs = self.runs.get((kind, steps))
        if not runs:
            return None
        median = statistics.median(r.wall for r in runs)
        return min(runs, key=lambda r: abs(r.wall - median))


def train_argv(data: Path, cache_root: Path, out: Path, steps: int) -> list[str]:
    return [
        BLUEPRI, "train", "--pretrained_model_name_or_path=tiny:base",
        f"--train_data_dir={data}", f"--cache_root={cache_root}", f"--output_dir={out}",
        "--resolution=128", "--train_batch_size=4", f"--max_train_steps={steps}",
        "--num_workers=1", "--mixed_precision=no", "--report_to=none",
        "--captioner=tiny:blip", "--seed=0",
        # The script's work: every image trains, no held-out loss, no per-epoch validation.
        "--val_fraction=0", f"--validation_epochs={NO_EPOCH_VALIDATION}",
    ]  # fmt: skip


def script_argv(
    python: str, script: str, model: str, data: Path, hf_cache: Path, out: Path, steps: int
) -> list[str]:
    return [
        python, script, f"--pretrained_model_name_or_path={model}",
        f"--train_data_dir={data}", "--image_column=image", "--caption_column=text",
        f"--cache_dir={hf_cache}", f"--output_dir={out}",
        "--resolution=128", "--train_batch_size=4", f"--max_train_steps={steps}",
        # tensorboard: its default, and accelerate refuses "none"; its events time each step.
        "--mixed_precision=no", "--report_to=tensorboard", "--dataloader_num_workers=0",
        f"--checkpointing_steps={10 * steps + 1000}", "--seed=0",
    ]  # fmt: skip


def run_bluepri(argv: list[str], threads: int) -> Run:
    """One `bluepri train` process and the timings its metrics.json holds; `threads`: its
    OMP_NUM_THREADS (0: torch's default; a worker group's worker gets 1 from Ray anyway)."""
    from bluepri import artifacts

    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    out = Path(next(a for a in argv if a.startswith("--output_dir=")).split("=", 1)[1])
    return Run(wall, json.loads((out / artifacts.METRICS_JSON).read_text())["timings"], load)


def run_script(argv: list[str], steps: int, threads: int) -> Run:
    """One run of the diffusers script, its phases timed here as its log lines arrive:
    set-up (imports, models, dataset, `accelerate.prepare`) until "Running training", the
    first step, steps 2..N (tqdm refreshes after every step), then saving the LoRA and the
    final pipeline load until the process exits."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("VIRTUAL_ENV", None)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    marks: dict[str, float] = {}
    pending, tail = b"", b""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        now = time.perf_counter() - started
        tail = (tail + chunk)[-4000:]
        *lines, pending = re.split(rb"[\r\n]", pending + chunk)
        for line in lines:
            text = line.decode(errors="replace")
            if SCRIPT_SETUP_DONE in text:
                marks.setdefault("setup", now)
            elif found := SCRIPT_STEP.search(text):
                marks.setdefault(f"step {int(found[1])}", now)
    wall = time.perf_counter() - started
    if proc.wait() != 0 or "setup" not in marks or f"step {steps}" not in marks:
        raise SystemExit(tail.decode(errors="replace"))
    first, last = marks["step 1"], marks[f"step {steps}"]
    phases = {
        "script_setup": marks["setup"],
        "first_step": first - marks["setup"],
        "steps": last - first,
        "script_save_reload": wall - last,
        "total": wall,
    }
    return Run(wall, phases, load)


def loop_seconds(run: Run) -> float:
    """Seconds of a run's training loop: the phases booked between its first step and its
    end-of-run checkpoint (the script's: its first step and the steps after it)."""
    return sum(run.phases.get(p, 0.0) for p in LOOP_PHASES)


def cell(value: float | None, digits: int = 2) -> str:
    return f"{value:10.{digits}f}" if value is not None else f"{'-':>10}"


def table(columns: dict[str, Run], steps: int) -> list[str]:
    """Phases in rows, one column per run kind, largest bluepri phase first; phases under
    `SMALL` s in every column are summed into one row."""
    names = list(columns)
    order = columns.get("bluepri") or columns[names[0]]
    every = {p for run in columns.values() for p in run.phases if p != "total"}
    small = {p for p in every if all(r.phases.get(p, 0.0) < SMALL for r in columns.values())}
    phases = sorted(every - small, key=lambda p: (-order.phases.get(p, -1.0), p))
    lines = [f"| {'phase (s)':<26} | " + " | ".join(f"{n:>10}" for n in names) + " |",
             "|" + "-" * 28 + "|" + "|".join("-" * 11 + ":" for _ in names) + "|"]  # fmt: skip
    rows = [(f"steps ({steps - 1})" if p == "steps" else p,
             {n: r.phases.get(p) for n, r in columns.items()}) for p in phases]  # fmt: skip
    if small:
        label = f"{len(small)} more, each < {SMALL} s"
        rows.append((label, {n: sum(r.phases.get(p, 0.0) for p in small) or None
                             for n, r in columns.items()}))  # fmt: skip
    rows += [("total (in `train`)", {n: r.phases.get("total") for n, r in columns.items()}),
             ("process wall", {n: r.wall for n, r in columns.items()})]  # fmt: skip
    for label, values in rows:
        lines.append(f"| {label:<26} | " + " | ".join(cell(values[n]) for n in names) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--long-steps", type=int, default=30, help="0: no long runs")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--script-python", help="python of the script's venv (script_env.sh)")
    parser.add_argument("--diffusers-script", help="train_text_to_image_lora_sdxl.py")
    parser.add_argument("--no-worker-group", action="store_true", help="skip the worker-group runs")
    parser.add_argument(
        "--script-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the script: 1 (default) is what Ray gives bluepri's "
        "1-CPU worker; 0 leaves torch's default (every core)",
    )
    args = parser.parse_args()
    with_script = bool(args.script_python and args.diffusers_script)
    if bool(args.script_python) != bool(args.diffusers_script):
        parser.error("--script-python and --diffusers-script go together")

    from bluepri.config import SynthConfig
    from bluepri.data.synth import synthesize
    from bluepri.models.loading import tiny_folder

    root = Path(tempfile.mkdtemp(prefix="bluepri-overhead-"))
    data, cache_root, hf_cache = root / "data", root / "cache", root / "hf-datasets"
    # Every image captioned: the script cannot caption, so both train on the same captions.
    synthesize(
        SynthConfig(out_dir=str(data), num_images=args.images, seed=1, uncaptioned_fraction=0)
    )
    model = str(tiny_folder("base"))  # an ordinary diffusers folder: the script loads it too
    threads = args.script_threads or "torch's default"
    versions = f"bluepri: torch {version('torch')}, {threads} thread(s)"
    if with_script:
        probe = [args.script_python, "-c", "import torch; print(torch.__version__)"]
        script_torch = subprocess.run(probe, capture_output=True, text=True, check=True)
        versions += f"; script: torch {script_torch.stdout.strip()}, {threads} thread(s)"

    def script(out: Path, steps: int) -> Run:
        argv = script_argv(args.script_python, args.diffusers_script, model, data, hf_cache,
                           out, steps)  # fmt: skip
        return run_script(argv, steps, args.script_threads)

    # Once each, so measured runs reuse the caches (the data stage is not what is measured).
    run_bluepri(train_argv(data, cache_root, root / "warm", 1), args.script_threads)
    if with_script:
        script(root / "script-warm", 2)

    lengths = [args.steps] + ([args.long_steps] if args.long_steps > args.steps else [])
    plan = [("bluepri", n) for n in lengths]
    if not args.no_worker_group:
        plan.insert(0, ("worker-group", args.steps))
    if with_script:
        plan += [("script", n) for n in lengths]
    results = Results()
    for index in range(args.repeat):
        for kind, steps in plan:
            out = root / f"{kind}-{steps}-{index}"
            if kind == "script":
                run = script(out, steps)
            else:
                argv = train_argv(data, cache_root, out, steps)
                if kind == "worker-group":
                    argv.append("--worker_group")
                run = run_bluepri(argv, args.script_threads)
            results.add(kind, steps, run)
            print(f"{kind:8} {steps:3d} steps, run {index + 1}: {run.wall:6.1f} s wall "
                  f"(load {run.load:.2f})", flush=True)  # fmt: skip

    short = args.steps
    columns = {k: r for k in KINDS if (r := results.middle(k, short)) is not None}
    print(f"\n{short}-step tiny run (128 px, batch 4, 1 worker, fp32, caches reused; "
          f"{os.cpu_count()} CPU cores; {versions}), seconds:")  # fmt: skip
    for line in table(columns, short):
        print(line)

    wall = {k: results.wall(k, short) for k in KINDS}
    print(f"\nprocess wall, {short} steps (median of {args.repeat}): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in wall.items() if v is not None))  # fmt: skip
    if wall["worker-group"] is not None:
        print(f"  worker-group / bluepri: {wall['worker-group'] / wall['bluepri']:.2f}x")
    # Per step, three ways. The wall per extra step, (wall[long] - wall[short]) / (long -
    # short), holds everything a step costs but also the noise of the fixed costs (Ray and
    # process start); the loop per extra step takes the same difference of the training
    # loop's phases only (every step, epoch turns, data fetch; for bluepri also the loop's
    # remainder and its constant end-of-run checkpoint and validation); in the loop is the
    # mean of steps 2..long of the long runs (bluepri's `steps` phase, the script's tqdm).
    per_step: dict[str, dict[str, float]] = {}
    long = args.long_steps
    for kind in ("bluepri", "script"):
        long_wall = results.wall(kind, long) if long > short else None
        if long_wall is None or wall[kind] is None:
            continue
        loop = {n: statistics.median(loop_seconds(r) for r in results.runs[(kind, n)])
                for n in (short, long)}  # fmt: skip
        per_step[kind] = {
            "wall per extra step": (long_wall - wall[kind]) / (long - short),
            "loop per extra step": (loop[long] - loop[short]) / (long - short),
            "in the loop": statistics.median(
                r.phases["steps"] / (long - 1) for r in results.runs[(kind, long)]
            ),
        }
        figures = "; ".join(f"{v:.3f} s {k}" for k, v in per_step[kind].items())
        print(f"  {kind} per step: {figures} (walls {wall[kind]:.1f} / {long_wall:.1f} s, "
              f"loops {loop[short]:.2f} / {loop[long]:.2f} s, {short} / {long} steps)")  # fmt: skip
    if with_script:
        ratio_a = wall["bluepri"] / wall["script"]
        verdict_a = "met" if ratio_a <= 1.5 else "NOT met"
        print(f"\n(a) wall of a {short}-step run, bluepri / script: {ratio_a:.2f}x "
              f"(target <= 1.5x: {verdict_a})")  # fmt: skip
        if len(per_step) == 2:
            for how, ours in per_step["bluepri"].items():
                if ours <= 0:  # the fixed costs' noise outweighs the extra steps
                    print(f"(b) time per step, {how}: bluepri's is not positive, no ratio")
                    continue
                ratio = per_step["script"][how] / ours
                verdict = "met" if ratio >= 1.4 else "NOT met"
                print(f"(b) time per step, script / bluepri, {how}: {ratio:.2f}x "
                      f"(target >= 1.4x: {verdict})")  # fmt: skip
        print(f"    torch differs: {versions}")
    dump = [{"kind": kind, "steps": steps, "wall": r.wall, "load": r.load, "phases": r.phases}
            for (kind, steps), runs in results.runs.items() for r in runs]  # fmt: skip
    (root / "results.json").write_text(json.dumps(dump, indent=1))
    print(f"\nruns under {root}, every run's numbers in results.json")


if __name__ == "__main__":
    main()
