"""Evaluation: held-out denoising loss of an adapter, and how much renders look like
blueprints (palette shares) and like drawings at all (CLIP score, FID/KID and reports follow)."""

from bluepri.eval.heldout import heldout_loss
from bluepri.eval.palette import DrawingStats, PaletteScore, blueprint_score, drawing_stats

__all__ = ["DrawingStats", "PaletteScore", "blueprint_score", "drawing_stats", "heldout_loss"]
