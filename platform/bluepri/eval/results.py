"""What an evaluation produced: `EvalResult`, written as eval.json, metrics.parquet and, per
row, into the history parquet that the report plots across nights.

One `ModelRun` per model measured (the base, each adapter) and per refiner setting; every
run was made from the same prompts with the same seeds, so its scores compare with the
base's at the same setting (`differences`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from bluepri.config import EvalProtocol

BASE_LABEL = "base"
# Scores every run carries, in the order tables and figures show them, with the direction
# that is better: +1 higher, -1 lower.
SCORES = {
    "heldout_loss": -1,
    "blueprint_score": +1,
    "paper_score": -1,
    "clip_score": +1,
    "fid": -1,
    "kid_mean": -1,
}
EVAL_JSON = "eval.json"
EVAL_METRICS = "metrics.parquet"
EVAL_REPORT = "report.html"
EVAL_SUMMARY_PNG = "summary.png"


class Scores(BaseModel):
    """One run's measurements; None where a metric could not be measured (see `notes`)."""

    heldout_loss: float | None = None  # fixed-noise MSE on the cache's val rows (no refiner)
    blueprint_score: float  # eval.palette: blueprint share of the pixels, mean per image
    paper_score: float  # eval.palette: plain-paper share
    clip_score: float | None = None  # torchmetrics CLIPScore, prompt vs image, mean
    fid: float | None = None  # against the held-out real drawings
    kid_mean: float | None = None
    kid_std: float | None = None


class ModelRun(BaseModel):
    """One model (base or base + adapter) at one refiner setting, on every prompt."""

    label: str  # "base", or the adapter's name@version (folders: local-<sha256[:12]>)
    adapter: str | None = None  # the reference or folder the config named; None: the base
    sha256: str | None = None  # the adapter weights' sha256
    # The adapter's copy in the evaluation folder (metrics.json, loss_curve.png), relative to
    # it; None: the base.
    folder: str | None = None
    refine: bool
    images: list[str]  # relative to the evaluation folder, in prompt order
    scores: Scores
    differences: dict[str, float | None] = Field(default_factory=dict)  # minus the base's


class ReferenceSet(BaseModel):
    """The real drawings FID/KID compare with."""

    source: str  # folder or cache source they were read from
    count: int
    skipped: dict[str, int] = Field(default_factory=dict)  # reason -> files


class EvalResult(BaseModel):
    """Everything measured, with every setting that decided it."""

    out: str
    label: str  # this evaluation in the history (e.g. the night's date)
    created: str  # UTC, ISO 8601
    protocol: EvalProtocol
    models: dict[str, str | None]  # base, refiner, vae, scheduler, dtype, device
    width: int
    height: int
    cache: str
    cache_fingerprint: str
    prompts: list[str]
    seeds: list[int]
    reference: ReferenceSet | None = None  # None: FID/KID not measured (see notes)
    clip_model: str | None = None
    fid_features: str | None = None  # e.g. "inception-v3-pool3-2048" or "clip:<model>"
    runs: list[ModelRun]
    notes: list[str] = Field(default_factory=list)  # what could not be measured, and why
    search: str | None = None  # the search folder shown in the report
    history: str | None = None  # the history parquet this evaluation was appended to
    report: str | None = None  # report.html (relative paths inside it)
    summary_png: str | None = None
    seconds: float = 0.0

    def find(self, label: str, refine: bool) -> ModelRun | None:
        """The run of `label` at a refiner setting, or None when not measured."""
        return next((r for r in self.runs if r.label == label and r.refine == refine), None)

    def run(self, label: str, refine: bool) -> ModelRun:
        """The run of `label` at a refiner setting; KeyError when not measured."""
        found = self.find(label, refine)
        if found is None:
            raise KeyError(f"{label} (refine={refine}) was not measured")
        return found

    def summary_lines(self) -> list[str]:
        """A table people can read in a terminal: one line per run, differences to base."""
        lines = [
            f"evaluation {self.label}: protocol {self.protocol.name}, {len(self.prompts)} "
            f"prompts, {self.width}x{self.height}, {self.protocol.steps} steps, guidance "
            f"{self.protocol.guidance_scale:g}"
        ]
        for run in self.runs:
            cells = []
            for name in SCORES:
                value = getattr(run.scores, name)
                if value is None:
                    continue
                delta = run.differences.get(name)
                cells.append(
                    f"{name} {value:.4g}" + (f" ({delta:+.3g})" if delta is not None else "")
                )
            refine = "+refiner" if run.refine else "base only"
            lines.append(f"  {run.label:28} {refine:10} " + ", ".join(cells))
        lines.extend(f"  note: {note}" for note in self.notes)
        if self.report:
            lines.append(f"report: {self.report}")
        return lines
