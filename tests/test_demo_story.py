"""The demo's pure parts, without Ray: the side-by-side contact sheet, pairing the render
manifest's rows, the scores it prints, and the quiet terminal that keeps library noise in
the log file and puts every logger back afterwards."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bluepri import artifacts
from bluepri.config import DemoConfig
from bluepri.demo import (
    demo_scores,
    pair_cell_origin,
    rendered_pairs,
    score_lines,
    side_by_side_sheet,
)
from bluepri.demolog import heartbeat, quiet_terminal


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noise(seed: int, cell: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (cell, cell, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_side_by_side_sheet_puts_base_left_and_adapter_right_per_prompt() -> None:
    cell = 48
    pairs = [(noise(2 * row, cell), noise(2 * row + 1, cell)) for row in range(3)]
    sheet = side_by_side_sheet(pairs, ["one", "two", "three"], cell=cell)
    assert sheet.size == pair_cell_origin(3, 2, cell)
    assert pair_cell_origin(0, 1, cell)[0] - pair_cell_origin(0, 0, cell)[0] > cell
    for row, pair in enumerate(pairs):
        for column, image in enumerate(pair):
            x, y = pair_cell_origin(row, column, cell)
            pasted = sheet.crop((x, y, x + cell, y + cell))
            assert np.array_equal(np.asarray(pasted), np.asarray(image))


def test_side_by_side_sheet_fits_other_sizes_into_the_cell() -> None:
    wide = solid((250, 0, 0), (80, 60))  # 4:3, scaled down and centred
    sheet = side_by_side_sheet([(wide, solid((0, 0, 250), (16, 16)))], ["a prompt"], cell=40)
    x, y = pair_cell_origin(0, 0, 40)
    assert sheet.getpixel((x + 20, y + 20)) == (250, 0, 0)
    assert sheet.getpixel((x + 20, y + 1)) != (250, 0, 0)  # 40x30 leaves bands top and bottom
    x, y = pair_cell_origin(0, 1, 40)
    assert sheet.getpixel((x, y)) == (0, 0, 250) == sheet.getpixel((x + 39, y + 39))
    with pytest.raises(ValueError):
        side_by_side_sheet([], [])
    with pytest.raises(ValueError):
        side_by_side_sheet([(wide, wide)], ["one", "two"])


def write_manifest(out: Path, rows: list[dict]) -> None:
    schema = artifacts.render_manifest_schema()
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), out / artifacts.RENDER_MANIFEST)


def test_rendered_pairs_pairs_base_and_adapter_rows_that_both_landed(tmp_path: Path) -> None:
    def row(row_id: str, status: str = artifacts.RENDERED) -> dict:
        return {"id": row_id, "status": status, "prompt": "a gear", "prompt_2": "blueprint",
                "image_path": f"images/{row_id}.png"}  # fmt: skip

    write_manifest(
        tmp_path,
        [row("000-base"), row("000-lora"), row("001-base"), row("001-lora", artifacts.FAILED),
         row("002-base"), row("002-lora")],
    )  # fmt: skip
    pairs = rendered_pairs(str(tmp_path))
    assert pairs == [
        (f"{i}: a gear / blueprint", *(str(tmp_path / f"images/{i:03d}-{t}.png") for t in tags))
        for i, tags in ((0, ("base", "lora")), (2, ("base", "lora")))
    ]


def test_demo_scores_compare_base_and_adapter_against_the_training_set(tmp_path: Path) -> None:
    blue, white = (24, 75, 163), (250, 248, 240)
    (tmp_path / "dataset").mkdir()
    solid(blue).save(tmp_path / "dataset" / "bp.png")
    for name, colour in (("base", white), ("lora", blue)):
        solid(colour).save(tmp_path / f"{name}.png")
    pairs = [("0: a gear", str(tmp_path / "base.png"), str(tmp_path / "lora.png"))]
    scores = demo_scores(str(tmp_path / "dataset"), pairs)
    assert scores["base"].palette.blueprint == 0.0 and scores["base"].palette.paper == 1.0
    assert scores["adapter"].palette.blueprint == 1.0
    assert scores["training_set"].images == 1
    json.dumps({k: v.model_dump() for k, v in scores.items()})  # what scores.json holds
    lines = score_lines(scores)
    assert lines[0].startswith("blueprint score: base 0.00, adapter 1.00 (share of pixels")
    assert score_lines({"training_set": scores["training_set"]})[0].startswith("no prompt")


def test_the_demo_draws_with_the_drawing_models_by_default() -> None:
    models = DemoConfig().models
    assert (models.base, models.refiner) == ("tiny:drawing-base", "tiny:drawing-refiner")


def test_quiet_terminal_sends_library_output_to_the_log_and_puts_loggers_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = logging.getLogger("ray.data")
    console = logging.StreamHandler(sys.stderr)  # as Ray Data's own console handler
    data.addHandler(console)
    before = (list(data.handlers), data.propagate, data.level)
    shown: list[str] = []
    log_path = tmp_path / "out" / "demo.log"
    try:
        with quiet_terminal(log_path, lambda line: (shown.append(line), print(line))) as say:
            data.warning("Total Progress: 3/4 blocks")
            logging.getLogger("diffusers.loaders").warning("No LoRA keys associated to X")
            print("+---- Trial status ----+")
            print("a bar 50%", file=sys.stderr)
            # A handler a library adds meanwhile lands on the redirected stderr: removed later.
            added = logging.StreamHandler(sys.stderr)
            logging.getLogger("ray.serve").addHandler(added)
            say("[1/7] synthesising")
        after = (list(data.handlers), data.propagate, data.level)
    finally:
        data.removeHandler(console)
    out, err = capsys.readouterr()
    assert out == "[1/7] synthesising\n" and err == "" and shown == ["[1/7] synthesising"]
    text = log_path.read_text()
    for line in ("Total Progress: 3/4", "No LoRA keys", "Trial status", "a bar 50%", "[1/7]"):
        assert line in text
    assert after == before
    assert added not in logging.getLogger("ray.serve").handlers
    assert sys.stdout is not None and not sys.stdout.closed


def test_quiet_terminal_sends_native_writes_to_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ray's C++ core worker logs straight to file descriptor 2 (e.g. its warning about a
    Ray Data actor pool's constructor arguments): that goes to the log too, and the
    descriptor is the terminal's again afterwards."""
    import os

    log_path = tmp_path / "demo.log"
    with quiet_terminal(log_path, print) as say:
        os.write(2, b"[E core_worker.cc:2465] Actor with class name: 'MapWorker'\n")
        say("[6/7] rendering")
    os.write(2, b"after the demo\n")
    out, err = capfd.readouterr()
    assert out == "[6/7] rendering\n" and err == "after the demo\n"
    assert "core_worker.cc:2465" in log_path.read_text()


def test_quiet_terminal_restores_everything_when_a_step_fails(tmp_path: Path) -> None:
    stdout, stderr = sys.stdout, sys.stderr
    transformers = logging.getLogger("transformers")
    before = (list(transformers.handlers), transformers.propagate)
    import os

    descriptor_2 = os.fstat(2)
    with pytest.raises(RuntimeError), quiet_terminal(tmp_path / "demo.log", print):
        raise RuntimeError("training failed")
    assert (sys.stdout, sys.stderr) == (stdout, stderr)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (descriptor_2.st_dev, descriptor_2.st_ino)
    assert (list(transformers.handlers), transformers.propagate) == before


def test_heartbeat_says_the_step_is_still_going_until_it_ends() -> None:
    said: list[str] = []
    with heartbeat(said.append, "training", every_s=0.02):
        time.sleep(0.15)
    count = len(said)
    time.sleep(0.06)
    assert count >= 2 and len(said) == count
    assert said[0].startswith("  ... training: ")
