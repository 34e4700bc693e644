"""The evaluation report: one self-contained HTML page and one summary figure.

`write_report` writes, into the evaluation folder,

    report.html        settings, notes, metrics (differences to the base coloured by whether
                       they are better), loss curves, the search's trials, the history of
                       nights and prompt-by-prompt image grids
    summary.png        a bar chart per score: base vs adapters, refiner variants side by side
    figures/*.png      the page's other figures (drawn here with matplotlib, or copied from
                       the search's folder)

The page's CSS is inline and it has no script; images are referenced by relative paths, so
the folder can be copied or served anywhere as it is. Every string that comes from the
results (prompts are user text, labels and notes quote paths) is escaped with html.escape,
and paths recorded in the results are used only when they stay inside the folder.
"""

from __future__ import annotations

import html
import io
import json
import math
import posixpath
import re
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import pyarrow as pa

from bluepri import storage
from bluepri.artifacts import METRICS_JSON
from bluepri.eval.results import (
    BASE_LABEL,
    EVAL_REPORT,
    EVAL_SUMMARY_PNG,
    SCORES,
    EvalResult,
    ModelRun,
)
from bluepri.imaging import figure_png, new_figure

FIGURES = "figures"
GRID_PROMPTS = 64  # prompt rows shown in the image grids; the rest are counted
GRID_CELL = 160  # longest side of a grid image on the page, CSS pixels
SEARCH_ROWS = 200
SEARCH_PLOTS = ("optimization_history.png", "param_importances.png")
MAX_METRICS_BYTES = 64 * 1024 * 1024
MAX_SEARCH_BYTES = 64 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE_COLOUR, REFINED_COLOUR = "#4a6fa5", "#d08c3a"
# Words a note uses for a score: a score that was not measured points at the note saying why.
SCORE_WORDS = {
    "heldout_loss": ("held-out", "heldout"),
    "blueprint_score": ("blueprint",),
    "paper_score": ("paper",),
    "clip_score": ("clip",),
    "fid": ("fid",),
    "kid_mean": ("kid",),
}


def write_report(
    result: EvalResult,
    out: str,
    *,
    history: pa.Table | None = None,
    search_dir: str | None = None,
) -> tuple[str, str]:
    """Write `<out>/report.html` and `<out>/summary.png`; return their paths."""
    summary_uri = storage.join(out, EVAL_SUMMARY_PNG)
    summary = summary_png(result)
    storage.write_bytes(summary_uri, summary)
    sections = [
        notes_html(result.notes),
        settings_html(result),
        summary_html(summary),
        metrics_html(result),
        training_html(result, out),
        search_html(out, search_dir) if search_dir else "",
        history_html(result, out, history),
        grids_html(result, out),
    ]
    body = "\n".join([header_html(result, sections), *(s for s in sections if s)])
    page = PAGE.format(title=esc(f"Evaluation {result.label}"), css=CSS, body=body)
    report_uri = storage.join(out, EVAL_REPORT)
    storage.write_bytes(report_uri, page.encode("utf-8"))
    return report_uri, summary_uri


# -- small helpers -----------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float | None) -> str:
    """A score as people read it: four significant digits, "—" when not measured."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def fmt_delta(value: float) -> str:
    return f"{value:+.3g}"


def better_class(delta: float | None, direction: int) -> str:
    """Whether a difference to the base is "better", "worse" or "same" for this score."""
    if delta is None or not math.isfinite(delta) or delta == 0:
        return "same"
    return "better" if delta * direction > 0 else "worse"


def direction_words(direction: int) -> str:
    return "higher is better" if direction > 0 else "lower is better"


def inside(relative: str | None) -> str | None:
    """A path recorded in the results, normalised, if it stays inside the evaluation folder
    (eval.json is a file people can edit: "../" or an absolute path must not lead out)."""
    if not relative or "\\" in relative or "://" in relative or "\x00" in relative:
        return None
    path = posixpath.normpath(relative)
    if path.startswith(("/", "../")) or path in (".", ".."):
        return None
    return path


def href(relative: str) -> str:
    """A relative path as a URL attribute value (a "#" or "?" in a file name stays a name)."""
    return esc(quote(relative, safe="/"))


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != PNG_SIGNATURE or len(data) < 24:
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def img_html(src: str, alt: str, size: tuple[int, int], css_class: str = "figure") -> str:
    width, height = size
    return (
        f'<img class="{css_class}" src="{href(src)}" alt="{esc(alt)}" '
        f'width="{width}" height="{height}" loading="lazy">'
    )


def write_figure(out: str, name: str, data: bytes) -> str:
    """Write a figure into `<out>/figures/` and return its path relative to `out`."""
    relative = f"{FIGURES}/{name}"
    storage.write_bytes(storage.join(out, relative), data)
    return relative


def note_html(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table_html(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    css_class: str = "",
    row_classes: Sequence[str] = (),
) -> str:
    """A table from cells that are HTML already (callers escape their text)."""
    header = "".join(f"<th>{cell}</th>" for cell in head)
    body = "".join(
        (f'<tr class="{row_classes[i]}">' if i < len(row_classes) and row_classes[i] else "<tr>")
        + "".join(f"<td>{c}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return (
        f'<table class="{css_class}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'
    )


def run_name(run: ModelRun) -> str:
    return f"{run.label} + refiner" if run.refine else run.label


def model_labels(result: EvalResult) -> list[str]:
    """The models measured, base first, then the adapters in the order they were run."""
    labels = [BASE_LABEL] if any(r.label == BASE_LABEL for r in result.runs) else []
    for run in result.runs:
        if run.label not in labels:
            labels.append(run.label)
    return labels


def refine_settings(result: EvalResult) -> list[bool]:
    return sorted({run.refine for run in result.runs})


def measured_scores(result: EvalResult) -> list[str]:
    return [n for n in SCORES if any(getattr(r.scores, n) is not None for r in result.runs)]


# -- header, notes, settings -------------------------------------------------------------------


def header_html(result: EvalResult, sections: list[str]) -> str:
    """The title line and links to the sections the page has (each opens with its id)."""
    ids = [m.group(1) for m in (re.match(r'<section id="(\w+)"', s) for s in sections) if m]
    links = " · ".join(f'<a href="#{i}">{i}</a>' for i in ids)
    return (
        f"<header><h1>Evaluation {esc(result.label)}</h1>"
        f'<p class="sub">{esc(result.created)} · protocol {esc(result.protocol.name)} · '
        f"{len(result.prompts)} prompts · {result.width}×{result.height} · "
        f"{len(model_labels(result))} models</p><nav>{links}</nav></header>"
    )


def notes_html(notes: list[str]) -> str:
    if not notes:
        return (
            '<section id="notes"><p class="allgood">Every metric was measured: nothing to '
            "note.</p></section>"
        )
    items = "".join(f'<li id="note-{i}">{esc(n)}</li>' for i, n in enumerate(notes, 1))
    return (
        '<section id="notes" class="notes"><h2>What could not be measured</h2>'
        f"<ol>{items}</ol></section>"
    )


def seeds_text(result: EvalResult) -> str:
    seeds = result.seeds
    if not seeds:
        return "none"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        span = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        return f"{span} (prompt i uses seed {seeds[0]} + i, the same for every model)"
    return ", ".join(str(s) for s in seeds[:32]) + (" …" if len(seeds) > 32 else "")


def settings_rows(result: EvalResult) -> list[tuple[str, str]]:
    protocol = result.protocol
    rows = [
        ("evaluation", result.label),
        ("created", result.created),
        ("protocol", protocol.name),
        ("steps", str(protocol.steps)),
        ("guidance scale", f"{protocol.guidance_scale:g}"),
        ("scheduler", protocol.scheduler),
        ("refiner takes over at", f"{protocol.high_noise_frac:g} of the denoising"),
        ("prompts", f"{len(result.prompts)} (protocol's maximum {protocol.max_prompts})"),
        ("seeds", seeds_text(result)),
        ("image size", f"{result.width}×{result.height}"),
    ]
    rows += [(f"model: {key}", value or "—") for key, value in result.models.items()]
    rows += [
        ("CLIP model", result.clip_model or "—"),
        ("FID/KID features", result.fid_features or "—"),
        ("reference set", reference_text(result)),
        ("cache", result.cache),
        ("cache fingerprint", result.cache_fingerprint),
        ("search", result.search or "—"),
        ("history", result.history or "—"),
        ("evaluation took", f"{result.seconds:.0f} s"),
    ]
    return rows


def reference_text(result: EvalResult) -> str:
    reference = result.reference
    if reference is None:
        return "— (FID/KID not measured)"
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(reference.skipped.items()))
    return f"{reference.count} drawings from {reference.source}" + (
        f" (skipped: {skipped})" if skipped else ""
    )


def settings_html(result: EvalResult) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in settings_rows(result))
    return (
        f'<section id="settings"><h2>Settings</h2><table class="settings">{rows}</table></section>'
    )


# -- the summary figure ------------------------------------------------------------------------


def summary_png(result: EvalResult) -> bytes:
    """A bar chart per measured score: the models side by side, with and without refiner."""
    scores = measured_scores(result) or list(SCORES)[:1]
    columns = min(3, len(scores))
    rows = -(-len(scores) // columns)
    figure = new_figure(4.2 * columns, 3.3 * rows + 0.4)
    figure.suptitle(
        f"Evaluation {result.label}: {result.protocol.name}, {len(result.prompts)} prompts, "
        f"{result.protocol.steps} steps",
        fontsize=11,
    )
    for index, name in enumerate(scores):
        score_bars(figure.add_subplot(rows, columns, index + 1), result, name)
    return figure_png(figure)


def score_bars(axes, result: EvalResult, name: str) -> None:
    labels = model_labels(result)
    settings = refine_settings(result)
    width = 0.8 / max(1, len(settings))
    for slot, refine in enumerate(settings):
        values = [score_of(result, label, refine, name) for label in labels]
        xs = [i + (slot - (len(settings) - 1) / 2) * width for i in range(len(labels))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = axes.bar(
            xs,
            heights,
            width,
            color=REFINED_COLOUR if refine else BASE_COLOUR,
            label="+ refiner" if refine else "base only",
        )
        texts = [fmt(v) if v is not None else "n/a" for v in values]
        axes.bar_label(bars, texts, fontsize=7, padding=1)
    axes.set_title(f"{name} ({direction_words(SCORES[name])})", fontsize=9)
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels([shorten(label, 18) for label in labels], fontsize=7, rotation=15)
    axes.tick_params(axis="y", labelsize=7)
    axes.margins(y=0.15)
    axes.grid(axis="y", alpha=0.3)
    if len(settings) > 1:
        axes.legend(fontsize=7)


def score_of(result: EvalResult, label: str, refine: bool, name: str) -> float | None:
    run = result.find(label, refine)
    value = getattr(run.scores, name) if run else None
    return value if value is not None and math.isfinite(value) else None


def shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def summary_html(summary: bytes) -> str:
    image = img_html(
        EVAL_SUMMARY_PNG, "bar charts of every score, base vs adapters", png_size(summary)
    )
    return f'<section id="summary"><h2>Summary</h2>{image}</section>'


# -- metrics table -----------------------------------------------------------------------------


def metrics_html(result: EvalResult) -> str:
    scores = list(SCORES)
    head = ["model", "refiner"] + [
        f'{esc(n)}<br><span class="dir">{"↑" if SCORES[n] > 0 else "↓"} '
        f"{direction_words(SCORES[n])}</span>"
        for n in scores
    ]
    rows = []
    for refine in refine_settings(result):
        for label in model_labels(result):
            run = result.find(label, refine)
            if run is None:
                continue
            cells = [esc(run.label), "with refiner" if run.refine else "base only"]
            cells += [score_cell(run, name, result.notes) for name in scores]
            rows.append(cells)
    legend = (
        '<p class="legend">Differences are to the base model at the same refiner setting, '
        'on the same prompts and seeds: <span class="better">better</span>, '
        '<span class="worse">worse</span>, <span class="same">no change</span>.</p>'
    )
    return (
        f'<section id="metrics"><h2>Metrics</h2>{legend}'
        f"{table_html(head, rows, 'metrics')}</section>"
    )


def score_cell(run: ModelRun, name: str, notes: list[str]) -> str:
    value = getattr(run.scores, name)
    if value is None:
        number = note_number(name, notes)
        why = f' <a class="why" href="#note-{number}">note {number}</a>' if number else ""
        return f'<span class="value missing" title="not measured">—</span>{why}'
    cell = f'<span class="value">{fmt(value)}</span>'
    delta = run.differences.get(name)
    if run.label != BASE_LABEL and delta is not None and math.isfinite(delta):
        cell += (
            f'<br><span class="delta {better_class(delta, SCORES[name])}">{fmt_delta(delta)}</span>'
        )
    return cell


def note_number(name: str, notes: list[str]) -> int | None:
    """The first note that speaks of this score (1-based, as the notes list is numbered)."""
    words = SCORE_WORDS.get(name, (name,))
    for number, note in enumerate(notes, 1):
        if any(word in note.lower() for word in words):
            return number
    return 1 if notes else None


# -- training and validation loss --------------------------------------------------------------


def training_html(result: EvalResult, out: str) -> str:
    adapters = adapter_runs(result)
    if not adapters:
        return ""
    curves, notes = {}, []
    for run in adapters:
        history, problem = read_loss_history(out, run)
        if problem:
            notes.append(f"{run.label}: {problem}")
        else:
            curves[run.label] = history
    parts = ['<section id="training"><h2>Training and validation loss</h2>']
    if curves:
        data = loss_curves_png(curves)
        relative = write_figure(out, "loss_curves.png", data)
        alt = "training and validation loss of every adapter"
        parts.append(img_html(relative, alt, png_size(data)))
        parts.append(loss_table(curves))
    parts += [note_html(n) for n in notes]
    parts.append("</section>")
    return "".join(parts)


def adapter_runs(result: EvalResult) -> list[ModelRun]:
    """One run per adapter (its folder is the same at either refiner setting)."""
    seen, runs = set(), []
    for run in result.runs:
        if run.label != BASE_LABEL and run.label not in seen:
            seen.add(run.label)
            runs.append(run)
    return runs


def read_loss_history(out: str, run: ModelRun) -> tuple[list[dict[str, float]], str | None]:
    """The adapter's metrics history (numbers only), or why there is none."""
    folder = inside(run.folder)
    if folder is None:
        return [], "no adapter folder recorded in the results (no loss curves)"
    uri = storage.join(out, folder, METRICS_JSON)
    try:
        data = json.loads(storage.read_bytes_within(out, uri, MAX_METRICS_BYTES))
    except (OSError, ValueError, RecursionError) as err:
        # A missing file (FileNotFoundError) and a broken one read the same to people here;
        # json nested deeper than Python's stack raises RecursionError.
        why = "missing" if isinstance(err, FileNotFoundError) else "unreadable"
        return [], f"{folder}/{METRICS_JSON} is {why} (no loss curves)"
    history = data.get("history") if isinstance(data, dict) else None
    if not isinstance(history, list):
        return [], f"{folder}/{METRICS_JSON} has no history list (no loss curves)"
    points = [p for p in (loss_point(entry) for entry in history) if p]
    if not points:
        return [], f"{folder}/{METRICS_JSON} has no loss values (no loss curves)"
    return points, None


def loss_point(entry: Any) -> dict[str, float] | None:
    """A history entry's step and losses, when they are real numbers."""
    if not isinstance(entry, dict) or not is_number(entry.get("step")):
        return None
    point = {"step": float(entry["step"])}
    for key in ("loss", "val_loss"):
        if is_number(entry.get(key)):
            point[key] = float(entry[key])
    return point if len(point) > 1 else None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def smoothed(values: list[float], weight: float = 0.6) -> list[float]:
    """An exponential moving average (TensorBoard's smoothing), bias-corrected at the start
    so the first points are not pulled towards zero."""
    out, average = [], 0.0
    for n, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**n))
    return out


def loss_curves_png(curves: dict[str, list[dict[str, float]]]) -> bytes:
    figure = new_figure(8, 4.2)
    axes = figure.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for colour, (label, points) in zip(colours, curves.items(), strict=True):
        train = [(p["step"], p["loss"]) for p in points if "loss" in p]
        val = [(p["step"], p["val_loss"]) for p in points if "val_loss" in p]
        if train:
            steps, losses = zip(*train, strict=True)
            axes.plot(steps, losses, color=colour, alpha=0.2, lw=0.8)  # raw, faint
            axes.plot(steps, smoothed(list(losses)), color=colour, lw=1.5, label=f"{label} train")
        if val:
            axes.plot(
                *zip(*val, strict=True),
                color=colour,
                ls="--",
                marker="o",
                label=f"{label} val (fixed noise)",
            )
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("loss")
    axes.set_title("Train loss (smoothed; faint: per step) and validation loss", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure_png(figure)


def loss_table(curves: dict[str, list[dict[str, float]]]) -> str:
    rows = []
    for label, points in curves.items():
        val = [p["val_loss"] for p in points if "val_loss" in p]
        steps = max(p["step"] for p in points)
        rows.append(
            [
                esc(label),
                f"{steps:.0f}",
                fmt(val[0] if val else None),
                fmt(val[-1] if val else None),
                fmt(min(val) if val else None),
            ]
        )
    head = ["adapter", "steps", "first val loss", "last val loss", "best val loss"]
    return table_html(head, rows, "losses")


# -- the search --------------------------------------------------------------------------------


def search_html(out: str, search_dir: str) -> str:
    parts = ['<section id="search"><h2>Hyper-parameter search</h2>']
    parts.append(f'<p class="sub">{esc(search_dir)}</p>')
    parts.append(search_space_html(search_dir))
    rows, problem = read_search_rows(search_dir)
    parts.append(note_html(problem) if problem else search_table(rows))
    for name in SEARCH_PLOTS:
        parts.append(copied_plot(out, search_dir, name))
    parts.append("</section>")
    return "".join(parts)


def read_search_rows(search_dir: str) -> tuple[list[dict[str, Any]], str | None]:
    import pyarrow.parquet as pq

    uri = storage.join(search_dir, "results.parquet")
    if not storage.is_file(uri):
        return [], f"no results.parquet in {search_dir} (the search has not finished?)"
    try:
        table = pq.read_table(
            io.BytesIO(storage.read_bytes_within(search_dir, uri, MAX_SEARCH_BYTES))
        )
        return table.slice(0, SEARCH_ROWS + 1).to_pylist(), None
    except Exception as err:  # noqa: BLE001 - any failure to parse is one note on the page
        return [], f"{uri} is not a readable parquet: {str(err).splitlines()[0][:200]}"


def search_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return note_html("the search's results.parquet has no trials")
    columns = [c for c in rows[0] if c != "adapter"]
    best = best_trial(rows)
    body = []
    for row in rows[:SEARCH_ROWS]:
        cells = [search_cell(c, row.get(c)) for c in columns]
        cells.append("yes" if row.get("adapter") else "—")
        body.append(cells)
    head = [esc(c.removeprefix("param_")) for c in columns] + ["adapter kept"]
    marks = ["best" if row is best else "" for row in rows[:SEARCH_ROWS]]
    table = table_html(head, body, "search", marks)
    more = len(rows) - SEARCH_ROWS
    caption = note_html(f"{more} more trials not shown") if more > 0 else ""
    legend = (
        '<p class="legend">Highlighted: the completed trial with the lowest final validation '
        "loss.</p>"
        if best is not None
        else ""
    )
    return legend + table + caption


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    finished = [
        r
        for r in rows[:SEARCH_ROWS]
        if r.get("state") == "completed" and is_number(r.get("final_val_loss"))
    ]
    return min(finished, key=lambda r: r["final_val_loss"]) if finished else None


def search_cell(column: str, value: Any) -> str:
    if value is None:
        return "—"
    if column == "started" and is_number(value):
        return esc(datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    if isinstance(value, float):
        return fmt(value)
    return esc(value)


def search_space_html(search_dir: str) -> str:
    """The searched space from search.json, when it reads as one."""
    try:
        config = json.loads(
            storage.read_bytes_within(search_dir, storage.join(search_dir, "search.json"), 1 << 20)
        )
        space = config["space"]
        lines = [f"{name}: {space_text(spec)}" for name, spec in space.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return ""
    name = config.get("experiment_name", "")
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    return f"<p>Experiment {esc(name)}: {len(lines)} parameters searched</p><ul>{items}</ul>"


def space_text(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "choice":
        return "one of " + ", ".join(str(c) for c in spec.get("choices") or [])
    return f"{spec.get('kind')} from {spec.get('low')} to {spec.get('high')}"


def copied_plot(out: str, search_dir: str, name: str) -> str:
    """One of Optuna's plots copied beside the page (the search folder may be elsewhere)."""
    uri = storage.join(search_dir, name)
    if not storage.is_file(uri):
        return ""
    try:
        data = storage.read_bytes_within(search_dir, uri, MAX_SEARCH_BYTES)
        size = png_size(data)
    except (OSError, ValueError):
        return note_html(f"{name} in the search folder is not a readable PNG")
    relative = write_figure(out, f"search-{name}", data)
    alt = name.removesuffix(".png").replace("_", " ")
    return img_html(relative, f"search: {alt}", scaled(size, 900))


def scaled(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """A size shrunk (never grown) so its longest side is at most `longest`."""
    width, height = size
    return fitted(size, longest) if max(width, height) > longest else size


def fitted(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """A size scaled, up or down, so its longest side is `longest`."""
    width, height = size
    factor = longest / max(width, height, 1)
    return max(1, round(width * factor)), max(1, round(height * factor))


# -- the history of nights ---------------------------------------------------------------------


def history_html(result: EvalResult, out: str, history: pa.Table | None) -> str:
    from bluepri.eval.history import history_rows, valid_rows

    if history is None:
        return ""
    rows, skipped = valid_rows(history)
    # This evaluation is on the plots even when the history was read before it was added.
    rows = [r for r in rows if r["eval"] != result.label] + history_rows(result)
    nights = night_order(rows)
    parts = ['<section id="history"><h2>History of evaluations</h2>']
    if skipped:
        parts.append(note_html(f"{skipped} history rows with values of the wrong type left out"))
    if len(nights) < 2:
        parts.append(note_html("the history holds one evaluation: plots from the second on"))
        return "".join(parts) + "</section>"
    champion = any(is_champion(r.get("adapter")) for r in rows)
    parts.append(
        f'<p class="legend">{len(nights)} evaluations; dashed grey: the base'
        + (
            "; thick: the adapters' champion (the adapter evaluated as name@champion or by "
            "its bare name), whichever version it was that night"
            if champion
            else ""
        )
        + ".</p>"
    )
    parts.append('<div class="figures">')
    for name in SCORES:
        data = history_png(rows, nights, name)
        if data is None:
            continue
        relative = write_figure(out, f"history-{name}.png", data)
        parts.append(img_html(relative, f"{name} across evaluations", png_size(data)))
    return "".join(parts) + "</div></section>"


def night_order(rows: list[dict[str, Any]]) -> list[str]:
    """Evaluation labels in the order they were made (by their earliest `created`)."""
    first: dict[str, str] = {}
    for row in rows:
        first[row["eval"]] = min(first.get(row["eval"], row["created"]), row["created"])
    return sorted(first, key=lambda label: (first[label], label))


def is_champion(adapter: str | None) -> bool:
    """A registry reference that resolves to the champion: `name@champion` or a bare name
    (a folder path or a pinned version is not)."""
    if not adapter or "/" in adapter or "\\" in adapter:
        return False
    return "@" not in adapter or adapter.endswith("@champion")


def history_series(
    rows: list[dict[str, Any]], nights: list[str], name: str
) -> dict[tuple[str, bool], dict[int, float]]:
    """(run label, or "champion" for the champion's runs, refine) -> {night index: value}.
    The champion's version changes from night to night: its runs make one line, not one
    point per version."""
    index = {label: i for i, label in enumerate(nights)}
    series: dict[tuple[str, bool], dict[int, float]] = {}
    for row in rows:
        value = row.get(name)
        if value is None:
            continue
        label = "champion" if is_champion(row.get("adapter")) else row["run"]
        series.setdefault((label, row["refine"]), {})[index[row["eval"]]] = value
    return series


def history_png(rows: list[dict[str, Any]], nights: list[str], name: str) -> bytes | None:
    series = history_series(rows, nights, name)
    if not series:
        return None
    figure = new_figure(6.6, 3.3)  # two side by side on a wide screen
    axes = figure.add_subplot()
    others = sorted({label for label, _ in series} - {BASE_LABEL, "champion"})
    for key, points in sorted(series.items(), key=lambda item: history_z(item[0])):
        label, refine = key
        xs = sorted(points)
        style = {"label": f"{label} + refiner" if refine else label}
        style.update(history_style(label, refine, others))
        axes.plot(xs, [points[x] for x in xs], marker="o", **style)
    # A label on at most a dozen of the nights: more would overlap.
    every = max(1, -(-len(nights) // 12))
    ticks = list(range(0, len(nights), every))
    axes.set_xticks(ticks)
    axes.set_xticklabels([shorten(nights[i], 16) for i in ticks], fontsize=7, rotation=20)
    axes.set_title(f"{name} ({direction_words(SCORES[name])})", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure_png(figure)


def history_z(key: tuple[str, bool]) -> tuple[int, str, bool]:
    """Drawing order: the others first, the base, the champion on top."""
    label, refine = key
    return ({BASE_LABEL: 1, "champion": 2}.get(label, 0), label, refine)


# Colours of the other adapters' lines: none of the champion's blue and orange or base's grey.
OTHER_COLOURS = ("C2", "C3", "C4", "C5", "C6", "C8", "C9")
MAX_LEGEND_OTHERS = 8


def history_style(label: str, refine: bool, others: list[str]) -> dict[str, Any]:
    """The champion thick (blue, orange with the refiner), the base grey and dashed, the
    other adapters thin, one colour each, dotted with the refiner."""
    if label == "champion":
        colour = REFINED_COLOUR if refine else BASE_COLOUR
        return {"color": colour, "lw": 3.2, "zorder": 3}
    if label == BASE_LABEL:
        return {"color": "grey", "ls": "-." if refine else "--", "lw": 1.5, "zorder": 2}
    style: dict[str, Any] = {"lw": 1.0, "alpha": 0.8, "markersize": 3, "ls": ":" if refine else "-"}
    if len(others) > MAX_LEGEND_OTHERS:
        # Many adapter versions: thin silver lines; the champion and base carry the legend.
        return {**style, "color": "silver", "label": "_nolegend_"}
    return {**style, "color": OTHER_COLOURS[others.index(label) % len(OTHER_COLOURS)]}


# -- the prompt-by-prompt grids ----------------------------------------------------------------


def grids_html(result: EvalResult, out: str) -> str:
    """One row per prompt; a group of columns per refiner setting, a column per model."""
    groups = grid_groups(result)
    # Tiny renders are scaled up to the cell too (crisp: image-rendering pixelated).
    size = fitted((result.width, result.height), GRID_CELL)
    shown = min(len(result.prompts), GRID_PROMPTS)
    body = "".join(grid_row(result, out, groups, i, size) for i in range(shown))
    more = len(result.prompts) - shown
    tail = note_html(f"{more} more prompts not shown") if more > 0 else ""
    return (
        '<section id="prompts"><h2>Prompt by prompt</h2>'
        '<p class="legend">Every column made from the same prompt and seed.</p>'
        f'<div class="scroll"><table class="grid">{grid_head(groups)}<tbody>{body}</tbody>'
        f"</table></div>{tail}</section>"
    )


def grid_groups(result: EvalResult) -> list[list[ModelRun]]:
    labels = model_labels(result)
    groups = [
        [run for run in (result.find(label, refine) for label in labels) if run]
        for refine in refine_settings(result)
    ]
    return [group for group in groups if group]


def grid_head(groups: list[list[ModelRun]]) -> str:
    top = "".join(
        f'<th colspan="{len(group)}" class="group">'
        f"{'with refiner' if group[0].refine else 'base only'}</th>"
        for group in groups
    )
    names = "".join(f"<th>{esc(run.label)}</th>" for group in groups for run in group)
    return f'<thead><tr><th rowspan="2">prompt</th>{top}</tr><tr>{names}</tr></thead>'


def grid_row(
    result: EvalResult, out: str, groups: list[list[ModelRun]], i: int, size: tuple[int, int]
) -> str:
    prompt = result.prompts[i]
    seed = result.seeds[i] if i < len(result.seeds) else "—"
    cells = [f'<td class="prompt">{esc(prompt)}<br><span class="seed">seed {esc(seed)}</span></td>']
    cells += [grid_cell(out, run, i, prompt, size) for group in groups for run in group]
    return "<tr>" + "".join(cells) + "</tr>"


def grid_cell(out: str, run: ModelRun, index: int, prompt: str, size: tuple[int, int]) -> str:
    """The image, linked to itself at full size; "no image" where it is missing (or its
    recorded path leads out of the folder)."""
    relative = inside(run.images[index]) if index < len(run.images) else None
    if relative is None or not storage.is_file(storage.join(out, relative)):
        return '<td class="missing">no image</td>'
    image = img_html(relative, f"{run_name(run)}: {prompt}", size, "render")
    return f'<td><a href="{href(relative)}">{image}</a></td>'


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 0 20px 40px; color: #1d2330; background: #f6f7f9; }
header { padding: 16px 0 8px; border-bottom: 2px solid #4a6fa5; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 17px; margin: 28px 0 8px; color: #2c4a78; }
nav a { margin-right: 4px; color: #2c4a78; }
.sub { color: #5b6577; margin: 4px 0; }
section { margin-top: 12px; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d6dae1; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #e9edf3; }
table.settings th { background: #f0f2f6; font-weight: 600; white-space: nowrap; }
table.metrics td { text-align: right; white-space: nowrap; }
table.metrics td:first-child, table.metrics td:nth-child(2) { text-align: left; }
.dir { font-weight: normal; font-size: 11px; color: #5b6577; }
.value { font-variant-numeric: tabular-nums; }
.delta { font-size: 12px; font-weight: 600; padding: 0 3px; border-radius: 3px; }
.better { color: #0d6b2f; background: #d9f2e1; }
.worse { color: #9c1d1d; background: #f8dcdc; }
.same { color: #5b6577; background: #eceef2; }
.legend span { padding: 0 4px; border-radius: 3px; }
.notes { background: #fff4d6; border: 2px solid #e0a800; border-radius: 6px; padding: 4px 16px; }
.notes h2 { color: #7a5600; margin-top: 8px; }
.allgood { background: #e4f4e8; border-radius: 6px; padding: 8px 16px; }
.note { color: #7a5600; background: #fff4d6; padding: 4px 8px; border-radius: 4px; }
a.why { font-size: 11px; color: #7a5600; }
img.figure { display: block; max-width: 100%; height: auto; margin: 8px 0; background: #fff; }
.scroll { overflow-x: auto; }
.figures { display: flex; flex-wrap: wrap; gap: 0 16px; }
table.grid th.group { text-align: center; background: #dde5f1; }
table.grid td.prompt { max-width: 260px; min-width: 160px; }
table.grid img.render { display: block; object-fit: contain; background: #10131a;
                        image-rendering: pixelated; }
table.grid td.missing { color: #9c1d1d; text-align: center; vertical-align: middle; }
.seed { color: #5b6577; font-size: 12px; }
tr.best td { background: #d9f2e1; }
"""
