"""Catalogue rendering on Ray Data, end to end on the tiny models (64 px, 3 steps, base and
refiner): 200 prompts into manifest, contact sheets and gallery; a killed driver resumed to
the same bytes; bad rows recorded with their reasons; pool sizes from the config; the
service's bytes; the gallery in a real headless browser.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from PIL import Image

from bluepri import artifacts
from bluepri.cli import main
from bluepri.config import ModelsConfig, RenderConfig
from bluepri.imaging import contact_sheet
from bluepri.models.tiny import save_random_adapter as make_adapter
from bluepri.registry import AdapterRegistry
from bluepri.render import render
from bluepri.render.writer import read_metadata, strip_metadata
from browser import chromium, save_screenshot
from polling import wait_until

pytestmark = pytest.mark.integration

ADAPTER = "blueprints"
SIZE, STEPS = 64, 3  # refine runs round(3 * 0.2) = 1 step
SUBJECTS = [
    "a floor plan of a flat",
    "a gear with teeth",
    "a jet aircraft",
    "a motorcycle",
    "a chair and a table",
    "a kitchen with a stove",
    "a sailing boat",
    "a bridge",
]
STYLES = [None, "white lines on blue", "detailed blueprint, top view"]


def catalogue_rows(count: int) -> list[dict]:
    """Rows that exercise the defaults: some ids and seeds given, some not; three adapters
    (the default champion, a pinned version, none); two sizes; some not refined."""
    rows = []
    for i in range(count):
        row: dict = {"prompt": f"{SUBJECTS[i % len(SUBJECTS)]}, sheet {i}"}
        if STYLES[i % 3]:
            row["prompt_2"] = STYLES[i % 3]
        if i % 4 == 0:
            row["id"] = f"item-{i:04d}"
        if i % 5 == 0:
            row["seed"] = 1000 + i
        if i % 7 == 3:
            row["adapter"] = f"{ADAPTER}@v0002"
        elif i % 7 == 5:
            row["adapter"] = "none"
        if i % 6 == 1:
            row["width"] = SIZE + 16
        if i % 9 == 2:
            row["refine"] = False
        if i % 11 == 4:
            row["negative_prompt"] = "blurry"
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    columns = ["id", "prompt", "prompt_2", "negative_prompt", "seed", "width", "adapter", "refine"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def render_config(catalogue: Path, out: Path, registry: str, **values) -> RenderConfig:
    settings = dict(
        catalogue=str(catalogue), out=str(out), registry=registry, models=ModelsConfig.tiny(),
        adapter=ADAPTER, width=SIZE, height=SIZE, steps=STEPS, progress_interval_s=2.0,
    )  # fmt: skip
    settings.update(values)
    return RenderConfig(**settings)


def manifest_rows(out: Path) -> list[dict]:
    return artifacts.read_render_manifest(str(out)).to_pylist()


def image_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").rglob("*") if p.is_file())


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".tmp-") or ".plan" in p.parts]


@pytest.fixture(scope="module")
def registry(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> AdapterRegistry:
    root = tmp_path_factory.mktemp("render-registry")
    store = AdapterRegistry(root / "registry")
    for seed in (11, 12):
        store.put(make_adapter(root / f"adapter-{seed}", seed), ADAPTER)
    store.promote(ADAPTER, "v0001", "the render tests' champion")
    return store


@pytest.fixture(scope="module")
def reference(ray_session, registry, tmp_path_factory: pytest.TempPathFactory):
    """200 prompts rendered once, uninterrupted: 2 base actors, 1 refiner actor."""
    root = tmp_path_factory.mktemp("render-200")
    catalogue = write_csv(root / "catalogue.csv", catalogue_rows(200))
    lines: list[str] = []
    config = render_config(
        catalogue, root / "out", registry.uri, base_actors=2, refiner_actors=1, block_rows=8
    )
    result = render(config, log=lines.append)
    print("\n".join(lines + result.summary_lines()))
    return result, root / "out", lines


def test_200_prompts_land_in_manifest_contact_sheets_and_gallery(reference, registry) -> None:
    result, out, lines = reference
    assert result.ok and result.total == result.rendered == 200 and result.skipped == 0
    assert any(line.startswith("render: ") and "images/s" in line for line in lines)
    rows = manifest_rows(out)
    assert [r["row"] for r in rows] == list(range(1, 201))
    assert len({r["id"] for r in rows}) == 200
    v1 = registry.verify(ADAPTER, "v0001").sha256
    for row, given in zip(rows, catalogue_rows(200), strict=True):
        assert row["status"] == "rendered", row
        data = (out / row["image_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
        meta = read_metadata(data)
        assert meta["prompt"] == given["prompt"] and meta["seed"] == row["seed"]
        assert Image.open(io.BytesIO(data)).size == (row["width"], row["height"])
        expected = {None: f"{ADAPTER}@v0001", "none": None}.get(given.get("adapter"))
        if given.get("adapter") == f"{ADAPTER}@v0002":
            expected = f"{ADAPTER}@v0002"
        assert row["adapter"] == meta["adapter"] == expected
        if expected == f"{ADAPTER}@v0001":
            assert row["adapter_sha256"] == v1
        assert row["refine"] == given.get("refine", True)
        if "seed" in given:
            assert row["seed"] == given["seed"]
        if "id" in given:
            assert row["id"] == given["id"]
    assert len(image_files(out)) == 200 and not leftovers(out)
    assert len({p.parent.name for p in image_files(out)}) > 50  # sharded folders

    # Contact sheets: every image, and each sheet is exactly its listed images.
    index = json.loads((out / "contact_sheets" / "index.json").read_text())
    listed = [rid for sheet in index["sheets"] for rid in sheet["ids"]]
    assert listed == [r["id"] for r in rows]
    by_id = {r["id"]: r for r in rows}
    for sheet in index["sheets"]:
        images = [Image.open(out / by_id[rid]["image_path"]) for rid in sheet["ids"]]
        expected = contact_sheet(images, sheet["labels"], columns=index["columns"],
                                 cell=index["cell"])  # fmt: skip
        saved = Image.open(out / "contact_sheets" / sheet["sheet"]).convert("RGB")
        assert saved.tobytes() == expected.tobytes()

    # Gallery: every row, with its image path.
    html = (out / "gallery.html").read_text()
    embedded = html.split('<script id="rows" type="application/json">')[1].split("</script>")[0]
    gallery_rows = json.loads(embedded)
    assert [(g["id"], g["image_path"]) for g in gallery_rows] == [
        (r["id"], r["image_path"]) for r in rows
    ]
    run = json.loads((out / "run.json").read_text())
    assert run["adapters"][f"{ADAPTER}@champion"] == {"label": f"{ADAPTER}@v0001", "sha256": v1}
    assert run["summary"]["rendered"] == 200


def test_pool_sizes_come_from_the_config(reference, ray_session) -> None:
    """2 base actors and 1 refiner actor: seen in the manifest's worker ids and in Ray's
    own actor list (the ids are Ray actors of the right class)."""
    from ray.util.state import list_actors

    _, out, _ = reference
    rows = manifest_rows(out)
    base = {r["base_worker"] for r in rows}
    refiner = {r["refiner_worker"] for r in rows if r["refine"]}
    assert len(base) == 2 and len(refiner) == 1
    assert all(r["refiner_worker"] is None for r in rows if not r["refine"])
    for worker, stage in [
        *((w, "BaseStage") for w in base),
        *((w, "RefinerStage") for w in refiner),
    ]:
        actors = list_actors(
            address=state_address(ray_session), filters=[("actor_id", "=", worker)], detail=True
        )
        assert len(actors) == 1 and stage in actors[0].class_name


def state_address(ray) -> str:
    """The session's cluster for Ray's state API (other Rays may run on this machine)."""
    return ray.get_runtime_context().gcs_address


def alive_render_actors(ray) -> list:
    from ray.util.state import list_actors

    alive = list_actors(address=state_address(ray), filters=[("state", "=", "ALIVE")], limit=1000)
    return [a for a in alive if "Stage))" in (a.class_name or "")]


def recorded_rows(out: Path) -> int:
    """Rows in the manifest parts a running render has written (each written atomically)."""
    parts = (out / "manifest-parts").glob("*.parquet")
    return sum(pq.ParquetFile(part).metadata.num_rows for part in parts)


def test_a_killed_driver_resumes_to_the_same_bytes(
    reference, registry, ray_session, tmp_path: Path
) -> None:
    """`bluepri render` in its own process on the session's Ray, SIGKILLed once images
    exist; meanwhile a file is damaged, a temp file left, and the champion changes. The
    rerun renders the rest (and the damaged one) once, with the pinned version."""
    _, reference_out, _ = reference
    reference_rows = {r["id"]: r for r in manifest_rows(reference_out)}
    catalogue = write_csv(tmp_path / "catalogue.csv", catalogue_rows(200)[:48])
    out = tmp_path / "out"
    settings = ["width=64", "height=64", f"steps={STEPS}", "block_rows=4", "base_actors=1",
                "refiner_actors=1", "actor_cpus=0.4", "task_cpus=0.4"]  # fmt: skip
    command = [str(Path(sys.executable).with_name("bluepri")), "render", "--catalogue",
               str(catalogue), "--out", str(out), "--registry", registry.uri, "--tiny",
               *settings]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def two_rows_recorded() -> bool:  # one image to damage, one to keep
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            return recorded_rows(out) >= 2

        wait_until(two_rows_recorded, 300, "two recorded rows", poll_s=0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    assert not (out / "manifest.parquet").exists()  # it was killed part-way
    done_before = len(image_files(out))
    assert 0 < done_before < 48
    # The killed job's actors go with its driver.
    wait_until(lambda: not alive_render_actors(ray_session), 120, "the render actors to go")

    parts = [pq.read_table(p) for p in (out / "manifest-parts").glob("*.parquet")]
    recorded = [r for t in parts for r in t.to_pylist() if r["status"] == "rendered"]
    damaged = out / recorded[0]["image_path"]
    damaged.write_bytes(b"\x89PNG not really")
    (damaged.parent / ".tmp-crashed-writer").write_bytes(b"half an image")
    registry.promote(ADAPTER, "v0002", "a promotion while the render was down")
    try:
        config = render_config(catalogue, out, registry.uri, block_rows=4)
        result = render(config, log=lambda _: None)
    finally:
        registry.rollback(ADAPTER, "back to the render tests' champion")

    assert result.ok and result.total == 48
    assert 1 <= result.skipped <= len(recorded) - 1  # the damaged image is rendered again
    assert result.rendered + result.skipped == 48
    rows = manifest_rows(out)
    assert len(rows) == 48 and len({r["id"] for r in rows}) == 48
    files = image_files(out)
    assert sorted(f.stem for f in files) == sorted(r["id"] for r in rows)  # one each
    assert not leftovers(out) and not (out / "manifest-parts").exists()
    for row in rows:
        assert row["status"] == "rendered"
        expected = reference_rows[row["id"]]
        assert (out / row["image_path"]).read_bytes() == (
            reference_out / expected["image_path"]
        ).read_bytes()
        assert row["adapter"] == expected["adapter"]  # v0001 kept though v0002 was champion


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(
        b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines)
    )
    return path


BAD_ROWS = [
    ({"id": "good-1", "prompt": "a floor plan", "seed": 1}, None),
    ({"id": "empty", "prompt": ""}, "empty_prompt"),
    ({"id": "size", "prompt": "a gear", "width": 65}, "bad_size"),
    ({"id": "adapter", "prompt": "a jet", "adapter": "no-such-adapter"}, "unknown_adapter"),
    ({"id": "version", "prompt": "a jet", "adapter": f"{ADAPTER}@v0099"}, "unknown_adapter"),
    ({"id": "steps", "prompt": "a chair", "steps": 1000}, "steps_out_of_range"),
    (b'{"id": "broken", "prompt": "a car"', "unparsable_row"),
    ({"id": "good-2", "prompt": "a kitchen", "adapter": "none", "refine": False}, None),
    ({"id": "seed", "prompt": "a boat", "seed": "tomorrow"}, "bad_value"),
    ({"id": "../../etc/passwd", "prompt": "a path"}, "bad_id"),
]


@pytest.fixture(scope="module")
def bad_rows_render(ray_session, registry, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("render-bad-rows")
    catalogue = write_jsonl(root / "catalogue.jsonl", [row for row, _ in BAD_ROWS])
    out = root / "out"
    argv = ["render", "--catalogue", str(catalogue), "--out", str(out), "--registry",
            registry.uri, "--tiny", "width=64", "height=64", f"steps={STEPS}"]  # fmt: skip
    return main(argv), out


def test_bad_rows_are_recorded_with_reasons_and_the_exit_code_says_so(bad_rows_render) -> None:
    code, out = bad_rows_render
    assert code == 1
    rows = manifest_rows(out)
    assert [r["row"] for r in rows] == list(range(1, len(BAD_ROWS) + 1))
    for row, (given, reason) in zip(rows, BAD_ROWS, strict=True):
        if reason is None:
            assert row["status"] == "rendered" and (out / row["image_path"]).is_file()
            assert row["id"] == given["id"]
        else:
            assert row["status"] == "failed" and row["error_code"] == reason, row
            assert row["error"] and "\n" not in row["error"] and row["image_path"] is None
    assert len(image_files(out)) == 2
    summary = json.loads((out / "run.json").read_text())["summary"]
    assert summary["rendered"] == 2
    assert sum(summary["failed"].values()) == len(BAD_ROWS) - 2


def test_gallery_opens_in_chromium_with_every_image(reference, bad_rows_render, tmp_path):
    """Every rendered row's image loads (none broken), page by page; failed rows show their
    reasons; the status filter works; screenshots are saved."""
    _, out, _ = reference
    rendered = [r for r in manifest_rows(out) if r["status"] == "rendered"]
    _, bad_out = bad_rows_render
    bad = manifest_rows(bad_out)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto((out / "gallery.html").as_uri() + "?per_page=80")
        loaded, shown = 0, []
        while True:
            page.wait_for_function(
                "Array.from(document.images).every((i) => i.complete)", timeout=60_000
            )
            counts = page.evaluate(
                """() => { const images = Array.from(document.images);
                    return {ok: images.filter((i) => i.naturalWidth > 0).length,
                            broken: images.filter((i) => i.naturalWidth === 0).length,
                            ids: Array.from(document.querySelectorAll("figure"))
                                      .map((f) => f.dataset.id)}; }"""
            )
            assert counts["broken"] == 0
            loaded += counts["ok"]
            shown += counts["ids"]
            if not shown[80:] and len(shown) == 80:
                save_screenshot(tmp_path, "render-gallery.png", page)
            if page.locator("#next").is_disabled():
                break
            page.locator("#next").click()
        assert loaded == len(rendered) == 200
        assert shown == [r["id"] for r in rendered]

        page.goto((bad_out / "gallery.html").as_uri())
        page.wait_for_function("Array.from(document.images).every((i) => i.complete)")
        assert page.locator("figure img").count() == 2
        assert page.evaluate("Array.from(document.images).every((i) => i.naturalWidth > 0)")
        failed = [r for r in bad if r["status"] == "failed"]
        reasons = page.locator("figure.failed .reason").all_inner_texts()
        assert reasons == [f"{r['error_code']}: {r['error']}" for r in failed]
        page.select_option("#status", "failed")
        assert page.locator("figure").count() == len(failed)
        assert page.locator("figure img").count() == 0
        save_screenshot(tmp_path, "render-gallery-failed.png", page)
        assert not problems, problems


def test_render_and_the_service_give_the_same_bytes(served_app, tmp_path: Path) -> None:
    """The same prompt, seed and adapter rendered here and asked of the running service:
    the rendered PNG without its metadata chunks is the service's PNG, byte for byte."""
    rows = [
        {"id": "champion", "prompt": "a floor plan", "prompt_2": "white lines", "seed": 5},
        {"id": "pinned", "prompt": "a gear", "negative_prompt": "blurry", "seed": 6,
         "adapter": f"{served_app.adapter_name}@v0002"},
        {"id": "base", "prompt": "a jet", "seed": 7, "adapter": "none", "refine": False},
    ]  # fmt: skip
    catalogue = write_jsonl(tmp_path / "catalogue.jsonl", rows)
    config = render_config(
        catalogue, tmp_path / "out", served_app.registry.uri, adapter=served_app.adapter_name,
        steps=4, actor_cpus=0.2, task_cpus=0.2,
    )  # fmt: skip
    result = render(config, log=lambda _: None)
    assert result.ok and result.rendered == 3
    for row in manifest_rows(tmp_path / "out"):
        body = {
            "prompt": row["prompt"], "prompt_2": row["prompt_2"],
            "negative_prompt": row["negative_prompt"], "seed": row["seed"],
            "adapter": row["adapter"] or "none", "steps": row["steps"],
            "guidance_scale": row["guidance_scale"], "width": row["width"],
            "height": row["height"], "refine": row["refine"],
            "high_noise_frac": row["high_noise_frac"], "response_format": "png",
        }  # fmt: skip
        answer = requests.post(
            f"{served_app.url}/v1/generate", json=body, headers=served_app.auth, timeout=300
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Bluepri-Adapter"] == (row["adapter"] or "none")
        assert answer.headers["X-Bluepri-Adapter-Sha256"] == (row["adapter_sha256"] or "none")
        rendered = (tmp_path / "out" / row["image_path"]).read_bytes()
        assert strip_metadata(rendered) == answer.content, row["id"]
