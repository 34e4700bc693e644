"""Does a render look like a blueprint, a plain drawing on paper, or noise? Pixel statistics.

`blueprint_score` is the domain metric the adapter is judged on: the share of an image's
pixels in the blueprint palette (blue ground, light line work) and, for contrast, in the
paper palette (white or cream ground, dark ink). `drawing_stats` says whether an image is a
drawing at all: a drawing has one near-uniform ground and a few pixels that stand out from
it; noise has neither. Both take PIL images or HxWx3 uint8 arrays and average per image, so
a large render weighs as much as a small one.

The palettes, in HSV (hue in degrees, saturation and value in [0, 1]), are read off the
synthetic sets (`bluepri.data.synth`, tests/test_eval_palette.py measures them):

- Blueprint ground: the synthetic ground is RGB (8-40, 50-100, 130-196), shaded +-12% and
  crossed by grid lines; its saturated pixels measure hue 206-233 and value 0.45-0.91
  (0.1st-99.9th percentiles). The band (hue 195-245, saturation > 0.35, value 0.2-0.92)
  holds it with room for a model's drift and leaves out greys, cyans and purples.
- Blueprint line work: inks (200-245, 236-248, 255) and "soft" inks 70% of the way from
  the ground to them: light (value > 0.75) and at most blue-tinted (saturation < 0.45).
- Paper ground: white to cream: value > 0.8, saturation < 0.2.
- Paper ink: dark (value < 0.4) whatever the hue, since dark pixels' hue is unstable; the
  darkest blueprint ground (value 0.45) stays outside.

Light line work and white paper are the same pixels, as are dark ink and a dark random
pixel. So line work counts towards a palette in proportion to how much of the image is that
palette's ground, fully once half of it is (`GROUND_FOR_FULL_LINES`): a white sheet with
dark lines scores near 0 as a blueprint, a blue sheet with white lines near 1, and noise,
whose few ground-coloured pixels are scattered, low on both. The ramp keeps the score
continuous as a training run moves the ground from white to blue.

Measured (seed 0; 64-128 px sheets, then 192-512 px): synthetic blueprints score blueprint
0.97-1.00 and paper 0.00-0.12 (their white line work is paper-coloured); the `paper` style's
sheets blueprint 0.00 and paper 0.73-0.88 (0.99-1.00 at 192-512 px: downscaling greys the
ink's edges into neither palette); Gaussian and uniform RGB noise blueprint ~0.11, paper
<0.03; the random tiny:base model's bluish texture blueprint ~0.21, paper 0.00. Between
blueprint 0.2 and 0.97 a render is part way: some blue ground, or lines on too little of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel

BLUE_HUE = (195.0, 245.0)  # degrees
BLUE_MIN_SATURATION = 0.35
BLUE_VALUE = (0.2, 0.92)
LINE_MIN_VALUE = 0.75
LINE_MAX_SATURATION = 0.45
PAPER_MIN_VALUE = 0.8
PAPER_MAX_SATURATION = 0.2
INK_MAX_VALUE = 0.4
GROUND_FOR_FULL_LINES = 0.5

# drawing_stats: distances in RGB (0-255 per channel; black to white is 441). Within 24 of
# the dominant colour lie 56-90% of a synthetic sheet's pixels, either style (uneven exposure
# and the fine grid stay that close), but at most 15% of the random tiny model's textured
# renders and ~1% of RGB noise. Line work is ~230-300 from a blue ground, dark ink ~300-350
# from paper; 120 leaves out the grid and antialiased edges.
BACKGROUND_DISTANCE = 24.0
LINE_DISTANCE = 120.0
MODE_BITS = 4  # the dominant colour is the mean of the most common 16-level RGB bin

ImageLike = Image.Image | np.ndarray


class PaletteScore(BaseModel):
    """Shares of pixels (0-1) in the blueprint and in the paper palette."""

    blueprint: float
    paper: float


class DrawingStats(BaseModel):
    """Shares of pixels (0-1) near the image's dominant colour and far from it."""

    uniform_background: float  # within BACKGROUND_DISTANCE of the dominant colour
    line_pixels: float  # beyond LINE_DISTANCE from it: line work that stands out


def blueprint_score(images: Sequence[ImageLike]) -> PaletteScore:
    """Mean over `images` of each image's blueprint and paper palette shares."""
    scores = [image_palette(rgb_array(image)) for image in non_empty(images)]
    return PaletteScore(
        blueprint=float(np.mean([s.blueprint for s in scores])),
        paper=float(np.mean([s.paper for s in scores])),
    )


def drawing_stats(images: Sequence[ImageLike]) -> DrawingStats:
    """Mean over `images` of each image's background and line-pixel shares."""
    stats = [image_drawing_stats(rgb_array(image)) for image in non_empty(images)]
    return DrawingStats(
        uniform_background=float(np.mean([s.uniform_background for s in stats])),
        line_pixels=float(np.mean([s.line_pixels for s in stats])),
    )


def image_palette(rgb: np.ndarray) -> PaletteScore:
    """One HxWx3 uint8 image's palette shares (see the module docstring for the rule)."""
    hue, saturation, value = hsv(rgb)
    blue = (
        (hue >= BLUE_HUE[0])
        & (hue <= BLUE_HUE[1])
        & (saturation > BLUE_MIN_SATURATION)
        & (value >= BLUE_VALUE[0])
        & (value <= BLUE_VALUE[1])
    )
    blue_ground = blue.mean()
    # A light, fairly saturated blue is both; it is counted once, as ground.
    light_lines = (~blue & (value > LINE_MIN_VALUE) & (saturation < LINE_MAX_SATURATION)).mean()
    paper_ground = ((value > PAPER_MIN_VALUE) & (saturation < PAPER_MAX_SATURATION)).mean()
    dark_ink = (value < INK_MAX_VALUE).mean()
    return PaletteScore(
        blueprint=float(blue_ground + light_lines * line_weight(blue_ground)),
        paper=float(paper_ground + dark_ink * line_weight(paper_ground)),
    )


def line_weight(ground_share: float) -> float:
    """How much a palette's line pixels count, given the share of its ground in the image."""
    return min(1.0, ground_share / GROUND_FOR_FULL_LINES)


def image_drawing_stats(rgb: np.ndarray) -> DrawingStats:
    """One HxWx3 uint8 image's shares near and far from its dominant colour."""
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    distance = np.linalg.norm(pixels - dominant_colour(rgb), axis=1)
    return DrawingStats(
        uniform_background=float((distance <= BACKGROUND_DISTANCE).mean()),
        line_pixels=float((distance > LINE_DISTANCE).mean()),
    )


def dominant_colour(rgb: np.ndarray) -> np.ndarray:
    """The mean colour of the most common coarse RGB bin: the ground, for a drawing. (A
    per-channel median would mix ground and ink channels when the ink covers much.)"""
    pixels = rgb.reshape(-1, 3)
    shift = 8 - MODE_BITS
    bins = pixels >> shift
    keys = (bins[:, 0].astype(np.int32) << (2 * MODE_BITS)) | (bins[:, 1] << MODE_BITS) | bins[:, 2]
    modal = np.bincount(keys).argmax()
    return pixels[keys == modal].astype(np.float32).mean(axis=0)


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1], per pixel."""
    values = rgb.astype(np.float32) / 255.0
    high = values.max(axis=-1)
    spread = high - values.min(axis=-1)
    saturation = np.where(high > 0, spread / np.where(high > 0, high, 1), 0.0)
    safe = np.where(spread > 0, spread, 1)
    red, green, blue = values[..., 0], values[..., 1], values[..., 2]
    hue = np.select(
        [high == red, high == green],
        [((green - blue) / safe) % 6, (blue - red) / safe + 2],
        (red - green) / safe + 4,
    )
    return np.where(spread > 0, hue * 60.0, 0.0), saturation, high


def rgb_array(image: ImageLike) -> np.ndarray:
    """An HxWx3 uint8 array of a PIL image (any mode) or an array (grey, RGB or RGBA)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return array[..., :3]
    raise ValueError(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {array.shape}")


def non_empty(images: Sequence[ImageLike]) -> Sequence[ImageLike]:
    if len(images) == 0:
        raise ValueError("no images to score")
    return images
