"""Models: references (hub id, local folder, `tiny:`), loading, and the tiny offline builders."""

from bluepri.models.loading import (
    Captioner,
    bluepri_home,
    load_base,
    load_captioner,
    load_refiner,
    load_vae,
    resolve_ref,
)

__all__ = [
    "Captioner",
    "bluepri_home",
    "load_base",
    "load_captioner",
    "load_refiner",
    "load_vae",
    "resolve_ref",
]
