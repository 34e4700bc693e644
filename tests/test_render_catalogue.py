"""Render without Ray: catalogue reading, row checks, ids and seeds, PNG metadata, the
manifest's bookkeeping, and one-line errors for a bad job."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bluepri.cli import main
from bluepri.config import ModelsConfig, RenderConfig
from bluepri.errors import BluepriError
from bluepri.render import catalogue as catalogue_module
from bluepri.render.catalogue import open_catalogue
from bluepri.render.manifest import ManifestParts, as_table, latest_records, remove_leftovers
from bluepri.render.plan import AdapterPins, Pin, plan_catalogue
from bluepri.render.writer import encode_png, read_metadata, strip_metadata


def config_for(tmp_path: Path, catalogue: Path, **values) -> RenderConfig:
    defaults = {"models": ModelsConfig.tiny(), "adapter": "none", "width": 64, "height": 64,
                "steps": 4}  # fmt: skip
    return RenderConfig(
        catalogue=str(catalogue),
        out=str(tmp_path / "out"),
        registry=str(tmp_path / "registry"),
        **{**defaults, **values},
    )


def rows_of(path: Path, fmt: str = "auto") -> list:
    return list(open_catalogue(str(path), fmt).rows())


def test_csv_rows_bad_lines_are_rows_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,prompt,seed,sku\n"  # a BOM, and a column render does not know
        b"a,a floor plan,3,X1\n"
        b"\n"  # blank lines are not rows
        b"b,too,many,fields,here\n"
        b"c,caf\xe9 in Latin-1,4,X2\n"  # not UTF-8
        b'd,"a prompt, with a comma",,X3\n'
        b'e,"never closed\n'
    )
    catalogue = open_catalogue(str(path))
    assert catalogue.ignored_columns == ["sku"]
    rows = list(catalogue.rows())
    assert [r.row for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].values == {"id": "a", "prompt": "a floor plan", "seed": "3"}
    assert "5 fields" in rows[1].error
    assert rows[2].error == "text that is not UTF-8"
    assert rows[3].values == {"id": "d", "prompt": "a prompt, with a comma"}  # empty = not given
    assert rows[4].error is not None


def test_jsonl_and_parquet_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue_module, "MAX_LINE_BYTES", 200)
    monkeypatch.setattr(catalogue_module, "READ_CHUNK", 64)
    path = tmp_path / "c.jsonl"
    lines = [
        json.dumps({"prompt": "a gear", "seed": 5, "extra": [1]}).encode(),
        b"{not json",
        b"[1, 2]",
        b"",
        json.dumps({"prompt": "x" * 500}).encode(),  # longer than the (patched) limit
        b'{"prompt": "\xff\xfe"}',
        json.dumps({"prompt": "last", "refine": False}).encode(),
    ]
    path.write_bytes(b"\n".join(lines))
    rows = rows_of(path)
    assert [r.row for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].values == {"prompt": "a gear", "seed": 5}
    assert rows[1].error.startswith("unparsable JSON")
    assert rows[2].error == "not a JSON object"
    assert "longer than 200 bytes" in rows[3].error
    assert rows[4].error == "text that is not UTF-8"
    assert rows[5].values == {"prompt": "last", "refine": False}

    table = pa.table({"prompt": ["one", "two"], "width": [64, None], "note": ["a", "b"]})
    pq.write_table(table, tmp_path / "c.parquet")
    rows = rows_of(tmp_path / "c.parquet")
    assert [r.values for r in rows] == [{"prompt": "one", "width": 64}, {"prompt": "two"}]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is no parquet PAR1")
    with pytest.raises(BluepriError, match="not readable parquet"):
        open_catalogue(str(tmp_path / "broken.parquet"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"id,text\n1,hello\n", "no 'prompt' column"),
        (b"prompt,prompt\na,b\n", "repeats column 'prompt'"),
        (b"", "is empty"),
    ],
)
def test_unusable_catalogues_are_one_line_errors(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "c.csv"
    path.write_bytes(content)
    with pytest.raises(BluepriError, match=message):
        open_catalogue(str(path))
    with pytest.raises(BluepriError, match="not found"):
        open_catalogue(str(tmp_path / "missing.csv"))
    with pytest.raises(BluepriError, match="catalogue_format"):
        open_catalogue(str(path.rename(tmp_path / "c.txt")))


def plan_of(tmp_path: Path, catalogue: Path, **values):
    config = config_for(tmp_path, catalogue, **values)
    failed: list[dict] = []
    pins = AdapterPins(str(tmp_path / "registry"))
    plan = plan_catalogue(
        open_catalogue(str(catalogue)),
        config,
        pins,
        Pin("none", None),
        {},
        config.out,
        str(tmp_path / "plan"),
        failed.extend,
    )
    planned = [r for f in plan.files for r in pq.read_table(f.uri).to_pylist()]
    return plan, planned, {r["row"]: r for r in failed}


def test_rows_are_checked_into_requests_or_failed_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": "ok", "prompt": "a floor plan", "seed": 7},
        {"prompt": "   "},
        {"prompt": "odd size", "width": 65},
        {"prompt": "too wide", "width": 4096},
        {"prompt": "no steps", "steps": 0},
        {"prompt": "many steps", "steps": 151},
        {"prompt": "too few for the refiner", "steps": 2},
        {"prompt": "unknown adapter", "adapter": "nosuch"},
        {"prompt": "path adapter", "adapter": "../etc"},
        {"prompt": "bad seed", "seed": "abc"},
        {"prompt": "negative seed", "seed": -1},
        {"id": "../x", "prompt": "bad id"},
        {"id": "ok", "prompt": "same id again"},
        {"prompt": "x" * 2001},
        {"prompt": "a list", "guidance_scale": [1]},
        {"prompt": "no refine", "refine": "false", "width": 72},
        {"prompt": 12},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    plan, planned, failed = plan_of(tmp_path, path)
    codes = {row: record["error_code"] for row, record in failed.items()}
    assert codes == {
        2: "empty_prompt",
        3: "bad_size",
        4: "bad_size",
        5: "steps_out_of_range",
        6: "steps_out_of_range",
        7: "steps_out_of_range",
        8: "unknown_adapter",
        9: "unknown_adapter",
        10: "bad_value",
        11: "bad_value",
        12: "bad_id",
        13: "duplicate_id",
        14: "prompt_too_long",
        15: "bad_value",
        17: "bad_value",
    }
    assert all(record["error"] and "\n" not in record["error"] for record in failed.values())
    assert failed[13]["id"] == "#13"  # the first row keeps the id
    assert plan.total == len(rows) and plan.to_render == 2 and sum(plan.failed.values()) == 15
    by_row = {r["row"]: r for r in planned}
    assert by_row[1]["seed"] == 7 and by_row[1]["refine"] and by_row[1]["width"] == 64
    assert not by_row[16]["refine"] and by_row[16]["width"] == 72
    assert by_row[16]["refiner_model"] is None
    assert plan.groups == 2 and len(plan.files) == 2  # the two rows differ in size and refine


def test_ids_and_seeds_are_stable_and_rows_are_grouped(tmp_path: Path) -> None:
    rows = [{"prompt": f"drawing {i}", "width": 64 + 8 * (i % 2)} for i in range(10)]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in rows))
    second.write_text("\n".join(json.dumps(r) for r in reversed(rows)))  # another order
    _, planned_a, _ = plan_of(tmp_path / "a", first, block_rows=2)
    plan_b, planned_b, _ = plan_of(tmp_path / "b", second, block_rows=2)
    key = {r["prompt"]: (r["id"], r["seed"], r["image_path"]) for r in planned_a}
    assert key == {r["prompt"]: (r["id"], r["seed"], r["image_path"]) for r in planned_b}
    assert len({seed for _, seed, _ in key.values()}) == 10
    # Plan files hold one size each, and sorting them keeps each size's files together.
    widths = [{r["width"] for r in pq.read_table(f.uri).to_pylist()} for f in plan_b.files]
    assert all(len(w) == 1 for w in widths)
    sequence = [w.pop() for w in widths]
    assert sequence == sorted(sequence, key=sequence.index)  # contiguous runs
    assert plan_b.groups == 2 and [f.rows for f in plan_b.files] == [2, 2, 1, 2, 2, 1]


def test_the_sampler_decides_the_bytes(tmp_path) -> None:
    """A render with Euler (the mlperf-like evaluation) must not reuse images the model's own
    sampler made: the same row planned under each sampler hashes differently."""
    catalogue = tmp_path / "c.jsonl"
    catalogue.write_text(json.dumps({"prompt": "a gear"}) + "\n")
    own = plan_of(tmp_path / "own", catalogue)[1][0]
    euler_models = ModelsConfig.tiny().model_copy(update={"scheduler": "euler"})
    euler = plan_of(tmp_path / "euler", catalogue, models=euler_models)[1][0]
    assert own["id"] == euler["id"] and own["seed"] == euler["seed"]
    assert own["request_sha256"] != euler["request_sha256"]


def test_png_metadata_round_trips_and_strips_to_the_plain_encoding() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 72, 3), dtype=np.uint8)
    meta = {"prompt": "un café — 設計図", "seed": 3, "steps": 4, "guidance_scale": 5.0,
            "width": 72, "height": 64, "base_model": "tiny:base", "refine": False,
            "adapter": "bp@v0001", "adapter_sha256": "a" * 64}  # fmt: skip
    data = encode_png(pixels, meta)
    assert read_metadata(data) == meta
    plain = io.BytesIO()
    Image.fromarray(pixels).save(plain, format="PNG")
    assert strip_metadata(data) == plain.getvalue()
    assert encode_png(pixels, meta) == data  # nothing in it changes between runs
    assert "Seed: 3" in Image.open(io.BytesIO(data)).text["parameters"]


def test_latest_record_wins_and_crash_leftovers_go(tmp_path: Path) -> None:
    parts = ManifestParts(str(tmp_path), "run1")
    parts.write([{"id": "a", "row": 1, "status": "failed", "error_code": "render_error"}])
    parts.write([{"id": "a", "row": 1, "status": "rendered"}, {"id": "b", "row": 2}])
    tables = [pq.read_table(p) for p in sorted((tmp_path / "manifest-parts").iterdir())]
    latest = latest_records([as_table(t) for t in tables]).to_pylist()
    assert {r["id"]: r["status"] for r in latest} == {"a": "rendered", "b": None}
    shard = tmp_path / "images" / "ab"
    shard.mkdir(parents=True)
    (shard / ".tmp-123").write_bytes(b"half a png")
    (shard / "x.png").write_bytes(b"kept")
    (tmp_path / "manifest-parts" / ".tmp-9").write_bytes(b"half a part")
    assert remove_leftovers(str(tmp_path)) == 2
    assert [p.name for p in shard.iterdir()] == ["x.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--catalogue", "{tmp}/missing.csv"], "not found"),
        (["--catalogue", "{tmp}/c.csv", "bogus=1"], "unknown key 'bogus'"),
        (["--catalogue", "{tmp}/c.csv", "--adapter", "../x"], "adapter reference"),
        (["--catalogue", "{tmp}/c.csv", "width=65"], "width"),
        (["--catalogue", "{tmp}/c.csv", "steps=2"], "too few steps"),
        (["--catalogue", "{tmp}/no-prompt.csv"], "no 'prompt' column"),
    ],
)
def test_a_bad_job_is_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "c.csv").write_text("prompt\na drawing\n")
    (tmp_path / "no-prompt.csv").write_text("text\na drawing\n")
    argv = ["render", "--out", str(tmp_path / "out"), "--tiny", "steps=4"]
    code = main(argv + [a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("bluepri: error:") and message in err and err.count("\n") == 1


def test_the_job_config_is_valid_and_a_bad_job_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from bluepri.config import load_yaml
    from bluepri.jobrun import EXIT_BAD_CONFIG

    jobs = Path(__file__).resolve().parent.parent / "jobs"
    config = load_yaml(jobs / "configs" / "render_catalogue.yaml", RenderConfig)
    assert config.models.device == "cuda" and config.base_actors > config.refiner_actors
    spec = importlib.util.spec_from_file_location("render_job", jobs / "render.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    code = job.main(
        [
            str(jobs / "configs" / "render_catalogue.yaml"),
            "catalogue=" + str(tmp_path / "missing.csv"),
        ]
    )
    assert code == EXIT_BAD_CONFIG
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["status"] == "bad_config" and "not found" in last["error"]
