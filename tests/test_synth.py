"""The synthetic blueprint set: deterministic, complete, captioned in range, blueprint-looking,
loadable as an imagefolder, and strict about bad input; its paper style draws the same sheets
in dark ink on white paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bluepri.config import BLUEPRINT_FAMILIES, SynthConfig
from bluepri.data.synth import (
    PADDING,
    Content,
    SynthResult,
    build_caption,
    drawing,
    synthesize,
)
from bluepri.errors import BluepriError

SMALL = {"min_side": 192, "max_side": 320}  # keeps the tests fast; the drawing code is the same


def read_rows(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def blueprint_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthResult, Path]:
    out_dir = tmp_path_factory.mktemp("blueprints")
    config = SynthConfig(out_dir=str(out_dir), num_images=24, seed=7, uncaptioned_fraction=0.25)
    return synthesize(config), out_dir


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out_dir = tmp_path / name
        synthesize(SynthConfig(out_dir=str(out_dir), num_images=8, seed=seed, **SMALL))
        runs[name] = {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}
    assert runs["a"] == runs["b"]
    assert len(runs["a"]) == 9  # 8 images + metadata.jsonl
    different = [name for name in runs["a"] if runs["a"][name] != runs["c"].get(name)]
    assert len(different) >= 8


def test_every_family_appears_and_sizes_vary_within_bounds(blueprint_set) -> None:
    result, out_dir = blueprint_set
    rows = read_rows(out_dir)
    assert result.num_images == len(rows) == 24
    assert {row["family"] for row in rows} == set(BLUEPRINT_FAMILIES)
    assert result.families == {family: 4 for family in BLUEPRINT_FAMILIES}
    sizes = [Image.open(out_dir / row["file_name"]).size for row in rows]
    assert all(192 <= side <= 512 for size in sizes for side in size)
    assert any(w != h for w, h in sizes)
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert len(set(sizes)) > 12
    for row in rows:
        assert row["file_name"].startswith("bp_") and row["family"] in row["file_name"]


def test_captions_are_in_range_and_the_uncaptioned_count_is_exact(blueprint_set) -> None:
    result, out_dir = blueprint_set
    texts = [row["text"] for row in read_rows(out_dir)]
    assert texts.count(None) == 6  # round(24 * 0.25)
    assert result.num_captioned == 18
    for text in texts:
        if text is not None:
            assert 30 <= len(text) <= 110, text
            assert text.startswith("a drawing of ")
            assert not text.endswith((" ", ",")), text


def test_uncaptioned_fraction_extremes(tmp_path: Path) -> None:
    for fraction, expected_null in ((0.0, 0), (1.0, 5)):
        out_dir = tmp_path / str(fraction)
        config = SynthConfig(
            out_dir=str(out_dir), num_images=5, uncaptioned_fraction=fraction, **SMALL
        )
        synthesize(config)
        assert [row["text"] for row in read_rows(out_dir)].count(None) == expected_null


def test_caption_fitting_pads_short_and_drops_clauses_that_overflow() -> None:
    rng = np.random.default_rng(0)
    short = build_caption(Content("T", "a gear", []), rng)
    assert 30 <= len(short) <= 110 and short.startswith("a drawing of a gear")
    long_clauses = [" with a very long clause about many things" * 2] * 4
    for _ in range(10):
        text = build_caption(Content("T", "a floor plan of a house", long_clauses), rng)
        assert 30 <= len(text) <= 110
        assert text.startswith("a drawing of a floor plan of a house")


def test_images_look_like_blueprints(blueprint_set) -> None:
    _, out_dir = blueprint_set
    for row in read_rows(out_dir):
        pixels = np.asarray(Image.open(out_dir / row["file_name"]).convert("RGB"), float)
        red, blue = pixels[..., 0], pixels[..., 2]
        assert blue.mean() > red.mean() + 60, row["file_name"]  # blue ground
        # White or light-cyan line work: the ground and grid never get this red.
        light = (red > 150).mean()
        assert 0.01 < light < 0.4, (row["file_name"], light)
        # ...and not only the frame: the middle of the sheet holds a drawing.
        h, w = red.shape
        assert (red[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] > 150).mean() > 0.004, row


def test_tiny_sheets_are_drawn_and_kept_within_bounds(tmp_path: Path) -> None:
    synthesize(SynthConfig(out_dir=str(tmp_path), num_images=6, min_side=64, max_side=80))
    for row in read_rows(tmp_path):
        size = Image.open(tmp_path / row["file_name"]).size
        assert all(64 <= side <= 80 for side in size), size


def test_rerun_replaces_the_previous_set_and_leaves_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    synthesize(SynthConfig(out_dir=str(tmp_path), num_images=6, **SMALL))
    synthesize(SynthConfig(out_dir=str(tmp_path), num_images=3, seed=1, **SMALL))
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(row["file_name"] for row in read_rows(tmp_path))
    assert len(pngs) == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_same_set_again_leaves_the_files_untouched(tmp_path: Path) -> None:
    """Re-synthesising the same set must not change file stamps: a prepared cache's source
    fingerprint holds them, so `make demo` twice keeps its cache (and its training run)."""
    config = SynthConfig(out_dir=str(tmp_path), num_images=6, seed=2, **SMALL)
    synthesize(config)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    synthesize(config)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")} == stamps
    synthesize(config.model_copy(update={"seed": 3}))  # a different set is written anew
    changed = [p for p in tmp_path.glob("*.png") if stamps.get(p.name) != p.stat().st_mtime_ns]
    assert len(changed) >= 5


def test_family_subset_and_progress_callback(tmp_path: Path) -> None:
    seen: list[int] = []
    config = SynthConfig(out_dir=str(tmp_path / "new" / "dir"), num_images=4, **SMALL)
    config.families = ["aircraft", "kitchen"]
    result = synthesize(config, on_image=seen.append)
    assert seen == [0, 1, 2, 3]
    assert result.families == {"aircraft": 2, "kitchen": 2}


def test_bad_inputs_raise_bluepri_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(BluepriError, match="is a file, not a folder"):
        synthesize(SynthConfig(out_dir=str(a_file), num_images=1))
    with pytest.raises(BluepriError, match="choose from: floor_plan, mechanical_part"):
        synthesize(SynthConfig(out_dir=str(tmp_path / "x"), families=["spaceship"]))
    with pytest.raises(BluepriError, match="min_side"):
        synthesize(SynthConfig(out_dir=str(tmp_path / "y"), min_side=400, max_side=300))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_loads_as_a_hugging_face_imagefolder(blueprint_set, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    _, out_dir = blueprint_set
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out_dir), cache_dir=str(tmp_path))
    train = loaded["train"]
    assert len(train) == 24
    assert {"image", "text", "family"} <= set(train.column_names)
    assert sum(text is None for text in train["text"]) == 6
    assert train[0]["image"].mode == "RGB"


# ---------------------------------------------------------------- the paper style


def styled(style: str, **values) -> SynthConfig:
    return SynthConfig(
        **({"out_dir": "unused", "num_images": 6, "seed": 3} | SMALL | values), style=style
    )


def ink_masks(index: int, config: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blueprint line pixels, paper ink pixels, paper RGB) of sheet `index`."""
    blueprint, _ = drawing(index, config.model_copy(update={"style": "blueprint"}))
    paper, _ = drawing(index, config.model_copy(update={"style": "paper"}))
    blue = np.asarray(blueprint.convert("RGB"), float)
    rgb = np.asarray(paper.convert("RGB"), float)
    return blue[..., 0] > 128, rgb.mean(axis=-1) < 128, rgb


def test_paper_style_is_deterministic_and_draws_the_blueprints_geometry() -> None:
    config = styled("paper")
    for index in range(config.num_images):
        first, caption = drawing(index, config)
        again, caption_again = drawing(index, config)
        assert first.tobytes() == again.tobytes() and caption == caption_again
        lines, ink, _ = ink_masks(index, config)
        # Same draws, other colours: the paper's ink is the blueprint's line work (up to the
        # anti-aliased edges of lettering, whose midpoint differs between colour pairs).
        overlap = (lines & ink).sum() / (lines | ink).sum()
        assert overlap > 0.95, (index, overlap)


def test_paper_is_light_with_dark_ink_and_not_blue() -> None:
    config = styled("paper", num_images=12)
    for index in range(config.num_images):
        _, ink, rgb = ink_masks(index, config)
        red, blue = rgb[..., 0].mean(), rgb[..., 2].mean()
        assert rgb.mean() > 190, index  # white or cream ground
        assert blue <= red + 2, (index, red, blue)  # never a blue ground
        assert 0.01 < ink.mean() < 0.4, (index, ink.mean())
        h, w = ink.shape
        assert ink[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean() > 0.004, index


def test_paper_captions_say_drawing_and_never_blueprint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    short = build_caption(Content("T", "a gear", []), rng, PADDING["paper"])
    assert short.startswith("a drawing of a gear on white paper") and 30 <= len(short) <= 110
    config = SynthConfig(out_dir=str(tmp_path), num_images=12, seed=5, style="paper", **SMALL)
    synthesize(config)
    blueprint = config.model_copy(update={"style": "blueprint"})
    for index, row in enumerate(read_rows(tmp_path)):
        text = row["text"]
        assert (text is None) == (drawing(index, blueprint)[1] is None)
        if text is not None:
            assert text.startswith("a drawing of ") and 30 <= len(text) <= 110, text
            assert "blue" not in text, text


def test_drawing_is_exactly_what_synthesize_writes(tmp_path: Path) -> None:
    for style in ("blueprint", "paper"):
        config = SynthConfig(
            out_dir=str(tmp_path / style), num_images=5, seed=9, style=style, **SMALL
        )
        synthesize(config)
        for index, row in enumerate(read_rows(tmp_path / style)):
            image, text = drawing(index, config)
            written = Image.open(tmp_path / style / row["file_name"]).convert("RGB")
            assert image.convert("RGB").tobytes() == written.tobytes(), (style, index)
            assert text == row["text"]
    with pytest.raises(BluepriError, match="outside a set of 5 images"):
        drawing(5, config)


def test_cli_synth_writes_the_paper_style(tmp_path: Path) -> None:
    from bluepri.cli import main

    out = tmp_path / "paper"
    argv = ["data", "synth", "--out", str(out), "--num-images", "2", "--style", "paper"]
    assert main(argv) == 0
    rows = read_rows(out)
    pixels = np.asarray(Image.open(out / rows[0]["file_name"]).convert("RGB"), float)
    assert pixels.mean() > 190
    assert main([*argv[:-1], "sepia"]) == 2
