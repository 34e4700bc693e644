"""The `bluepri` command: the demo end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bluepri import artifacts
from bluepri.cli import main
from bluepri.registry import AdapterRegistry
from stale_ray import stale_cluster_env


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_writes_images_and_contact_sheet(tiny_models, tmp_path: Path) -> None:
    """`bluepri demo` as `make demo` runs it: its own process, a relative --out (every stage,
    Ray workers and Tune trials in their own working directories, must still find the
    files), and a stale "current cluster" file left by a killed cluster, which must not be
    joined: the demo starts its own local Ray at once."""
    out_dir = tmp_path / "demo"
    argv = [str(Path(sys.executable).with_name("bluepri")), "demo", "--out", "demo",
            "--num-images", "3", "--dataset-size", "6", "--steps", "5", "--size", "64",
            "--tune-trials", "2"]  # fmt: skip
    with stale_cluster_env() as env:
        # The bound is a hang guard: joining the dead cluster would take minutes per stage.
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == str(out_dir)
    rows = artifacts.read_render_manifest(str(out_dir / "renders")).to_pylist()
    assert [r["id"] for r in rows] == [f"{i:03d}-{t}" for i in range(3) for t in ("base", "lora")]
    assert all(r["status"] == "rendered" for r in rows)
    images = {r["id"]: out_dir / "renders" / r["image_path"] for r in rows}
    assert {Image.open(p).size for p in images.values()} == {(64, 64), (80, 64)}  # 1:1, 4:3
    for index in range(3):
        base = np.asarray(Image.open(images[f"{index:03d}-base"]), np.int16)
        lora = np.asarray(Image.open(images[f"{index:03d}-lora"]), np.int16)
        assert base.std() > 0 and np.abs(base - lora).max() > 0
    assert (out_dir / "renders" / "gallery.html").is_file()
    assert (out_dir / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    registry = AdapterRegistry(out_dir / "registry")
    assert registry.champion("blueprints") in registry.versions("blueprints")
    # The search ran on the same cache and its winner was judged against the trained champion.
    table = (out_dir / "tune" / "demo-search" / "results.csv").read_text().splitlines()
    assert len(table) == 3  # header + 2 trials
    decision = registry.history("blueprints")[-1]
    assert decision["action"] in ("promote", "reject")
    assert decision["metrics"]["champion_version"] == "v0001"
    assert decision["metrics"]["candidate"] > 0 and decision["metrics"]["champion"] > 0
    assert "search demo-search" in decision["reason"]
    sheet = Image.open(out_dir / "contact_sheet.png")
    assert sheet.width > 3 * 64
    assert len(list((out_dir / "dataset").glob("*.png"))) == 6
    assert (out_dir / "dataset" / "metadata.jsonl").is_file()
    manifests = list((out_dir / "cache").glob("*/manifest.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text())["rows"] == 6


def test_data_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "data", "synth", "--out", str(tmp_path / "s"), "--num-images", "6", "--seed", "1"
    )
    assert code == 0
    assert len(list((tmp_path / "s").glob("*.png"))) == 6
    assert out.strip().splitlines()[-1] == str(tmp_path / "s")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--num-images", "0"], "num_images"),
        (["generate", "--prompt", "x", "--out", "o.png", "--base", "tiny:nope"], "tiny:nope"),
        (["generate", "--prompt", "x", "--out", "o.png", "--base", "{tmp}"], "not a diffusers"),
        (["demo", "--out", "{tmp}/a-file"], "is a file"),
        (["data", "synth", "--out", "{tmp}/a-file"], "file"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bluepri: error:") and message in lines[0]
    assert "Traceback" not in err
