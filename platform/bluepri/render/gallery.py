"""What people look at after a render: an HTML gallery and contact sheets.

`gallery.html` sits in the render folder and needs nothing else: the manifest's rows are
embedded as JSON and a small script shows them a page at a time (thumbnails with the prompt
below, the full prompt and settings on hover), filtered by adapter, status and text. Rows
that failed show their reason instead of an image. Text goes into the page through
`textContent` only, so a prompt is never markup.

Contact sheets (`contact_sheets/sheet-NNNN.png`, SHEET_IMAGES each, the first
`contact_sheet_images` rendered rows in catalogue order) are built one sheet at a time, so
memory stays bounded; `contact_sheets/index.json` lists the ids and labels on each sheet.
"""

from __future__ import annotations

import io
import json
from typing import Any

from bluepri import storage
from bluepri.artifacts import RENDER_GALLERY, RENDER_SHEET_INDEX, RENDER_SHEETS, RENDERED

SHEET_IMAGES = 64
SHEET_COLUMNS = 8
SHEET_CELL = 128
GALLERY_FIELDS = (
    "id",
    "row",
    "status",
    "error_code",
    "error",
    "prompt",
    "prompt_2",
    "negative_prompt",
    "seed",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "refine",
    "adapter",
    "image_path",
)


def sheet_label(record: dict[str, Any]) -> str:
    return f"{record['id']}: {record['prompt']}"


def write_contact_sheets(out: str, manifest, limit: int) -> list[str]:
    """Sheets of the first `limit` rendered rows; the index says which ids are on each."""
    from PIL import Image

    from bluepri.imaging import contact_sheet

    if limit <= 0:
        return []
    import pyarrow.compute as pc

    rendered = manifest.filter(pc.equal(manifest.column("status"), RENDERED))
    records = rendered.slice(0, limit).select(["id", "prompt", "image_path"]).to_pylist()
    folder = storage.join(out, RENDER_SHEETS)
    sheets, index = [], []
    for start in range(0, len(records), SHEET_IMAGES):
        chunk = records[start : start + SHEET_IMAGES]
        images = [
            Image.open(io.BytesIO(storage.read_bytes(storage.join(out, r["image_path"]))))
            for r in chunk
        ]
        labels = [sheet_label(r) for r in chunk]
        sheet = contact_sheet(images, labels, columns=SHEET_COLUMNS, cell=SHEET_CELL)
        name = f"sheet-{len(sheets) + 1:04d}.png"
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        storage.write_bytes(storage.join(folder, name), buffer.getvalue())
        sheets.append(storage.join(folder, name))
        index.append({"sheet": name, "ids": [r["id"] for r in chunk], "labels": labels})
    storage.write_json(
        storage.join(folder, RENDER_SHEET_INDEX),
        {"columns": SHEET_COLUMNS, "cell": SHEET_CELL, "sheets": index},
    )
    return sheets


def write_gallery(out: str, manifest, title: str) -> str:
    rows = manifest.select(list(GALLERY_FIELDS)).to_pylist()
    data = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    # In a <script> element only "</script" (and "<!--") could end it early: no "<" at all.
    data = data.replace("<", "\\u003c")
    html = (
        PAGE.replace("__TITLE__", escape_html(title))
        .replace("__DATA__", data)
        .replace("__COUNT__", str(len(rows)))
    )
    uri = storage.join(out, RENDER_GALLERY)
    storage.write_bytes(uri, html.encode("utf-8"))
    return uri


def escape_html(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #181c24; color: #e6ecf5; }
  header { position: sticky; top: 0; background: #232a36; padding: 10px 16px; display: flex;
           gap: 12px; align-items: center; flex-wrap: wrap; z-index: 1; }
  header h1 { font-size: 16px; margin: 0 12px 0 0; }
  select, input, button { font: inherit; }
  #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
          gap: 12px; padding: 16px; }
  figure { margin: 0; background: #232a36; border-radius: 6px; padding: 8px; }
  figure img { width: 100%; height: 184px; object-fit: contain; background: #10131a;
               image-rendering: pixelated; display: block; }
  figure.failed .reason { height: 184px; display: flex; align-items: center;
                          justify-content: center; text-align: center; color: #ff9d8a;
                          background: #2c1f22; padding: 8px; box-sizing: border-box; }
  figcaption { font-size: 12px; margin-top: 6px; word-break: break-word; }
  figcaption .meta { color: #9aa7b8; }
  #pager { padding: 0 16px 24px; display: flex; gap: 8px; align-items: center; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <label>adapter <select id="adapter"><option value="">all</option></select></label>
  <label>status <select id="status"><option value="">all</option>
    <option value="rendered">rendered</option>
    <option value="failed">failed</option></select></label>
  <label>search <input id="search" type="search" placeholder="prompt or id"></label>
  <span id="count"></span>
</header>
<main id="grid"></main>
<nav id="pager">
  <button id="prev" type="button">previous</button>
  <span id="page"></span>
  <button id="next" type="button">next</button>
</nav>
<script id="rows" type="application/json">__DATA__</script>
<script>
"use strict";
const rows = JSON.parse(document.getElementById("rows").textContent);
const params = new URLSearchParams(location.search);
const perPage = Math.max(1, parseInt(params.get("per_page") || "120", 10) || 120);
let page = 0;
const $ = (id) => document.getElementById(id);
const BASE = "(base model)";
const adapterOf = (r) => r.adapter || BASE;
for (const name of [...new Set(rows.map(adapterOf))].sort()) {
  const option = document.createElement("option");
  option.value = name; option.textContent = name; $("adapter").appendChild(option);
}
function matching() {
  const adapter = $("adapter").value, status = $("status").value;
  const text = $("search").value.trim().toLowerCase();
  const says = (r) => `${r.prompt || ""} ${r.id}`.toLowerCase().includes(text);
  return rows.filter((r) => (!adapter || adapterOf(r) === adapter) &&
    (!status || r.status === status) && (!text || says(r)));
}
function card(r) {
  const figure = document.createElement("figure");
  figure.className = r.status;
  figure.dataset.id = r.id;
  const details = [`id ${r.id} (row ${r.row})`, r.prompt || ""];
  if (r.prompt_2) details.push(`prompt 2: ${r.prompt_2}`);
  if (r.negative_prompt) details.push(`negative: ${r.negative_prompt}`);
  if (r.status === "rendered") {
    details.push(`seed ${r.seed}, ${r.width}x${r.height}, ${r.steps} steps, ` +
                 `guidance ${r.guidance_scale}` + (r.refine ? ", refined" : ""),
                 `adapter ${adapterOf(r)}`);
    const img = document.createElement("img");
    img.src = r.image_path; img.alt = r.prompt || r.id; img.title = details.join("\\n");
    figure.appendChild(img);
  } else {
    const reason = document.createElement("div");
    reason.className = "reason";
    reason.textContent = `${r.error_code}: ${r.error}`;
    reason.title = details.join("\\n");
    figure.appendChild(reason);
  }
  const caption = document.createElement("figcaption");
  caption.textContent = r.prompt || "(no prompt)";
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${r.id} · ${adapterOf(r)} · ${r.status}`;
  caption.appendChild(meta);
  figure.appendChild(caption);
  return figure;
}
function show() {
  const found = matching();
  const pages = Math.max(1, Math.ceil(found.length / perPage));
  page = Math.min(Math.max(page, 0), pages - 1);
  $("grid").replaceChildren(...found.slice(page * perPage, (page + 1) * perPage).map(card));
  $("count").textContent = `${found.length} of ${rows.length} rows`;
  $("page").textContent = `page ${page + 1} of ${pages}`;
  $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
}
for (const id of ["adapter", "status", "search"]) {
  $(id).addEventListener("input", () => { page = 0; show(); });
}
$("prev").addEventListener("click", () => { page -= 1; show(); window.scrollTo(0, 0); });
$("next").addEventListener("click", () => { page += 1; show(); window.scrollTo(0, 0); });
show();
</script>
</body>
</html>
"""
