"""decode_image on the odd corpus and on hand-made edge cases; the content hashes."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from PIL import Image

from bluepri.data.decode import (
    SKIP_REASONS,
    TOO_MANY_PIXELS,
    TOO_SMALL,
    Decoded,
    decode_image,
    hamming,
    perceptual_hash,
    pixel_sha256,
)
from odd_corpus import (
    BOMB,
    EXIF_ROTATED,
    EXIF_STORED_SIZE,
    LA_TRANSPARENT,
    PALETTE_TRANSPARENT,
    SIXTEEN_BIT,
    TRANSPARENT_BAND,
    blueprint_drawing,
    build_odd_corpus,
    count_pixel_loads,
    decompression_bomb_png,
)


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd_corpus")
    expected = build_odd_corpus(folder)
    decoded = {name: decode_image((folder / name).read_bytes()) for name in expected}
    return expected, decoded


def test_every_corpus_file_gets_its_expected_decode_outcome(corpus):
    expected, decoded = corpus
    outcomes = {name: result.skip_reason for name, result in decoded.items()}
    # Duplicates decode fine: dedup, not decode, drops them.
    wanted = {
        name: (reason if reason in SKIP_REASONS else None) for name, reason in expected.items()
    }
    assert outcomes == wanted
    assert len({reason for reason in expected.values() if reason}) >= 9


def test_good_corpus_files_are_loaded_rgb(corpus):
    expected, decoded = corpus
    for name, reason in expected.items():
        if reason is not None and reason in SKIP_REASONS:
            continue
        result = decoded[name]
        assert result.ok and result.image.mode == "RGB", name
        assert np.asarray(result.image).shape == (result.image.height, result.image.width, 3)


def test_skips_carry_a_detail(corpus):
    _, decoded = corpus
    for name, result in decoded.items():
        if not result.ok:
            assert result.image is None and result.detail, name


def test_exif_orientation_6_swaps_sides_and_turns_clockwise(corpus):
    _, decoded = corpus
    image = decoded[EXIF_ROTATED].image
    stored_w, stored_h = EXIF_STORED_SIZE
    assert image.size == (stored_h, stored_w)
    # The red block at the stored top-left must end up top-right after a clockwise turn.
    red, green, blue = image.getpixel((image.width - 10, 10))
    assert red > 200 and green < 60 and blue < 60
    assert image.getpixel((10, 10))[0] < 150


@pytest.mark.parametrize("name", [PALETTE_TRANSPARENT, LA_TRANSPARENT, "rgba.png"])
def test_transparency_is_composited_on_white(corpus, name):
    _, decoded = corpus
    pixels = np.asarray(decoded[name].image)
    band = pixels[:, : int(pixels.shape[1] * TRANSPARENT_BAND) - 1]
    assert (band == 255).all()
    assert (pixels[:, -pixels.shape[1] // 3 :] != 255).any()


def test_partial_alpha_blends_towards_white():
    half_red = Image.new("RGBA", (80, 80), (255, 0, 0, 128))
    result = decode_image(_encode(half_red))
    assert result.original_mode == "RGBA"
    red, green, blue = result.image.getpixel((40, 40))
    assert red == 255 and 120 <= green <= 135 and green == blue


def test_sixteen_bit_grey_is_scaled_not_clipped():
    levels = np.tile(np.arange(256, dtype=np.uint16), (64, 1))  # 64 x 256
    result = decode_image(_encode(Image.fromarray(levels * 257)))
    assert result.original_mode.startswith("I")
    grey = np.asarray(result.image)[:, :, 0]
    np.testing.assert_array_equal(grey, levels.astype(np.uint8))


def test_sixteen_bit_corpus_file_is_not_saturated(corpus):
    _, decoded = corpus
    grey = np.asarray(decoded[SIXTEEN_BIT].image)
    assert grey.mean() < 200 and (grey < 100).mean() > 0.3


def test_32_bit_int_and_float_greys_are_scaled():
    ints = Image.fromarray(np.full((64, 64), 32896, dtype=np.int32))  # 128 * 257
    assert ints.mode == "I"
    assert decode_image(_encode(ints, "TIFF")).image.getpixel((0, 0)) == (128, 128, 128)
    floats = Image.fromarray(np.full((64, 64), 0.5, dtype=np.float32))
    assert floats.mode == "F"
    assert decode_image(_encode(floats, "TIFF")).image.getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_keeps_its_colour():
    colour = (200, 30, 40)
    cmyk = Image.new("RGB", (96, 96), colour).convert("CMYK")
    result = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert result.original_mode == "CMYK"
    assert np.abs(np.subtract(result.image.getpixel((48, 48)), colour)).max() <= 6


def test_bilevel_and_palette_modes_convert():
    bilevel = Image.new("1", (64, 64), 1)
    assert decode_image(_encode(bilevel)).image.getpixel((3, 3)) == (255, 255, 255)
    paletted = blueprint_drawing(0, (100, 80)).quantize(colors=8)
    result = decode_image(_encode(paletted))
    assert result.original_mode == "P" and result.image.mode == "RGB"


@pytest.mark.parametrize("side", [20_000, 9_000])  # beyond PIL's own limit; beyond only ours
def test_decompression_bomb_is_refused_without_decoding(monkeypatch, side):
    bomb = decompression_bomb_png(side)
    assert len(bomb) < 200_000
    loads = count_pixel_loads(monkeypatch)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = decode_image(bomb)
    peak_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert result.skip_reason == TOO_MANY_PIXELS
    assert loads == []
    assert peak_growth_kib < 50_000


def test_corpus_bomb_is_the_big_one(corpus):
    _, decoded = corpus
    assert decoded[BOMB].skip_reason == TOO_MANY_PIXELS


def test_size_limits_are_configurable(monkeypatch):
    data = _encode(blueprint_drawing(1, (256, 128)))
    loads = count_pixel_loads(monkeypatch)
    assert decode_image(data, max_pixels=256 * 128 - 1).skip_reason == TOO_MANY_PIXELS
    assert decode_image(data, min_side=129).skip_reason == TOO_SMALL
    assert decode_image(data, max_aspect_ratio=1.5).skip_reason == "extreme_aspect_ratio"
    assert loads == []
    assert decode_image(data, max_aspect_ratio=2.0).ok


def test_damaged_files_never_raise():
    original = _encode(blueprint_drawing(2, (160, 120)))
    rng = np.random.default_rng(0)
    for _ in range(60):
        damaged = bytearray(original)
        for position in rng.integers(0, len(damaged), size=int(rng.integers(1, 20))):
            damaged[position] = int(rng.integers(0, 256))
        cut = int(rng.integers(8, len(damaged) + 1))
        result = decode_image(bytes(damaged[:cut]))
        assert isinstance(result, Decoded)
        assert result.ok or result.skip_reason in SKIP_REASONS


def test_pixel_hash_sees_pixels_not_bytes():
    picture = blueprint_drawing(4, (120, 90))
    as_png = decode_image(_encode(picture)).image
    as_bmp = decode_image(_encode(picture, "BMP")).image
    assert pixel_sha256(as_png) == pixel_sha256(as_bmp)
    changed = as_png.copy()
    changed.putpixel((0, 0), (0, 0, 0))
    assert pixel_sha256(changed) != pixel_sha256(as_png)


def test_pixel_hash_includes_the_size():
    pixels = bytes(range(6)) * 4 * 6  # the same bytes as 6x4 and 4x6 RGB
    wide = Image.frombytes("RGB", (6, 4), pixels[: 6 * 4 * 3])
    tall = Image.frombytes("RGB", (4, 6), pixels[: 6 * 4 * 3])
    assert pixel_sha256(wide) != pixel_sha256(tall)


def test_perceptual_hash_and_hamming():
    picture = blueprint_drawing(6, (200, 160))
    reencoded = Image.open(io.BytesIO(_encode(picture, "JPEG", quality=85))).convert("RGB")
    other = blueprint_drawing(7, (200, 160))
    phash = perceptual_hash(picture)
    assert len(phash) == 16 and int(phash, 16) >= 0
    assert hamming(phash, phash) == 0
    assert hamming(phash, perceptual_hash(reencoded)) <= 4
    assert hamming(phash, perceptual_hash(other)) > 12
    assert hamming("00", "ff") == 8
    with pytest.raises(ValueError):
        hamming("00", "000")
