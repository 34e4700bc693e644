"""Memory guards of `decode_image` (issue 9, 2.6): the size check runs before any full decode
for every format, and decoding one image peaks at a small multiple of its RGB size.

Every test holds decoding to `decode.peak_bytes_bound`: peak resident memory grows by at most
`PEAK_RGB_MULTIPLE` x (width x height x 3) + `PEAK_CONSTANT_BYTES` while one image is decoded
(`BUFFERING_DECODER_MULTIPLE` for WebP and progressive JPEG, whose libraries buffer the whole
image themselves). Peak memory is measured in a fresh child process (Linux's VmHWM, reset
just before the call), because PIL allocates pixels outside Python's allocator, where
tracemalloc cannot see them. The biggest test images are tiny on disk: streamed zlib rows.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bluepri.data import decode
from bluepri.data.decode import decode_image
from odd_corpus import count_pixel_loads

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's per-process peak RSS"
)

MEASURE_IN_A_CHILD = textwrap.dedent(
    """
    import json, sys
    from bluepri.data.decode import decode_image

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    data = open(sys.argv[1], "rb").read()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM (the peak) to the current RSS
    before = status("VmRSS:")
    result = decode_image(data)
    print(json.dumps({
        "growth": status("VmHWM:") - before,
        "skip_reason": result.skip_reason,
        "size": list(result.image.size) if result.ok else None,
    }))
    """
)


def peak_growth_of_decoding(data: bytes, tmp_path: Path) -> dict:
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_IN_A_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def streamed_png(width: int, height: int, bit_depth: int, colour_type: int, row) -> bytes:
    """A PNG built row by row (`row(y)` -> raw row bytes): big pictures, small files."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(6)
    body = b"".join(compressor.compress(b"\x00" + row(y)) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", body + compressor.flush())
        + _chunk(b"IEND", b"")
    )


def grey16_png(side: int) -> bytes:
    return streamed_png(side, side, 16, 0, lambda y: struct.pack(">H", y * 8 % 65536) * side)


def rgba_png(side: int) -> bytes:
    return streamed_png(side, side, 8, 6, lambda y: bytes((20, 60, 160, y % 256)) * side)


def ico_wrapping(png: bytes) -> bytes:
    """An ICO whose one directory entry says 256x256 but holds `png`, whatever its size."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_ico_wrapping_a_giant_png_is_refused_before_decoding(tmp_path: Path) -> None:
    measured = peak_growth_of_decoding(ico_wrapping(rgba_png(12_000)), tmp_path)
    assert measured["skip_reason"] is not None
    assert measured["growth"] < 32 * 2**20, measured


def test_sixteen_bit_png_at_the_default_pixel_limit_stays_in_bound(tmp_path: Path) -> None:
    side = 8000  # 64 M pixels: exactly the default max_pixels
    measured = peak_growth_of_decoding(grey16_png(side), tmp_path)
    assert measured["size"] == [side, side]
    assert measured["growth"] <= decode.peak_bytes_bound(side, side), measured


def test_rgba_png_stays_in_bound(tmp_path: Path) -> None:
    side = 6000
    measured = peak_growth_of_decoding(rgba_png(side), tmp_path)
    assert measured["size"] == [side, side]
    assert measured["growth"] <= decode.peak_bytes_bound(side, side), measured


def structured_picture(side: int) -> Image.Image:
    """Gradients and lines: compressible, but not a flat colour."""
    ramp = np.arange(side, dtype=np.uint32)
    pixels = np.empty((side, side, 3), dtype=np.uint8)
    pixels[..., 0] = (ramp[None, :] % 256).astype(np.uint8)
    pixels[..., 1] = (ramp[:, None] % 256).astype(np.uint8)
    pixels[..., 2] = 40
    pixels[::7, :, 2] = 220
    return Image.fromarray(pixels)


def in_mode(picture: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(picture.convert("L"), dtype=np.uint16) * 257)
    if mode == "F":
        return Image.fromarray(np.asarray(picture.convert("L"), dtype=np.float32) / 255)
    return picture.convert(mode)


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


ORIENTED_6 = exif_orientation(6)  # turned when decoded: one more full-size image
# (mode, format, save options, whether the decoder library buffers the whole image)
MODES_AND_FORMATS = [
    ("RGB", "PNG", {"compress_level": 1}, False),
    ("LA", "PNG", {"compress_level": 1}, False),
    ("P", "PNG", {"transparency": 3}, False),
    ("I;16", "TIFF", {"compression": "tiff_adobe_deflate"}, False),
    ("F", "TIFF", {}, False),
    ("CMYK", "JPEG", {"quality": 90}, False),
    ("RGB", "JPEG", {"quality": 90, "exif": ORIENTED_6}, False),
    ("RGB", "BMP", {}, False),
    ("P", "GIF", {}, False),
    ("RGBA", "WEBP", {"lossless": True}, True),
    ("CMYK", "JPEG", {"quality": 90, "progressive": True}, True),
]


@pytest.mark.parametrize(
    ("mode", "fmt", "options", "buffering"),
    MODES_AND_FORMATS,
    ids=[f"{m}-{f}-{i}" for i, (m, f, _, _) in enumerate(MODES_AND_FORMATS)],
)
def test_every_mode_and_format_decodes_within_the_bound(
    tmp_path: Path, mode: str, fmt: str, options: dict, buffering: bool
) -> None:
    side = 3000
    data = _encode(in_mode(structured_picture(side), mode), fmt, **options)
    measured = peak_growth_of_decoding(data, tmp_path)
    assert measured["size"] == [side, side], measured
    bound = decode.peak_bytes_bound(side, side, buffering_decoder=buffering)
    assert measured["growth"] <= bound, measured


# -- containers whose decoded size the header does not tell ---------------------------------


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["ICO", "ICNS", "EPS", "PPM", "PCX"])
def test_formats_outside_the_allow_list_are_refused_unopened(monkeypatch, fmt: str) -> None:
    picture = Image.new("RGB", (128, 128), (20, 60, 160))
    if fmt == "EPS":  # PIL would run Ghostscript on it to decode
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 128 128\nshowpage\n"
    else:
        data = _encode(picture, fmt)
    loads = count_pixel_loads(monkeypatch)
    result = decode_image(data)
    assert result.skip_reason == decode.UNSUPPORTED_FORMAT, result
    assert loads == []


def test_ico_with_a_lying_directory_is_refused(monkeypatch) -> None:
    inner = _encode(Image.new("RGBA", (2000, 2000), (20, 60, 160, 255)), "PNG")
    result = decode_image(ico_wrapping(inner), max_pixels=256 * 256)
    assert result.skip_reason == decode.UNSUPPORTED_FORMAT


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_allowed_formats_still_decode(fmt: str) -> None:
    picture = Image.new("RGB", (96, 80), (20, 60, 160))
    result = decode_image(_encode(picture, fmt))
    assert result.ok and result.image.size == (96, 80), result


def test_multi_page_tiff_decodes_its_first_page_within_the_limit() -> None:
    small = Image.new("RGB", (96, 96), (20, 60, 160))
    big = Image.new("RGB", (1000, 1000), (200, 60, 16))
    data = _encode(small, "TIFF", save_all=True, append_images=[big])
    result = decode_image(data, max_pixels=100 * 100)
    assert result.ok and result.image.size == (96, 96)
