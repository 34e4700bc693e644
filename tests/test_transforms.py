"""SDXL preprocessing: sizes, crops, flips and time ids checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from bluepri.data.transforms import (
    Prepared,
    aspect_buckets,
    augment,
    border_colour,
    nearest_bucket,
    prepare_image,
    resized_cover_size,
    to_tensor_input,
)
from bluepri.errors import BluepriError
from odd_corpus import blueprint_drawing


class ScriptedRng:
    """Stands in for numpy's Generator: returns scripted draws and records integer ranges."""

    def __init__(self, uniform: float = 0.9, integers: tuple[int, ...] = ()):
        self._uniform = uniform
        self._integers = list(integers)
        self.integer_ranges: list[tuple[int, int]] = []

    def random(self) -> float:
        return self._uniform

    def integers(self, low: int, high: int) -> int:
        self.integer_ranges.append((low, high))
        return self._integers.pop(0)


def _picture(width: int, height: int) -> Image.Image:
    return blueprint_drawing(11, (width, height))


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


# A 300 (w) x 200 (h) picture at resolution 128, by hand:
#   original_size = (200, 300)
#   shorter side 200 -> 128, longer side int(128 * 300 / 200) = 192: resized 192 (w) x 128 (h)
#   centre crop: top = round((128 - 128) / 2) = 0, left = round((192 - 128) / 2) = 32
#   random crop: top in [0, 0], left in [0, 64]


def test_centre_crop_time_ids_by_hand():
    image = _picture(300, 200)
    prepared = prepare_image(
        image, resolution=128, center_crop=True, random_flip=False, rng=ScriptedRng()
    )
    assert prepared.time_ids == (200, 300, 0, 32, 128, 128)
    assert prepared.image.size == (128, 128) and not prepared.flipped
    assert _same_pixels(prepared.image, _resized(image, 192, 128).crop((32, 0, 160, 128)))


def test_centre_crop_of_a_tall_picture_by_hand():
    # 200 (w) x 300 (h): resized 128 x 192, top = round(64 / 2) = 32, left = 0.
    prepared = prepare_image(
        _picture(200, 300), resolution=128, center_crop=True, random_flip=False, rng=ScriptedRng()
    )
    assert prepared.time_ids == (300, 200, 32, 0, 128, 128)


def test_centre_crop_rounds_half_to_even_like_torchvision():
    # 302 x 200: longer side int(128 * 302 / 200) = int(193.28) = 193; (193 - 128) / 2 = 32.5,
    # and Python's round(32.5) is 32.
    prepared = prepare_image(
        _picture(302, 200), resolution=128, center_crop=True, random_flip=False, rng=ScriptedRng()
    )
    assert prepared.time_ids == (200, 302, 0, 32, 128, 128)


def test_random_crop_time_ids_by_hand():
    image = _picture(300, 200)
    rng = ScriptedRng(integers=(0, 10))
    prepared = prepare_image(image, resolution=128, center_crop=False, random_flip=False, rng=rng)
    assert rng.integer_ranges == [(0, 1), (0, 65)]  # top in [0, 0], left in [0, 64]
    assert prepared.time_ids == (200, 300, 0, 10, 128, 128)
    assert _same_pixels(prepared.image, _resized(image, 192, 128).crop((10, 0, 138, 128)))


def test_flip_happens_before_the_crop_so_left_is_in_the_mirrored_picture():
    image = _picture(300, 200)
    rng = ScriptedRng(uniform=0.3, integers=(0, 10))  # 0.3 < 0.5: flip
    prepared = prepare_image(image, resolution=128, center_crop=False, random_flip=True, rng=rng)
    assert prepared.flipped
    assert prepared.time_ids == (200, 300, 0, 10, 128, 128)
    # In the unflipped picture that crop starts at 192 - 128 - 10 = 54.
    expected = _resized(image, 192, 128).crop((54, 0, 182, 128))
    assert _same_pixels(prepared.image, expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def test_flip_keeps_a_centre_crop_centred():
    image = _picture(300, 200)
    prepared = prepare_image(
        image, resolution=128, center_crop=True, random_flip=True, rng=ScriptedRng(uniform=0.2)
    )
    assert prepared.flipped and prepared.time_ids == (200, 300, 0, 32, 128, 128)
    expected = _resized(image, 192, 128).crop((32, 0, 160, 128))
    assert _same_pixels(prepared.image, expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def test_no_flip_draw_when_flip_is_off_and_no_flip_above_one_half():
    image = _picture(300, 200)
    kept = prepare_image(
        image, resolution=128, center_crop=True, random_flip=True, rng=ScriptedRng(uniform=0.5)
    )
    assert not kept.flipped


def test_bucket_target_by_hand():
    # 300 x 200 into bucket (192, 320): scale by width 320 / 300 (the binding side),
    # height int(320 * 200 / 300) = 213; centre top = round(21 / 2) = round(10.5) = 10.
    prepared = prepare_image(
        _picture(300, 200),
        resolution=256,
        center_crop=True,
        random_flip=False,
        rng=ScriptedRng(),
        bucket=(192, 320),
    )
    assert prepared.time_ids == (200, 300, 10, 0, 192, 320)
    assert prepared.image.size == (320, 192)


def test_resized_cover_size_matches_torchvision_resize_rule():
    assert resized_cover_size(200, 300, 128, 128) == (128, 192)
    assert resized_cover_size(300, 200, 128, 128) == (192, 128)
    assert resized_cover_size(64, 80, 128, 128) == (128, 160)  # upscaling too
    assert resized_cover_size(200, 300, 192, 320) == (213, 320)


def test_output_sizes_are_exact_for_many_shapes_and_modes():
    rng = np.random.default_rng(3)
    for mode in ("RGB", "L", "RGBA"):
        for _ in range(8):
            width, height = (int(v) for v in rng.integers(40, 400, size=2))
            image = _picture(width, height).convert(mode)
            prepared = prepare_image(
                image, resolution=64, center_crop=False, random_flip=True, rng=rng
            )
            assert prepared.image.size == (64, 64) and prepared.image.mode == "RGB"
            resized_h, resized_w = resized_cover_size(height, width, 64, 64)
            top, left = prepared.crop_top_left
            assert 0 <= top <= resized_h - 64 and 0 <= left <= resized_w - 64
            assert prepared.original_size == (height, width)
            assert all(isinstance(v, int) for v in prepared.time_ids)


def test_same_seed_same_result():
    image = _picture(250, 170)

    def run(seed: int) -> Prepared:
        return prepare_image(
            image,
            resolution=64,
            center_crop=False,
            random_flip=True,
            rng=np.random.default_rng(seed),
        )

    first, second = run(5), run(5)
    assert first.time_ids == second.time_ids and _same_pixels(first.image, second.image)


@pytest.mark.parametrize("resolution", [100, 0, -8, 12.0])
def test_resolution_must_be_a_multiple_of_8(resolution):
    with pytest.raises(BluepriError, match="multiple of 8"):
        prepare_image(
            _picture(100, 100),
            resolution=resolution,
            center_crop=True,
            random_flip=False,
            rng=ScriptedRng(),
        )


def test_bucket_sides_must_be_multiples_of_8():
    with pytest.raises(BluepriError, match="bucket"):
        prepare_image(
            _picture(100, 100),
            resolution=64,
            center_crop=True,
            random_flip=False,
            rng=ScriptedRng(),
            bucket=(60, 64),
        )


@pytest.mark.parametrize("resolution", [128, 256, 512, 1024])
def test_aspect_buckets_are_multiples_of_64_near_the_target_area(resolution):
    buckets = aspect_buckets(resolution)
    area = resolution * resolution
    assert (resolution, resolution) in buckets
    for height, width in buckets:
        assert height % 64 == 0 and width % 64 == 0
        assert abs(height * width / area - 1) <= 0.1
        assert max(height, width) / min(height, width) <= 4.0
        assert (width, height) in buckets
    ratios = [h / w for h, w in buckets]
    assert ratios == sorted(ratios) and len(set(buckets)) == len(buckets)


def test_aspect_buckets_for_1024_look_like_sdxl():
    buckets = aspect_buckets(1024)
    assert {(1024, 1024), (512, 2048), (2048, 512), (768, 1344), (1344, 768)} <= set(buckets)
    assert len(buckets) >= 15


def test_aspect_buckets_errors():
    with pytest.raises(BluepriError, match="multiple of 8"):
        aspect_buckets(100)
    with pytest.raises(BluepriError, match="no aspect bucket"):
        aspect_buckets(32)  # even the smallest 64 x 64 bucket is 4x the area
    assert aspect_buckets(32, step=8)[0][0] % 8 == 0


def test_nearest_bucket_uses_log_aspect_ratio():
    buckets = aspect_buckets(256)  # (128, 512), (192, 320), (256, 256), (320, 192), (512, 128)
    assert nearest_bucket(100, 100, buckets) == (256, 256)
    assert nearest_bucket(200, 300, buckets) == (192, 320)
    assert nearest_bucket(300, 200, buckets) == (320, 192)
    assert nearest_bucket(100, 1000, buckets) == (128, 512)
    # 1:2 is exactly as far from 1:4 as from 1:1 in log space; the first listed wins.
    assert math.isclose(math.log(2), abs(math.log(0.5) - math.log(0.25)))
    assert nearest_bucket(100, 200, [(128, 512), (256, 256)]) == (128, 512)


def test_augment_without_change_is_the_identity():
    image = _picture(120, 90)
    same = augment(image, np.random.default_rng(0), max_rotation_deg=0.0, max_scale=0.0)
    assert np.abs(np.asarray(same, dtype=int) - np.asarray(image, dtype=int)).max() <= 1


def test_augment_fills_corners_with_the_border_colour_not_black():
    image = Image.new("RGB", (120, 120), (20, 50, 150))
    image.paste((240, 240, 255), (30, 30, 90, 90))
    turned = augment(image, np.random.default_rng(0), max_rotation_deg=20.0, max_scale=0.2)
    assert turned.size == image.size and border_colour(image) == (20, 50, 150)
    for corner in [(0, 0), (119, 0), (0, 119), (119, 119)]:
        assert turned.getpixel(corner) == (20, 50, 150)
    assert not _same_pixels(turned, image)


def test_augment_is_reproducible():
    image = _picture(100, 80)
    first = augment(image, np.random.default_rng(9), max_rotation_deg=5.0)
    second = augment(image, np.random.default_rng(9), max_rotation_deg=5.0)
    assert _same_pixels(first, second)


def test_to_tensor_input_is_chw_float32_in_minus_one_to_one():
    image = Image.new("RGB", (4, 2), (255, 0, 128))
    tensor = to_tensor_input(image)
    assert tensor.shape == (3, 2, 4) and tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(tensor[0], 1.0)
    np.testing.assert_allclose(tensor[1], -1.0)
    np.testing.assert_allclose(tensor[2], 128 / 255 * 2 - 1, rtol=0, atol=1e-6)
