"""The evaluation report and the history of evaluations, on a real evaluation folder.

The folder is built here without Ray or a model: the "renders" are the project's own
synthetic drawings (paper style for the base, blueprint style for the adapters), the adapter
copies hold real metrics.json histories, the search is the demo's results (or a table with
its columns), and three nights of history are appended through `append_history`. The page
is opened in headless chromium: every image must load.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bluepri.config import EVAL_PROTOCOLS, SynthConfig
from bluepri.data.synth import synthesize
from bluepri.errors import BluepriError
from bluepri.eval.history import (
    HISTORY_SCHEMA,
    append_history,
    history_rows,
    read_history,
)
from bluepri.eval.report import write_report
from bluepri.eval.results import SCORES, EvalResult, ModelRun, ReferenceSet, Scores
from browser import chromium, load_all_images, save_screenshot

PROMPTS = [
    "a floor plan of a small apartment with three rooms",
    'a <b>gear</b> & "shaft" drawing <script>alert(1)</script>',
    "a side view of a truck",
]
CLIP_NOTE = "CLIP score not measured: the CLIP model is not available offline"
# (label, adapter reference, folder) of the two adapters; the first is the champion.
ADAPTERS = [
    ("blueprints@v0003", "blueprints@champion", "adapters/blueprints/v0003"),
    ("lines@v0002", "lines@v0002", "adapters/lines/v0002"),
]
# Scores per (label, refine): heldout_loss, blueprint_score, paper_score, fid, kid_mean.
SCORE_TABLE = {
    ("base", False): (0.20, 0.10, 0.80, 120.0, 0.050),
    ("blueprints@v0003", False): (0.15, 0.90, 0.05, 60.0, 0.020),
    ("lines@v0002", False): (0.25, 0.30, 0.60, 150.0, 0.080),
    ("base", True): (0.20, 0.12, 0.78, 110.0, 0.040),
    ("blueprints@v0003", True): (0.15, 0.95, 0.02, 55.0, 0.010),
    ("lines@v0002", True): (0.20, 0.12, 0.90, 110.0, 0.040),
}
SEARCH_COLUMNS = pa.schema(
    [
        ("trial_id", pa.string()),
        ("started", pa.float64()),
        ("state", pa.string()),
        ("param_learning_rate", pa.float64()),
        ("param_rank", pa.int64()),
        ("param_snr_gamma", pa.float64()),
        ("final_val_loss", pa.float64()),
        ("best_val_loss", pa.float64()),
        ("initial_val_loss", pa.float64()),
        ("validations", pa.int64()),
        ("steps", pa.int64()),
        ("seconds", pa.float64()),
        ("adapter", pa.string()),
    ]
)


# -- building the evaluation folder ------------------------------------------------------------


def drawings(root: Path, style: str) -> list[Image.Image]:
    config = SynthConfig(
        out_dir=str(root / style), num_images=3, seed=0, min_side=64, max_side=96, style=style
    )
    folder = Path(synthesize(config).out_dir)
    return [Image.open(p).convert("RGB").resize((64, 64)) for p in sorted(folder.glob("*.png"))]


def loss_history(seed: int, steps: int = 30, every: int = 10) -> list[dict]:
    """What training writes: a loss per step, a validation at step 0 and every `every`."""
    rng = np.random.default_rng(seed)
    history = [{"step": 0, "epoch": 0, "val_loss": 0.41}]
    for step in range(1, steps + 1):
        loss = 0.4 * np.exp(-step / 20) + 0.05 + rng.normal(0, 0.05)
        history.append({"step": step, "epoch": step // every, "loss": loss, "lr": 1e-3})
        if step % every == 0:
            val = 0.4 - step / (200 + 100 * seed)
            history.append({"step": step, "epoch": step // every, "val_loss": val})
    return history


def write_adapter(out: Path, folder: str, seed: int) -> None:
    import json

    target = out / folder
    target.mkdir(parents=True)
    metrics = {"global_step": 30, "history": loss_history(seed)}
    (target / "metrics.json").write_text(json.dumps(metrics))
    (target / "loss_curve.png").write_bytes(b"")  # the artifact's own, not used by the report


def write_renders(out: Path, synth_root: Path) -> dict[tuple[str, bool], list[str]]:
    """One image per prompt per run, paper drawings for the base, blueprints for adapters."""
    paper, blue = drawings(synth_root, "paper"), drawings(synth_root, "blueprint")
    images = out / "renders" / "images"
    images.mkdir(parents=True)
    paths = {}
    for n, (label, refine) in enumerate(SCORE_TABLE):
        source = paper if label == "base" else blue
        names = []
        for i in range(len(PROMPTS)):
            name = f"renders/images/{n:02d}-{i:02d} {label}#{int(refine)}.png"  # odd characters
            picture = source[i].rotate(90 * n) if label != "base" else source[i]
            picture.save(out / name)
            names.append(name)
        paths[(label, refine)] = names
    return paths


def make_runs(paths: dict[tuple[str, bool], list[str]]) -> list[ModelRun]:
    references = {label: (ref, folder) for label, ref, folder in ADAPTERS}
    runs = []
    for (label, refine), values in SCORE_TABLE.items():
        base = SCORE_TABLE[("base", refine)]
        names = ("heldout_loss", "blueprint_score", "paper_score", "fid", "kid_mean")
        scores = dict(zip(names, values, strict=True))
        differences = {}
        if label != "base":
            differences = {n: v - b for n, v, b in zip(names, values, base, strict=True)}
            differences["clip_score"] = None
        reference, folder = references.get(label, (None, None))
        runs.append(
            ModelRun(
                label=label,
                adapter=reference,
                sha256=None if label == "base" else hashlib.sha256(label.encode()).hexdigest(),
                folder=folder,
                refine=refine,
                images=paths[(label, refine)],
                scores=Scores(**scores, kid_std=0.01),
                differences=differences,
            )
        )
    return runs


def make_result(out: Path, runs: list[ModelRun], label: str, created: str) -> EvalResult:
    return EvalResult(
        out=str(out),
        label=label,
        created=created,
        protocol=EVAL_PROTOCOLS["quick"],
        models={"base": "tiny:drawing-base", "refiner": "tiny:drawing-refiner", "vae": None},
        width=64,
        height=64,
        cache="/cache/9028f8328c3575679df4",
        cache_fingerprint="9028f8328c3575679df4",
        prompts=PROMPTS,
        seeds=[0, 1, 2],
        reference=ReferenceSet(source="/cache/heldout", count=48, skipped={"unreadable": 1}),
        clip_model="openai/clip-vit-large-patch14",
        fid_features="clip:openai/clip-vit-large-patch14",
        runs=runs,
        notes=[CLIP_NOTE],
        seconds=42.0,
    )


def earlier_night(result: EvalResult, label: str, created: str, shift: float) -> EvalResult:
    """The same evaluation on an earlier night: other numbers, an older champion version."""
    runs = []
    for run in result.runs:
        values = {n: (v + shift if v is not None else None) for n, v in run.scores}
        version = f"blueprints@v000{1 if shift > 0.1 else 2}"
        runs.append(
            run.model_copy(
                update={
                    "scores": Scores(**values),
                    "label": version if run.label.startswith("blueprints") else run.label,
                }
            )
        )
    return result.model_copy(update={"label": label, "created": created, "runs": runs})


def write_search(folder: Path) -> None:
    folder.mkdir(parents=True)  # written here, never copied from a demo run's leftovers
    rows = [
        {"trial_id": f"t{i}", "started": 1.79e9 + 20 * i, "state": state,
         "param_learning_rate": 1e-3 * (i + 1), "param_rank": 4 * (i + 1),
         "param_snr_gamma": None if i == 0 else 5.0, "final_val_loss": 0.39 - i / 100,
         "best_val_loss": 0.39 - i / 100, "initial_val_loss": 0.41, "validations": 3,
         "steps": 15, "seconds": 14.0, "adapter": f"/trials/t{i}/adapter"}
        for i, state in enumerate(["completed", "completed", "stopped_early", "completed"])
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=SEARCH_COLUMNS), folder / "results.parquet")
    for name, colour in (("optimization_history.png", "navy"), ("param_importances.png", "teal")):
        Image.new("RGB", (320, 200), colour).save(folder / name)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory):
    """(result, out folder, history table, search folder, report paths)."""
    root = tmp_path_factory.mktemp("eval-report")
    out = root / "eval"
    paths = write_renders(out, root / "synth")
    for n, (_, _, folder) in enumerate(ADAPTERS):
        write_adapter(out, folder, seed=n)
    result = make_result(out, make_runs(paths), "2026-11-27", "2026-11-27T03:00:00Z")
    history_uri = str(root / "history" / "evaluations.parquet")
    append_history(history_uri, earlier_night(result, "2026-11-25", "2026-11-25T03:00:00Z", 0.2))
    append_history(history_uri, earlier_night(result, "2026-11-26", "2026-11-26T03:00:00Z", 0.1))
    append_history(history_uri, result)
    history = read_history(history_uri)
    search = root / "search"
    write_search(search)
    report, summary = write_report(result, str(out), history=history, search_dir=str(search))
    return result, out, history, search, (Path(report), Path(summary))


# -- what the page says ------------------------------------------------------------------------


def metrics_cells(page: str) -> dict[tuple[str, bool], list[str]]:
    """The metrics table's body cells (HTML) by (model, refine)."""
    table = re.search(r'<table class="metrics">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        rows[(cells[0], cells[1] == "with refiner")] = cells[2:]
    return rows


def image_sources(page: str) -> list[str]:
    return [unquote(src) for src in re.findall(r'<img [^>]*src="([^"]*)"', page)]


def test_report_files_and_metrics_table(evaluation) -> None:
    result, out, _, _, (report, summary) = evaluation
    assert report == out / "report.html" and summary == out / "summary.png"
    page = report.read_text()
    rows = metrics_cells(page)
    assert set(rows) == set(SCORE_TABLE)
    names = list(SCORES)
    # Values formatted to 4 significant digits, differences signed and coloured by whether
    # they are better in the score's direction.
    expected = {
        ("blueprints@v0003", False): {
            "heldout_loss": ("0.15", "-0.05", "better"),
            "blueprint_score": ("0.9", "+0.8", "better"),
            "paper_score": ("0.05", "-0.75", "better"),
            "fid": ("60", "-60", "better"),
            "kid_mean": ("0.02", "-0.03", "better"),
        },
        ("lines@v0002", False): {
            "heldout_loss": ("0.25", "+0.05", "worse"),
            "blueprint_score": ("0.3", "+0.2", "better"),
            "paper_score": ("0.6", "-0.2", "better"),
            "fid": ("150", "+30", "worse"),
            "kid_mean": ("0.08", "+0.03", "worse"),
        },
        ("lines@v0002", True): {
            "heldout_loss": ("0.2", "+0", "same"),
            "blueprint_score": ("0.12", "+0", "same"),
            "paper_score": ("0.9", "+0.12", "worse"),
            "fid": ("110", "+0", "same"),
        },
    }
    for key, scores in expected.items():
        for name, (value, delta, colour) in scores.items():
            cell = rows[key][names.index(name)]
            assert f'<span class="value">{value}</span>' in cell, (key, name, cell)
            assert f'<span class="delta {colour}">{delta}</span>' in cell, (key, name, cell)
    base_cells = rows[("base", False)]
    assert '<span class="value">120</span>' in base_cells[names.index("fid")]
    assert all("delta" not in cell for cell in base_cells)
    # CLIP was not measured: a dash and a link to the note that says why, shown up top.
    clip = rows[("blueprints@v0003", True)][names.index("clip_score")]
    assert "—" in clip and 'href="#note-1"' in clip
    assert f'<li id="note-1">{CLIP_NOTE}</li>' in page
    assert page.index("What could not be measured") < page.index('id="metrics"')


def test_report_header_grids_and_escaping(evaluation) -> None:
    result, out, _, _, (report, _) = evaluation
    page = report.read_text()
    for setting in (
        "<th>steps</th><td>20</td>",
        "<th>guidance scale</th><td>5</td>",
        "<th>scheduler</th><td>model</td>",
        "0–2 (prompt i uses seed 0 + i",
        "<th>image size</th><td>64×64</td>",
        "<th>model: refiner</th><td>tiny:drawing-refiner</td>",
        "<th>CLIP model</th><td>openai/clip-vit-large-patch14</td>",
        "<th>FID/KID features</th><td>clip:openai/clip-vit-large-patch14</td>",
        "48 drawings from /cache/heldout (skipped: 1 unreadable)",
        "<th>cache fingerprint</th><td>9028f8328c3575679df4</td>",
    ):
        assert setting in page, setting
    # The user's prompt is text, never markup; the only tags are the page's own.
    assert "<script" not in page and "<b>gear" not in page
    assert "a &lt;b&gt;gear&lt;/b&gt; &amp; &quot;shaft&quot;" in page
    assert "http://" not in page and "https://" not in page
    grid = page[page.index('id="prompts"') :]
    assert grid.count('<td class="prompt">') == len(PROMPTS)
    assert grid.count('class="render"') == len(PROMPTS) * len(SCORE_TABLE)
    assert "base only</th>" in grid and "with refiner</th>" in grid
    assert 'alt="lines@v0002 + refiner: a side view of a truck"' in grid
    # Training curves, search and history all made it onto the page, linked from the top.
    for section in ("notes", "settings", "metrics", "training", "search", "history", "prompts"):
        assert f'<a href="#{section}">' in page and f'<section id="{section}"' in page
    assert "figures/loss_curves.png" in page
    assert 'class="best"' in page and "learning_rate" in page
    assert page.count('src="figures/history-') == 5  # every score with values; CLIP has none
    for src in image_sources(page):
        assert (out / src).is_file(), src


def test_summary_png_is_a_readable_figure(evaluation) -> None:
    summary = evaluation[4][1]
    with Image.open(summary) as image:
        assert image.format == "PNG"
        assert 800 <= image.width <= 2000 and 400 <= image.height <= 1500
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # bars, labels and axes, not a blank canvas
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 20


def test_report_opens_in_chromium_with_every_image(evaluation, tmp_path: Path) -> None:
    _, _, _, _, (report, _) = evaluation
    expected = len(image_sources(report.read_text()))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(report.as_uri())
        counts = load_all_images(page)
        assert counts == {"all": expected, "ok": expected}
        # summary, loss curves, 2 search plots, 5 history plots, and every run x prompt
        assert expected == 1 + 1 + 2 + 5 + len(PROMPTS) * len(SCORE_TABLE)
        coloured = page.evaluate("getComputedStyle(document.querySelector('.delta.better')).color")
        assert coloured == "rgb(13, 107, 47)"
        save_screenshot(tmp_path, "eval-report.png", page)
        assert not problems, problems


def test_report_tolerates_missing_and_broken_adapter_histories(evaluation, tmp_path) -> None:
    result, out, _, _, _ = evaluation
    copy = tmp_path / "eval"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report.html", "figures"))
    (copy / ADAPTERS[0][2] / "metrics.json").write_bytes(b"\x00{not json")
    runs = [
        run.model_copy(update={"folder": "../../etc"}) if run.label == "lines@v0002" else run
        for run in result.runs
    ]
    broken = result.model_copy(update={"runs": runs, "notes": []})
    report, _ = write_report(broken, str(copy), history=None, search_dir=str(tmp_path / "none"))
    page = Path(report).read_text()
    assert "adapters/blueprints/v0003/metrics.json is unreadable (no loss curves)" in page
    assert "lines@v0002: no adapter folder recorded" in page
    assert "no results.parquet in" in page
    assert "Every metric was measured" in page
    assert "loss_curves.png" not in page and 'id="history"' not in page
    assert 'href="#history"' not in page and 'href="#search"' in page  # links: sections there


# -- the history file --------------------------------------------------------------------------


def test_history_replaces_a_rerun_and_accumulates_nights(evaluation, tmp_path) -> None:
    result = evaluation[0]
    history = evaluation[2]
    runs = len(result.runs)
    assert history.num_rows == 3 * runs
    assert history.schema.equals(HISTORY_SCHEMA)
    assert sorted(set(history.column("eval").to_pylist())) == [
        "2026-11-25",
        "2026-11-26",
        "2026-11-27",
    ]
    uri = str(tmp_path / "h.parquet")
    assert read_history(uri) is None
    assert append_history(uri, result).num_rows == runs
    rerun = result.model_copy(update={"created": "2026-11-27T05:00:00Z"})
    assert append_history(uri, rerun).num_rows == runs  # the same label: replaced, not doubled
    assert set(read_history(uri).column("created").to_pylist()) == {"2026-11-27T05:00:00Z"}
    other = result.model_copy(update={"label": "2026-11-28"})
    assert append_history(uri, other).num_rows == 2 * runs
    row = read_history(uri).to_pylist()[0]
    assert row["run"] == "base" and row["steps"] == 20 and row["n_prompts"] == 3
    assert row["fid"] == 120.0 and row["clip_score"] is None and row["kid_std"] == 0.01
    assert not list(tmp_path.glob(".tmp-*"))  # the atomic write left no staging file


def test_corrupt_history_is_one_clear_error(evaluation, tmp_path) -> None:
    result = evaluation[0]
    noise = tmp_path / "noise.parquet"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    lacking = tmp_path / "lacking.parquet"
    pq.write_table(pa.table({"eval": ["x"], "run": ["base"]}), lacking)
    for path, words in ((noise, "not a readable parquet"), (lacking, "lacks the columns")):
        before = path.read_bytes()
        with pytest.raises(BluepriError) as read_error:
            read_history(str(path))
        with pytest.raises(BluepriError) as append_error:
            append_history(str(path), result)
        for message in (str(read_error.value), str(append_error.value)):
            assert words in message and "\n" not in message, message
        assert path.read_bytes() == before  # never overwritten: earlier nights may be in it


def test_history_rows_of_the_wrong_type_are_skipped(evaluation, tmp_path) -> None:
    rows = history_rows(evaluation[0])
    table = pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)
    scores = ["0.1", None, None, None, "high", "3"]  # strings where a score belongs: wrong
    runs = [None, "a", "b", "c", "d", "e"]  # a row without its run: unusable
    table = table.set_column(
        table.column_names.index("blueprint_score"),
        "blueprint_score",
        pa.array(scores, pa.string()),
    )
    table = table.set_column(table.column_names.index("run"), "run", pa.array(runs))
    table = table.append_column("extra", pa.array([[1]] * len(rows)))  # unknown: ignored
    path = tmp_path / "mixed.parquet"
    sink = io.BytesIO()
    pq.write_table(table, sink)
    path.write_bytes(sink.getvalue())
    kept = read_history(str(path))
    assert kept.column("run").to_pylist() == ["a", "b", "c"]
    assert kept.column("blueprint_score").to_pylist() == [None, None, None]
    assert kept.column_names == HISTORY_SCHEMA.names
