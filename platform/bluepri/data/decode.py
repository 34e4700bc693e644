"""Decode and validate one image file's bytes into a clean RGB picture, or say why not.

This module owns the first gate of the data stage: whatever a user's folder holds
(zero-byte files, text renamed `.png`, truncated downloads, CMYK scans, 16-bit greyscale
exports, transparent PNGs, decompression bombs, icons that hide a giant PNG), `decode_image`
returns a `Decoded` that either carries an RGB image ready for the transforms or a skip
reason from the fixed set below. It never raises for bad file content: a prepare job over
100k files must not die on file 73,512.

Memory is bounded before and during decoding. Only formats whose header states the size that
is decoded are opened (`DECODED_FORMATS`), so the size guard runs on the header, before any
pixel is decoded. Conversion to RGB runs in bands of rows, so no whole-image intermediate
(float arrays, RGBA copies) exists beside the source and the result. Peak memory of decoding
one image is at most `PEAK_RGB_MULTIPLE` x its RGB size (width x height x 3 bytes) +
`PEAK_CONSTANT_BYTES`; `BUFFERING_DECODER_MULTIPLE` instead for the two decoders that hold
whole-image buffers of their own (see there). tests/test_decode_memory.py measures it.

It also owns the two content hashes deduplication needs: `pixel_sha256` (exact, on the
decoded pixels, so the same picture saved as PNG and BMP is one picture) and
`perceptual_hash` (imagehash's pHash, for near-duplicates such as JPEG re-encodes).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

# Skip reasons: the manifest counts skipped files under exactly these strings.
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
TRUNCATED = "truncated"
TOO_SMALL = "too_small"
TOO_MANY_PIXELS = "too_many_pixels"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
UNREADABLE = "unreadable"

SKIP_REASONS = (
    EMPTY_FILE,
    NOT_AN_IMAGE,
    UNSUPPORTED_FORMAT,
    TRUNCATED,
    TOO_SMALL,
    TOO_MANY_PIXELS,
    EXTREME_ASPECT_RATIO,
    UNREADABLE,
)

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_ASPECT_RATIO = 4.0

# Formats whose header states the size of the frame that `load` decodes, so the size guard
# can run before decoding. Left out on purpose: containers (ICO, ICNS, CUR) whose directory
# may name a small icon while the entry holds a giant PNG; EPS/PDF-like formats that PIL
# decodes by running Ghostscript; and the long tail nobody draws blueprints in.
DECODED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG includes MPO

# The memory bound decoding keeps: streaming decoders (PNG, BMP, GIF, TIFF, baseline JPEG)
# fill PIL's image directly, and conversion holds at most the source + the RGB result
# (PIL stores RGB in 4 bytes a pixel: <= 8 bytes a pixel, 2.7x the RGB bytes).
PEAK_RGB_MULTIPLE = 3
PEAK_CONSTANT_BYTES = 64 * 2**20
# libwebp (two RGBA canvases + a copy of the frame) and libjpeg in progressive mode (the
# whole image's DCT coefficients, 8 bytes a pixel for CMYK) hold buffers of their own while
# PIL loads the frame: up to 16 bytes a pixel.
BUFFERING_DECODER_MULTIPLE = 6

# Rows are converted about 256k pixels at a time: band-sized temporaries stay a few MB.
BAND_PIXELS = 1 << 18

# Blueprints are drawn on paper: transparent regions become paper white, not black.
PAPER_WHITE = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


def peak_bytes_bound(width: int, height: int, *, buffering_decoder: bool = False) -> int:
    """The most memory decoding a width x height image may take (what the tests hold us to)."""
    multiple = BUFFERING_DECODER_MULTIPLE if buffering_decoder else PEAK_RGB_MULTIPLE
    return multiple * width * height * 3 + PEAK_CONSTANT_BYTES


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
        opened = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
    except UnidentifiedImageError:
        return _unidentified(data)

    header_size = opened.size
    problem = _header_problem(header_size, max_pixels, min_side, max_aspect_ratio)
    if problem is not None:
        return problem

    try:
        opened.load()
    except OSError as err:
        reason = TRUNCATED if "truncated" in str(err).lower() else UNREADABLE
        return _skipped(reason, str(err))
    if opened.size != header_size:
        # Never expected of DECODED_FORMATS; the guard above checked the header's size.
        return _skipped(UNREADABLE, f"decoded {opened.size}, header said {header_size}")

    original_mode, source_format = opened.mode, opened.format or ""
    orientation = _exif_orientation(opened)
    return Decoded(
        image=_rgb_oriented(opened, orientation),
        original_mode=original_mode,
        source_format=source_format,
    )


def _unidentified(data: bytes) -> Decoded:
    """Why the decoded formats did not open `data`: another format, or not an image.

    Only PIL's prefix checks run: opening the file would be unsafe (ICO decodes its
    largest entry while opening).
    """
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            recognised = accept is not None and bool(accept(prefix))
        except Exception:
            recognised = False
        if recognised:
            return _skipped(
                UNSUPPORTED_FORMAT, f"{fmt} is not decoded (decoded: {', '.join(DECODED_FORMATS)})"
            )
    return _skipped(NOT_AN_IMAGE, "no image format recognises the content")


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


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8), read before conversion: TIFF keeps it in its own tags."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        # A malformed EXIF block says nothing about the pixels, which decoded fine:
        # keep the picture as stored rather than losing it.
        return 1
    return value if value in _TRANSPOSE_FOR_ORIENTATION else 1


def _rgb_oriented(opened: Image.Image, orientation: int) -> Image.Image:
    """The loaded image as an RGB picture the right way up, holding at most two full-size
    images at any time: each step's source is released once its result exists."""
    rgb = to_rgb(opened)
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        if rgb is not opened:
            opened.close()
        turned = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
        rgb.close()
        return turned
    if rgb is opened:
        # Detach from the file object and its buffer (a multi-frame image keeps them).
        rgb = opened.copy()
    opened.close()
    return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha on white, 16-bit/float scaled not clipped, CMYK by ICC.

    The conversion is per pixel, so it runs band by band into the result: the only
    full-size images are `image` and the RGB result.
    """
    if image.mode == "RGB":
        return image
    convert = _band_converter(image)
    rgb = Image.new("RGB", image.size)
    for top, band in _row_bands(image):
        rgb.paste(convert(band), (0, top))
    return rgb


def _row_bands(image: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    width, height = image.size
    rows = max(1, BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield top, image.crop((0, top, width, min(height, top + rows)))


def _band_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A band -> RGB band function for `image`'s mode (whole-image facts computed once)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        to_grey = _grey_scaler(image)
        return lambda band: Image.fromarray(to_grey(np.asarray(band))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_paper
    if mode == "CMYK":
        return _cmyk_converter(image)
    # 1, L, P (opaque), YCbCr, RGBX, HSV: PIL's own conversion is exact for these.
    return lambda band: band.convert("RGB")


def _composite_on_paper(band: Image.Image) -> Image.Image:
    rgba = band.convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (*PAPER_WHITE, 255))
    return Image.alpha_composite(paper, rgba).convert("RGB")


def _cmyk_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    icc = image.info.get("icc_profile")
    if icc:
        # PIL's built-in CMYK->RGB ignores the press profile and over-saturates; a
        # profile-driven conversion is what a viewer shows.
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            transform = ImageCms.buildTransform(source, srgb, "CMYK", "RGB")
            return lambda band: ImageCms.applyTransform(band, transform)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return lambda band: band.convert("RGB")


def _grey_scaler(image: Image.Image) -> Callable[[np.ndarray], np.ndarray]:
    """16-bit, 32-bit int and float greyscale values -> uint8, scaling the full range.

    PIL's own `convert("L")` clips every value above 255 to white, which turns a 16-bit
    scan into a blank page. Integer paths stay integer; float work is band-sized.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_uint8
    if image.mode == "F":
        low, high = _finite_extrema(image)
        if low >= 0.0 and high <= 1.0:
            return lambda values: _rounded_uint8(_finite(values) * 255.0)
        return lambda values: _stretched(_finite(values), low, high)
    low, high = image.getextrema()
    if low >= 0 and high <= 65535:
        return _sixteen_bit_to_uint8
    return lambda values: _stretched(values, float(low), float(high))


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    # round(v / 257) in integers (257 is odd, so v / 257 never ends in exactly .5):
    # maps 0->0, 65535->255, and v*257 -> v.
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _finite(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _finite_extrema(image: Image.Image) -> tuple[float, float]:
    lows, highs = [], []
    for _, band in _row_bands(image):
        values = _finite(np.asarray(band))
        lows.append(values.min())
        highs.append(values.max())
    return float(min(lows)), float(max(highs))


def _stretched(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _rounded_uint8((values.astype(np.float64) - low) * (255.0 / (high - low)))


def _rounded_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: equal iff the pictures are identical.

    Hashed band by band: the same digest as over `tobytes()`, without a full-size copy.
    """
    rgb = image if image.mode == "RGB" else to_rgb(image)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    for _, band in _row_bands(rgb):
        digest.update(band.tobytes())
    return digest.hexdigest()


def perceptual_hash(image: Image.Image) -> str:
    """imagehash's 64-bit DCT pHash as 16 hex digits; near-identical pictures differ in few bits."""
    return str(imagehash.phash(image))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths cannot be compared: {a!r}, {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()
