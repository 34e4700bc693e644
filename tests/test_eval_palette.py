"""The blueprint palette metric and the drawing statistics, measured on the synthetic sets.

The thresholds here are the ones `bluepri.eval.palette` documents: blueprints score high on
the blueprint palette, the paper style's plain drawings high on the paper palette, and noise
(including the random tiny model's bluish texture, imitated) low on both and on background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bluepri.config import SynthConfig
from bluepri.data.synth import synthesize
from bluepri.eval import DrawingStats, PaletteScore, blueprint_score, drawing_stats
from bluepri.eval.palette import hsv, image_palette

SMALL = {"num_images": 12, "seed": 0, "min_side": 64, "max_side": 128}


def synthetic_set(root: Path, style: str) -> list[Image.Image]:
    result = synthesize(SynthConfig(out_dir=str(root / style), style=style, **SMALL))
    return [Image.open(path).convert("RGB") for path in sorted(Path(result.out_dir).glob("*.png"))]


@pytest.fixture(scope="module")
def blueprints(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    return synthetic_set(tmp_path_factory.mktemp("synth"), "blueprint")


@pytest.fixture(scope="module")
def paper_drawings(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    return synthetic_set(tmp_path_factory.mktemp("synth"), "paper")


def noise_images() -> list[np.ndarray]:
    """Gaussian and uniform RGB noise, and a bluish-grey texture like tiny:base's renders."""
    rng = np.random.default_rng(0)
    gaussian = [rng.normal(128, 64, (96, 128, 3)) for _ in range(3)]
    uniform = [rng.uniform(0, 256, (128, 96, 3)) for _ in range(3)]
    textured = [rng.normal((110, 120, 150), (33, 42, 33), (128, 128, 3)) for _ in range(3)]
    return [np.clip(x, 0, 255).astype(np.uint8) for x in gaussian + uniform + textured]


def test_blueprints_score_high_on_blueprint_low_on_paper(blueprints) -> None:
    score = blueprint_score(blueprints)
    assert score.blueprint > 0.95 and score.paper < 0.1
    assert all(image_palette(np.asarray(im)).blueprint > 0.9 for im in blueprints)


def test_paper_drawings_score_high_on_paper_low_on_blueprint(paper_drawings) -> None:
    score = blueprint_score(paper_drawings)
    assert score.paper > 0.7 and score.blueprint < 0.05
    assert all(image_palette(np.asarray(im)).paper > 0.6 for im in paper_drawings)


def test_noise_scores_low_on_both_palettes_and_is_no_drawing() -> None:
    for image in noise_images():
        assert blueprint_score([image]).blueprint < 0.3
        assert blueprint_score([image]).paper < 0.1
        assert drawing_stats([image]).uniform_background < 0.2


def test_synthetic_sheets_are_drawings(blueprints, paper_drawings) -> None:
    """One near-uniform ground over most of the sheet and a few pixels of line work."""
    for images in (blueprints, paper_drawings):
        stats = drawing_stats(images)
        assert stats.uniform_background > 0.5
        assert 0.03 < stats.line_pixels < 0.3


def test_white_lines_count_only_on_a_blue_ground() -> None:
    """A white sheet is paper, not blueprint line work; white lines on blue are blueprint."""
    white = np.full((40, 40, 3), 250, np.uint8)
    assert blueprint_score([white]) == PaletteScore(blueprint=0.0, paper=1.0)
    blue = np.zeros((40, 40, 3), np.uint8)
    blue[...] = (24, 75, 163)
    blue[::4] = (245, 248, 255)  # a quarter of the rows: line work
    assert blueprint_score([blue]).blueprint == pytest.approx(1.0)
    assert blueprint_score([blue]).paper == pytest.approx(0.25)  # white is white


def test_the_score_is_a_mean_over_images_of_any_size_and_form() -> None:
    white = Image.new("RGB", (30, 20), (250, 250, 245))
    blue = np.zeros((64, 64, 4), np.uint8)
    blue[...] = (24, 75, 163, 255)
    grey = np.full((10, 10), 128, np.uint8)
    score = blueprint_score([white, blue, grey])
    assert score.blueprint == pytest.approx(1 / 3) and score.paper == pytest.approx(1 / 3)
    stats = drawing_stats([white, blue])
    assert stats == DrawingStats(uniform_background=1.0, line_pixels=0.0)


def test_hsv_matches_colorsys() -> None:
    import colorsys

    colours = np.random.default_rng(1).integers(0, 256, (200, 3), dtype=np.uint8)
    hue, saturation, value = hsv(colours)
    for (r, g, b), h, s, v in zip(colours, hue, saturation, value, strict=True):
        want = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert (h / 360, s, v) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("bad", [[], [np.zeros((4, 4, 3), np.float32)], [np.zeros((4, 4, 2))]])
def test_bad_input_is_an_error(bad) -> None:
    with pytest.raises(ValueError):
        blueprint_score(bad)
