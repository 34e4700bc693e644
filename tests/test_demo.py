"""`bluepri demo` end to end, as `make demo` runs it, and the story it must tell: a tiny
base pretrained by bluepri on plain drawings (dark ink on paper) renders drawings on white,
and the LoRA the demo fine-tunes on blueprint-style drawings renders them on blue.

One demo run (its own process, at the demo's own defaults but a shorter search and a
16-prompt catalogue) serves every test here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bluepri import artifacts
from bluepri.eval import blueprint_score, drawing_stats
from bluepri.registry import AdapterRegistry
from stale_ray import stale_cluster_env

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = 16
# Where the base-versus-paper sheet is left for people to look at (build/ is git-ignored).
SHEET = REPO / "build" / "test-artifacts" / "base_renders_beside_paper_drawings.png"


@pytest.fixture(scope="module")
def demo_out(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`bluepri demo` in its own process with a relative --out (every stage, Ray workers and
    Tune trials in their own working directories, must still find the files) and a stale
    "current cluster" file left by a killed cluster, which must not be joined: the demo
    starts its own local Ray at once."""
    root = tmp_path_factory.mktemp("demo")
    argv = [str(Path(sys.executable).with_name("bluepri")), "demo", "--out", "demo",
            "--num-images", str(CATALOGUE), "--tune-trials", "2"]  # fmt: skip
    with stale_cluster_env() as env:
        # The bound is a hang guard: joining the dead cluster would take minutes per stage.
        done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                              timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = root / "demo"
    assert done.stdout.strip().splitlines()[-1] == str(out)
    (out / "terminal.txt").write_text(done.stdout)
    (out / "terminal-stderr.txt").write_text(done.stderr)
    return out


def test_the_terminal_tells_the_story_and_library_output_stays_in_the_log(demo_out: Path) -> None:
    """One line per step, indented lines under it, the closing lines; nothing of Ray's,
    Tune's or the model libraries' own (Ray's C++ core worker writes to descriptor 2 itself)."""
    lines = (demo_out / "terminal.txt").read_text().splitlines()
    story = re.compile(r"(bluepri demo: |\[[1-7]/7\] |  \S|done in |/)")
    assert [line for line in lines if not story.match(line)] == []
    assert [line[:5] for line in lines if line.startswith("[")] == [f"[{i}/7]" for i in range(1, 8)]
    assert (demo_out / "terminal-stderr.txt").read_text() == ""
    log = (demo_out / "demo.log").read_text()
    assert "[6/7]" in log and len(log.splitlines()) > len(lines)  # the libraries said more


def rendered(out: Path, tag: str) -> list[Image.Image]:
    rows = artifacts.read_render_manifest(str(out / "renders")).to_pylist()
    return [Image.open(out / "renders" / r["image_path"]).convert("RGB")
            for r in sorted(rows, key=lambda r: r["id"]) if r["id"].endswith(tag)]  # fmt: skip


def test_demo_renders_the_catalogue_with_and_without_the_champion(demo_out: Path) -> None:
    rows = artifacts.read_render_manifest(str(demo_out / "renders")).to_pylist()
    expected = [f"{i:03d}-{t}" for i in range(CATALOGUE) for t in ("base", "lora")]
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert all(r["status"] == "rendered" for r in rows)
    sizes = {Image.open(demo_out / "renders" / r["image_path"]).size for r in rows}
    assert sizes == {(128, 128), (168, 128)}  # 1:1 and 4:3
    assert (demo_out / "renders" / "gallery.html").is_file()
    registry = AdapterRegistry(demo_out / "registry")
    assert registry.champion("blueprints") in registry.versions("blueprints")
    # The search ran on the same cache and its winner was judged against the trained champion.
    table = (demo_out / "tune" / "demo-search" / "results.csv").read_text().splitlines()
    assert len(table) == 3  # header + 2 trials
    decision = registry.history("blueprints")[-1]
    assert decision["action"] in ("promote", "reject")
    assert decision["metrics"]["candidate"] > 0 and decision["metrics"]["champion"] > 0
    assert decision["metrics"]["champion_version"] == "v0001"
    assert "search demo-search" in decision["reason"]
    sheet = Image.open(demo_out / "contact_sheet.png")
    assert sheet.width > 2 * 128 and sheet.height > CATALOGUE * 128
    manifests = list((demo_out / "cache").glob("*/manifest.json"))
    assert len(manifests) == 1


def test_the_base_draws_on_paper_and_the_adapter_on_blueprint_blue(demo_out: Path) -> None:
    base = blueprint_score(rendered(demo_out, "-base"))
    adapter = blueprint_score(rendered(demo_out, "-lora"))
    print(f"\nblueprint_score on {CATALOGUE} catalogue prompts, fixed seeds: base "
          f"{base.blueprint:.3f} (paper {base.paper:.3f}), adapter {adapter.blueprint:.3f} "
          f"(paper {adapter.paper:.3f})")  # fmt: skip
    assert base.blueprint <= 0.1, base
    assert adapter.blueprint >= 0.5, adapter
    # The demo measured and reported the same numbers.
    scores = json.loads((demo_out / "scores.json").read_text())
    assert scores["base"]["palette"]["blueprint"] == pytest.approx(base.blueprint, abs=1e-6)
    assert scores["adapter"]["palette"]["blueprint"] == pytest.approx(adapter.blueprint, abs=1e-6)
    terminal = (demo_out / "terminal.txt").read_text()
    assert re.search(
        rf"blueprint score: base {base.blueprint:.2f}, adapter {adapter.blueprint:.2f}", terminal
    )


def test_the_base_renders_are_drawings_like_the_paper_set(demo_out: Path, tmp_path: Path) -> None:
    from bluepri.config import SynthConfig
    from bluepri.data.synth import drawing

    # The paper set the base was pretrained on the kind of (48 drawings, the synth default).
    paper_config = SynthConfig(out_dir=str(tmp_path), num_images=48, seed=1, style="paper",
                               min_side=128, max_side=128)  # fmt: skip
    paper = [drawing(i, paper_config)[0].convert("RGB") for i in range(48)]
    base = rendered(demo_out, "-base")
    base_stats, paper_stats = drawing_stats(base), drawing_stats(paper)
    per_paper = [drawing_stats([image]) for image in paper]
    low = min(s.uniform_background for s in per_paper)
    print(f"\ndrawing_stats: base {base_stats}, paper set {paper_stats} (lowest {low:.3f})")
    # A near-uniform ground within the range of the paper drawings' (noise: ~0.01), and line
    # work on it.
    high = max(s.uniform_background for s in per_paper)
    assert low <= base_stats.uniform_background <= high, (base_stats, low, high)
    assert base_stats.line_pixels >= 0.2 * paper_stats.line_pixels, (base_stats, paper_stats)
    assert blueprint_score(base).paper >= 0.5 * blueprint_score(paper).paper
    write_sheet(base, paper[:CATALOGUE], SHEET)
    assert SHEET.is_file()


def write_sheet(base: list[Image.Image], paper: list[Image.Image], path: Path) -> None:
    """Two rows: the base's renders over real `paper` drawings, 128 px cells."""
    cell = 128
    sheet = Image.new("RGB", (cell * len(base), cell * 2), "white")
    for row, images in enumerate((base, paper)):
        for column, image in enumerate(images):
            sheet.paste(image.resize((cell, cell)), (column * cell, row * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def test_the_evaluation_finds_the_adapter_better_and_the_report_shows_it(
    demo_out: Path, tmp_path: Path
) -> None:
    """Issue 14, acceptance 1 and 3: on the embedded default the demo's adapter beats the
    base on held-out loss and blueprint score, measured by `evaluate`; the report shows both
    and opens in chromium with every image loaded."""
    from bluepri.eval import EvalResult, heldout_loss
    from browser import chromium, load_all_images, save_screenshot

    result = EvalResult.model_validate_json((demo_out / "eval" / "eval.json").read_text())
    champion = AdapterRegistry(demo_out / "registry").champion("blueprints")
    labels = ["base", "base", f"blueprints@{champion}", f"blueprints@{champion}"]
    assert [r.label for r in result.runs] == labels
    for refine in (False, True):
        base, adapter = result.run("base", refine), result.run(f"blueprints@{champion}", refine)
        print(f"\nrefine={refine}: base {base.scores}\n  adapter {adapter.scores}")
        assert adapter.scores.heldout_loss < base.scores.heldout_loss
        assert adapter.scores.blueprint_score > base.scores.blueprint_score + 0.3
        assert adapter.differences["blueprint_score"] == pytest.approx(
            adapter.scores.blueprint_score - base.scores.blueprint_score
        )
        for run in (base, adapter):  # every metric measured, FID/KID against real drawings
            assert None not in (run.scores.clip_score, run.scores.fid, run.scores.kid_mean)
            assert len(run.images) == len(result.prompts) >= 2
    assert result.fid_features == "clip:tiny:clip" and result.reference.count >= 2
    # The held-out loss is the training validation's: measured again here, the same number.
    cache = next((demo_out / "cache").glob("*/manifest.json")).parent
    assert heldout_loss(str(cache), "tiny:drawing-base") == pytest.approx(
        result.run("base", False).scores.heldout_loss, rel=1e-6
    )
    # The report shows both scores of both models, and the demo printed where it is.
    report = Path(result.report)
    page_text = report.read_text()
    for refine in (False, True):
        for label in ("base", f"blueprints@{champion}"):
            scores = result.run(label, refine).scores
            for value in (scores.heldout_loss, scores.blueprint_score):
                assert f"{value:.4g}" in page_text
    assert str(report) in (demo_out / "terminal.txt").read_text()
    images = page_text.count("<img ")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(report.as_uri())
        counts = load_all_images(page)
        save_screenshot(tmp_path, "demo-eval-report.png", page)
    # Summary, loss curves, the search's plots, and 4 runs x the prompts. The search draws
    # parameter importances only when two trials finished: whether ASHA stopped one of the
    # demo's two trials early depends on which reported first.
    from bluepri.eval.report import SEARCH_PLOTS

    plots = [name for name in SEARCH_PLOTS if (demo_out / "tune" / "demo-search" / name).is_file()]
    assert "optimization_history.png" in plots
    assert counts == {"all": images, "ok": images}
    assert images == 2 + len(plots) + 4 * len(result.prompts)


def test_shipped_drawing_weights_match_their_recipe() -> None:
    from bluepri.models.loading import DRAWING_ROOT, drawing_folder, verify_drawing_weights

    assert verify_drawing_weights(DRAWING_ROOT) == []
    for name in ("drawing-base", "drawing-refiner"):
        assert (drawing_folder(name) / "model_index.json").is_file()
    recipe = json.loads((DRAWING_ROOT / "RECIPE.json").read_text())
    assert recipe["command"].startswith("bluepri models pretrain-tiny --out ")
    assert recipe["config"]["seed"] == 0 and recipe["config"]["threads"] == 2
    assert recipe["versions"]["torch"]
    assert np.isfinite([stage["final_loss"] for stage in recipe["stages"].values()]).all()
