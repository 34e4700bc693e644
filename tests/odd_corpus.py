"""A folder of odd, broken and duplicate image files, and what the data stage must do with each.

`build_odd_corpus(folder)` writes the files and returns {file name: expected outcome}:
None for a good file that must end up in the cache, a decode skip reason
(`bluepri.data.decode`) for a bad one, or "exact_duplicate" / "near_duplicate" for a copy.
Copies are named `zz_...` so that they come after their originals in sorted-name order:
the expectation assumes the dedup pass sees files in that order (first seen is kept).

Every picture is a distinct, structured "blueprint" (rooms, walls and circles on blue
ground) drawn from the seed: not noise, whose perceptual hashes are unstable, and
different enough from each other that no two good files are near duplicates.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from bluepri.data.decode import (
    EMPTY_FILE,
    EXTREME_ASPECT_RATIO,
    NOT_AN_IMAGE,
    TOO_MANY_PIXELS,
    TOO_SMALL,
    TRUNCATED,
    UNREADABLE,
    UNSUPPORTED_FORMAT,
)
from bluepri.data.dedup import EXACT_DUPLICATE, NEAR_DUPLICATE

# Files whose decoded look the tests check in detail.
EXIF_ROTATED = "exif_orientation6.jpg"
EXIF_STORED_SIZE = (200, 120)  # (w, h) as stored; displayed as (120, 200)
SIXTEEN_BIT = "grey_16bit.png"
PALETTE_TRANSPARENT = "palette_transparent.png"
LA_TRANSPARENT = "grey_alpha_la.png"
TRANSPARENT_BAND = 0.3  # the left 30% of the transparent files is fully transparent
BOMB = "bomb_20000x20000.png"
BOMB_SIDE = 20_000

# Normal good pictures: (file name, (width, height)).
_NORMAL_GOOD = [
    ("good_00.png", (256, 256)),
    ("good_01.png", (320, 200)),
    ("good_02.png", (200, 320)),
    ("good_03.png", (180, 140)),
    ("good_04.jpg", (400, 300)),
    ("good_05.png", (128, 128)),
    ("good_06.webp", (96, 160)),
    ("good_07.png", (240, 240)),
]


def blueprint_drawing(index: int, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A distinct blueprint-like RGB picture for (seed, index): rooms, walls, circles on blue."""
    rng = np.random.default_rng([seed, index])
    width, height = size
    ground = (int(rng.integers(10, 40)), int(rng.integers(40, 80)), int(rng.integers(120, 170)))
    image = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(image)
    # Large filled rooms of different brightness give each picture its own low-frequency
    # layout, which is what a perceptual hash sees.
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width * 2 // 3)), int(rng.integers(0, height * 2 // 3))
        x1 = int(min(width - 1, x0 + rng.integers(width // 5, width // 2)))
        y1 = int(min(height - 1, y0 + rng.integers(height // 5, height // 2)))
        shade = int(rng.integers(60, 240))
        draw.rectangle([x0, y0, x1, y1], fill=(shade // 3, shade // 2, shade), outline="white")
    for _ in range(6):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(points, fill=(230, 240, 255), width=2)
    cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
    radius = int(rng.integers(min(size) // 8, min(size) // 3))
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline="white", width=3)
    return image


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def decompression_bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit PNG of side x side zeros: ~50 KB on disk, side² pixels when decoded."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits, all zero
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _with_transparent_band(image: Image.Image) -> Image.Image:
    """`image` (L or RGB) plus an alpha channel that is 0 on the left band, 255 elsewhere."""
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).rectangle(
        [0, 0, int(image.width * TRANSPARENT_BAND) - 1, image.height - 1], fill=0
    )
    with_alpha = image.copy()
    with_alpha.putalpha(alpha)
    return with_alpha


def _palette_with_transparency(image: Image.Image) -> tuple[Image.Image, int]:
    """`image` quantised to 15 colours plus palette index 15 (black) used as transparent."""
    paletted = image.quantize(colors=15)
    colours = paletted.getpalette()[: 15 * 3]  # may hold fewer than 15 colours
    paletted.putpalette(colours + [0] * (15 * 3 - len(colours)) + [0, 0, 0])
    band = [0, 0, int(image.width * TRANSPARENT_BAND) - 1, image.height - 1]
    ImageDraw.Draw(paletted).rectangle(band, fill=15)
    return paletted, 15


def _exif_rotated_jpeg(image: Image.Image) -> bytes:
    """JPEG stored landscape with EXIF orientation 6 (display rotated 90° clockwise).

    A red block marks the stored top-left corner, so tests can see which way it turned.
    """
    marked = image.copy()
    ImageDraw.Draw(marked).rectangle([0, 0, 39, 29], fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return _encode(marked, "JPEG", quality=95, exif=exif.tobytes())


def _good_files(seed: int) -> dict[str, bytes]:
    files = {
        name: _encode_by_suffix(blueprint_drawing(i, size, seed), name)
        for i, (name, size) in enumerate(_NORMAL_GOOD)
    }
    drawing = iter(range(100, 200))

    def next_picture(size: tuple[int, int]) -> Image.Image:
        return blueprint_drawing(next(drawing), size, seed)

    files["cmyk.jpg"] = _encode(next_picture((220, 180)).convert("CMYK"), "JPEG", quality=95)
    grey = np.asarray(next_picture((160, 200)).convert("L"), dtype=np.uint16)
    files[SIXTEEN_BIT] = _encode(Image.fromarray(grey * 257), "PNG")
    paletted, transparent_index = _palette_with_transparency(next_picture((200, 150)))
    files[PALETTE_TRANSPARENT] = _encode(paletted, "PNG", transparency=transparent_index)
    files[LA_TRANSPARENT] = _encode(
        _with_transparent_band(next_picture((150, 200)).convert("L")), "PNG"
    )
    files["rgba.png"] = _encode(_with_transparent_band(next_picture((180, 180))), "PNG")
    files[EXIF_ROTATED] = _exif_rotated_jpeg(next_picture(EXIF_STORED_SIZE))
    files["bilevel_mode1.png"] = _encode(next_picture((256, 192)).convert("1"), "PNG")
    files["greyscale.jpg"] = _encode(next_picture((192, 256)).convert("L"), "JPEG")
    return files


def _encode_by_suffix(image: Image.Image, name: str) -> bytes:
    suffix = Path(name).suffix
    if suffix == ".jpg":
        return _encode(image, "JPEG", quality=92)
    if suffix == ".webp":
        return _encode(image, "WEBP", lossless=True)
    return _encode(image, "PNG")


def _bad_files(seed: int) -> dict[str, tuple[bytes, str]]:
    picture = blueprint_drawing(300, (240, 200), seed)
    png = _encode(picture, "PNG")
    jpeg = _encode(picture, "JPEG", quality=90)
    corrupt = bytearray(_encode(blueprint_drawing(301, (240, 200), seed), "PNG"))
    middle = len(corrupt) // 2
    corrupt[middle : middle + 64] = bytes(b ^ 0x5A for b in corrupt[middle : middle + 64])
    return {
        "truncated.png": (png[: len(png) * 6 // 10], TRUNCATED),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], TRUNCATED),
        "empty.png": (b"", EMPTY_FILE),
        "notes_renamed.png": (b"Meeting notes: revise the north elevation.\n" * 20, NOT_AN_IMAGE),
        # An icon's directory need not tell the size its entry decodes to: never decoded.
        "icon_renamed.png": (
            _encode(blueprint_drawing(304, (128, 128), seed), "ICO"),
            UNSUPPORTED_FORMAT,
        ),
        "corrupt_data.png": (bytes(corrupt), UNREADABLE),
        "one_pixel.png": (_encode(Image.new("RGB", (1, 1), (20, 50, 150)), "PNG"), TOO_SMALL),
        "tiny_48x48.png": (_encode(blueprint_drawing(302, (48, 48), seed), "PNG"), TOO_SMALL),
        BOMB: (decompression_bomb_png(), TOO_MANY_PIXELS),
        "panorama_1200x80.png": (
            _encode(blueprint_drawing(303, (1200, 80), seed), "PNG"),
            EXTREME_ASPECT_RATIO,
        ),
    }


def _duplicate_files(seed: int) -> dict[str, tuple[bytes, str]]:
    exact_source = blueprint_drawing(3, _NORMAL_GOOD[3][1], seed)  # good_03.png's pixels
    marked = PngImagePlugin.PngInfo()
    marked.add_text("Comment", "same pixels, different bytes")
    near_jpeg_source = blueprint_drawing(5, _NORMAL_GOOD[5][1], seed)  # good_05.png
    near_pixels_source = blueprint_drawing(7, _NORMAL_GOOD[7][1], seed).copy()  # good_07.png
    for x in range(0, 40, 4):
        near_pixels_source.putpixel((x + 50, 60), (255, 255, 0))
    return {
        "zz_exact_dup_of_good_03.png": (
            _encode(exact_source, "PNG", compress_level=1, pnginfo=marked),
            EXACT_DUPLICATE,
        ),
        "zz_near_dup_jpeg_of_good_05.jpg": (
            _encode(near_jpeg_source, "JPEG", quality=90),
            NEAR_DUPLICATE,
        ),
        "zz_near_dup_pixels_of_good_07.png": (_encode(near_pixels_source, "PNG"), NEAR_DUPLICATE),
    }


def build_odd_corpus(folder: Path, *, seed: int = 0) -> dict[str, str | None]:
    """Write the corpus into `folder`; return {file name: expected skip/dedup reason or None}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name, data in _good_files(seed).items():
        (folder / name).write_bytes(data)
        expected[name] = None
    for name, (data, reason) in {**_bad_files(seed), **_duplicate_files(seed)}.items():
        (folder / name).write_bytes(data)
        expected[name] = reason
    return dict(sorted(expected.items()))


def tiny_prepare(source: Path, out: Path, **overrides):
    """A prepare config on the tiny models at 64 px: what data-stage tests run."""
    from bluepri.config import PrepareConfig

    values = dict(
        source=str(source),
        out=str(out),
        resolution=64,
        center_crop=True,
        base="tiny:base",
        captioner="tiny:blip",
        encode_batch_size=4,
    )
    return PrepareConfig(**{**values, **overrides})


def count_pixel_loads(monkeypatch) -> list[str]:
    """The formats whose pixels PIL decodes from now on (a spy on `ImageFile.load`)."""
    from PIL import ImageFile

    calls: list[str] = []
    original_load = ImageFile.ImageFile.load

    def spying_load(self):
        calls.append(self.format)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    return calls
