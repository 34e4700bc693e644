"""Evaluation: the base model and adapters measured the same way every time (held-out loss,
blueprint score, CLIP score, FID/KID), with a report people would rather look at than read.

`evaluate(EvalConfig) -> EvalResult` is the stage's entry point; `heldout_losses` is the
fixed-noise measurement promotion uses too.
"""

from bluepri.eval.evaluate import evaluate
from bluepri.eval.heldout import heldout_loss, heldout_losses
from bluepri.eval.palette import DrawingStats, PaletteScore, blueprint_score, drawing_stats
from bluepri.eval.results import EvalResult

__all__ = [
    "DrawingStats",
    "EvalResult",
    "PaletteScore",
    "blueprint_score",
    "drawing_stats",
    "evaluate",
    "heldout_loss",
    "heldout_losses",
]
