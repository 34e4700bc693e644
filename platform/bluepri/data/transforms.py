"""SDXL training preprocessing: resize, crop, flip, and the micro-conditioning time ids.

SDXL is conditioned on how each training picture was made (SDXL paper, section 2.2):
the UNet's `add_time_ids` are `original_size + crop_top_left + target_size`, six ints in
(height, width) / (top, left) order. Getting them wrong trains the model to expect crops
where there are none. `prepare_image` reproduces what diffusers' SDXL training scripts
(`examples/text_to_image/train_text_to_image_sdxl.py` and `..._lora_sdxl.py`,
`preprocess_train`) do, step for step:

1. `original_size = (image.height, image.width)` of the picture as decoded (EXIF
   orientation already applied), before anything else.
2. Resize so the shorter side equals `resolution` (torchvision `Resize(int)`: the longer
   side becomes `int(resolution * long / short)`, truncated).
3. Random flip FIRST: `if random_flip and random() < 0.5: image = hflip(image)`. The
   resized picture is mirrored before cropping, so the crop's left coordinate is measured
   in the mirrored picture. Put in the unflipped frame, a flip turns a crop at `x` into
   `left = resized_width - target_width - x`; a centre crop stays centred, so its left is
   unchanged. (Older versions of those scripts flipped after cropping and set
   `x1 = image.width - x1`, using the already-cropped width; that was fixed upstream by
   moving the flip before the crop. We follow the fixed order.)
4. Crop: centre crop at `top = int(round((H - th) / 2.0))`, `left = int(round((W - tw)
   / 2.0))` (torchvision `CenterCrop`'s formula, Python's round-half-even included), or a
   random crop with `top` drawn from `[0, H - th]` and then `left` from `[0, W - tw]`
   (torchvision `RandomCrop.get_params`' order).
5. `crop_top_left = (top, left)`, `target_size = (th, tw)`; pixels to [-1, 1].

Where we differ, on purpose: the resize filter is LANCZOS (the issue and the paper's
`--resolution` recipe ask for it; diffusers uses bilinear), randomness comes from an
explicit `numpy.random.Generator` (so a prepare run is reproducible from its seed), and
an optional aspect-ratio bucket replaces the square target (SDXL's own multi-aspect
training): the picture is resized to cover the bucket and `target_size` is the bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bluepri.errors import BluepriError

# The SDXL VAE downsamples by 8: pixel sizes must be multiples of 8 to map onto latents.
PIXEL_MULTIPLE = 8
# A bucket's area may differ from resolution**2 by at most this fraction.
BUCKET_AREA_TOLERANCE = 0.1


@dataclass(frozen=True, eq=False)
class Prepared:
    """One training picture and its SDXL micro-conditioning, all sizes as (height, width)."""

    image: Image.Image
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    flipped: bool

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL's `add_time_ids`: original_size + crop_top_left + target_size."""
        return (*self.original_size, *self.crop_top_left, *self.target_size)


def check_resolution(resolution: int) -> None:
    """Raise a one-line BluepriError unless `resolution` is a positive multiple of 8."""
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or resolution <= 0
        or resolution % PIXEL_MULTIPLE
    ):
        raise BluepriError(
            f"resolution must be a positive multiple of {PIXEL_MULTIPLE} "
            f"(the SDXL VAE downsamples by {PIXEL_MULTIPLE}), got {resolution!r}"
        )


def prepare_image(
    image: Image.Image,
    *,
    resolution: int,
    center_crop: bool,
    random_flip: bool,
    rng: np.random.Generator,
    bucket: tuple[int, int] | None = None,
) -> Prepared:
    """Resize, flip, crop `image` to exactly (resolution, resolution) or `bucket` (h, w)."""
    check_resolution(resolution)
    target_h, target_w = (resolution, resolution) if bucket is None else _checked_bucket(bucket)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    original_size = (rgb.height, rgb.width)

    resized = _resize_to_cover(rgb, target_h, target_w)
    # Same short-circuit as diffusers: no random draw is spent when flipping is off.
    flipped = bool(random_flip and rng.random() < 0.5)
    if flipped:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    if center_crop:
        top, left = _center_crop_origin(resized.height, resized.width, target_h, target_w)
    else:
        top, left = _random_crop_origin(resized.height, resized.width, target_h, target_w, rng)
    cropped = resized.crop((left, top, left + target_w, top + target_h))
    return Prepared(
        image=cropped,
        original_size=original_size,
        crop_top_left=(top, left),
        target_size=(target_h, target_w),
        flipped=flipped,
    )


def _checked_bucket(bucket: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(side) for side in bucket)
    if height <= 0 or width <= 0 or height % PIXEL_MULTIPLE or width % PIXEL_MULTIPLE:
        raise BluepriError(f"bucket sides must be positive multiples of 8, got {bucket!r}")
    return height, width


def resized_cover_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """(h, w) after scaling so the picture covers the target; the binding side matches exactly.

    For a square target this is torchvision's `Resize(int)` rule: the shorter side becomes
    the target and the longer side `int(target * long / short)`.
    """
    if target_h / height >= target_w / width:
        return target_h, max(target_w, int(target_h * width / height))
    return max(target_h, int(target_w * height / width)), target_w


def _resize_to_cover(image: Image.Image, target_h: int, target_w: int) -> Image.Image:
    new_h, new_w = resized_cover_size(image.height, image.width, target_h, target_w)
    if (new_h, new_w) == (image.height, image.width):
        return image
    return image.resize((new_w, new_h), Image.Resampling.LANCZOS)


def _center_crop_origin(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    top = max(0, int(round((height - target_h) / 2.0)))
    left = max(0, int(round((width - target_w) / 2.0)))
    return top, left


def _random_crop_origin(
    height: int, width: int, target_h: int, target_w: int, rng: np.random.Generator
) -> tuple[int, int]:
    top = int(rng.integers(0, height - target_h + 1))
    left = int(rng.integers(0, width - target_w + 1))
    return top, left


def aspect_buckets(
    resolution: int, step: int = 64, max_ratio: float = 4.0
) -> list[tuple[int, int]]:
    """(h, w) buckets with sides multiples of `step` and area within 10% of resolution².

    One bucket per short side (plus its transpose), the long side rounded to the nearest
    multiple of `step` that keeps the area near resolution², as in SDXL's bucket list
    (e.g. 1024 -> (1024, 1024), (960, 1088), ..., (512, 2048)). Sorted from the widest
    to the tallest.
    """
    check_resolution(resolution)
    if step <= 0 or step % PIXEL_MULTIPLE:
        raise BluepriError(f"bucket step must be a positive multiple of 8, got {step}")
    area = resolution * resolution
    buckets: set[tuple[int, int]] = set()
    short = step
    while short * short <= area * (1 + BUCKET_AREA_TOLERANCE):
        long = round(area / short / step) * step
        area_error = abs(short * long / area - 1)
        if long >= short and long <= short * max_ratio and area_error <= BUCKET_AREA_TOLERANCE:
            buckets.update({(short, long), (long, short)})
        short += step
    if not buckets:
        raise BluepriError(
            f"no aspect bucket with sides multiple of {step} fits resolution {resolution}; "
            "use a smaller bucket step or a larger resolution"
        )
    return sorted(buckets, key=lambda hw: hw[0] / hw[1])


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to height/width in log space (first on ties).

    Log space makes 2:1 and 1:2 equally far from 1:1, which a plain ratio difference does not.
    """
    if not buckets:
        raise ValueError("nearest_bucket needs at least one bucket")
    log_ratio = math.log(height / width)
    return min(buckets, key=lambda hw: abs(math.log(hw[0] / hw[1]) - log_ratio))


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Per-channel median of the outermost pixels: the paper/background colour."""
    pixels = np.asarray(image.convert("RGB"))
    border = np.concatenate(
        [pixels[0, :], pixels[-1, :], pixels[1:-1, 0], pixels[1:-1, -1]], axis=0
    )
    return tuple(int(v) for v in np.median(border, axis=0))


def augment(
    image: Image.Image,
    rng: np.random.Generator,
    max_rotation_deg: float = 2.0,
    max_scale: float = 0.05,
) -> Image.Image:
    """A small random rotation and zoom about the centre, same size out (off by default).

    Call it on the decoded picture before `prepare_image`, so the time ids still describe
    the picture the model sees. Uncovered corners are filled with the border colour:
    black wedges would teach the model that blueprints have black corners.
    """
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    scale = rng.uniform(1.0 - max_scale, 1.0 + max_scale)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # PIL's affine maps each OUTPUT pixel to an input one, so pass the inverse of
    # "rotate by angle and scale by scale about the centre".
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    centre_x, centre_y = rgb.width / 2.0, rgb.height / 2.0
    inverse = (
        cos,
        sin,
        centre_x - cos * centre_x - sin * centre_y,
        -sin,
        cos,
        centre_y + sin * centre_x - cos * centre_y,
    )
    return rgb.transform(
        rgb.size,
        Image.Transform.AFFINE,
        inverse,
        resample=Image.Resampling.BICUBIC,
        fillcolor=border_colour(rgb),
    )


def to_tensor_input(image: Image.Image) -> np.ndarray:
    """RGB picture to float32 CHW in [-1, 1]: torchvision ToTensor + Normalize([0.5], [0.5])."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    normalised = (pixels - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
