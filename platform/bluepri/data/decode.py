"""Decode and validate one image file's bytes into a clean RGB picture, or say why not.

This module owns the first gate of the data stage: whatever a user's folder holds
(zero-byte files, text renamed `.png`, truncated downloads, CMYK scans, 16-bit greyscale
exports, transparent PNGs, decompression bombs), `decode_image` returns a `Decoded` that
either carries an RGB image ready for the transforms or a skip reason from the fixed set
below. It never raises for bad file content: a prepare job over 100k files must not die
on file 73,512.

It also owns the two content hashes deduplication needs: `pixel_sha256` (exact, on the
decoded pixels, so the same picture saved as PNG and BMP is one picture) and
`perceptual_hash` (imagehash's pHash, for near-duplicates such as JPEG re-encodes).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Skip reasons: the manifest counts skipped files under exactly these strings.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
TOO_SMALL = "too_small"
TOO_MANY_PIXELS = "too_many_pixels"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
UNREADABLE = "unreadable"

SKIP_REASONS = (
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TRUNCATED,
    TOO_SMALL,
    TOO_MANY_PIXELS,
    EXTREME_ASPECT_RATIO,
    UNREADABLE,
)

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_ASPECT_RATIO = 4.0

# Blueprints are drawn on paper: transparent regions become paper white, not black.
PAPER_WHITE = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True, eq=False)
class Decoded:
    """One file's outcome: `image` (RGB, oriented, loaded) or `skip_reason` + `detail`."""

    image: Image.Image | None = None
    original_mode: str = ""
    source_format: str = ""
    skip_reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.skip_reason is None


def _skipped(reason: str, detail: str) -> Decoded:
    return Decoded(skip_reason=reason, detail=detail)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> Decoded:
    """Decode `data` to an RGB image with EXIF orientation applied, or return why it is skipped.

    Sizes are checked from the header before any pixel is decoded, so a 20000x20000 bomb
    costs a few kilobytes of parsing, not 400 MB of memory.
    """
    if not data:
        return _skipped(EMPTY_FILE, "the file has 0 bytes")
    with warnings.catch_warnings():
        # Our own max_pixels check is the guard; PIL's warning between its soft and hard
        # limits would only be noise (and would fire for sizes the user allowed).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _decode_checked(data, max_pixels, min_side, max_aspect_ratio)
        except Image.DecompressionBombError as err:
            return _skipped(TOO_MANY_PIXELS, str(err))
        except Exception as err:
            # PIL's format plugins raise almost anything on malformed input (struct.error,
            # ValueError, SyntaxError, MemoryError...): bad content must skip, not crash.
            return _skipped(UNREADABLE, f"{type(err).__name__}: {err}")


def _decode_checked(
    data: bytes, max_pixels: int, min_side: int, max_aspect_ratio: float
) -> Decoded:
    try:
        opened = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _skipped(NOT_AN_IMAGE, "no image format recognises the content")

    problem = _header_problem(opened.size, max_pixels, min_side, max_aspect_ratio)
    if problem is not None:
        return problem

    try:
        opened.load()
    except OSError as err:
        reason = TRUNCATED if "truncated" in str(err).lower() else UNREADABLE
        return _skipped(reason, str(err))

    original_mode = opened.mode
    rgb = to_rgb(_apply_exif_orientation(opened))
    if rgb is opened:
        # Drop the reference to the source buffer and file metadata.
        rgb = rgb.copy()
    return Decoded(image=rgb, original_mode=original_mode, source_format=opened.format or "")


def _header_problem(
    size: tuple[int, int], max_pixels: int, min_side: int, max_aspect_ratio: float
) -> Decoded | None:
    width, height = size
    if width * height > max_pixels:
        return _skipped(TOO_MANY_PIXELS, f"{width}x{height} exceeds max_pixels={max_pixels}")
    if min(width, height) < min_side:
        return _skipped(TOO_SMALL, f"{width}x{height} has a side under min_side={min_side}")
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        return _skipped(
            EXTREME_ASPECT_RATIO,
            f"{width}x{height} has aspect ratio {ratio:.1f} > {max_aspect_ratio}",
        )
    return None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # A malformed EXIF block says nothing about the pixels, which decoded fine:
        # keep the picture as stored rather than losing it.
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha on white, 16-bit/float scaled not clipped, CMYK by ICC."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_bit_depth_to_grey(image).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_paper(image)
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    # 1, L, P (opaque), YCbCr, RGBX, HSV: PIL's own conversion is exact for these.
    return image.convert("RGB")


def _composite_on_paper(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (*PAPER_WHITE, 255))
    return Image.alpha_composite(paper, rgba).convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        # PIL's built-in CMYK->RGB ignores the press profile and over-saturates; a
        # profile-driven conversion is what a viewer shows.
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image.convert("RGB")


def _high_bit_depth_to_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float greyscale to 8-bit L by scaling the full range.

    PIL's own `convert("L")` clips every value above 255 to white, which turns a 16-bit
    scan into a blank page.
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        in_unit_range = values.min() >= 0.0 and values.max() <= 1.0
        scaled = values * 255.0 if in_unit_range else _stretch(values)
    elif image.mode in _SIXTEEN_BIT_MODES or (values.min() >= 0 and values.max() <= 65535):
        # 65535 / 255 = 257 exactly: maps 0->0, 65535->255, and v*257 -> v.
        scaled = values / 257.0
    else:
        scaled = _stretch(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: equal iff the pictures are identical."""
    rgb = image if image.mode == "RGB" else to_rgb(image)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def perceptual_hash(image: Image.Image) -> str:
    """imagehash's 64-bit DCT pHash as 16 hex digits; near-identical pictures differ in few bits."""
    return str(imagehash.phash(image))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths cannot be compared: {a!r}, {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()
