"""Evaluation: held-out denoising loss of an adapter (CLIP score, FID/KID and reports follow)."""

from bluepri.eval.heldout import heldout_loss

__all__ = ["heldout_loss"]
