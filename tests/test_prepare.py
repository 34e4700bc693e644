"""The data stage on the session's local Ray: odd files, captions, alignment, reuse, streaming."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bluepri import artifacts, storage
from bluepri.cli import main
from bluepri.config import PrepareConfig, SynthConfig
from bluepri.data import transforms
from bluepri.data.decode import decode_image
from bluepri.data.encode import encode_latent_dist, encode_prompts, load_text_encoders, load_vae_for
from bluepri.data.prepare import prepare
from bluepri.data.synth import synthesize
from bluepri.errors import BluepriError
from odd_corpus import build_odd_corpus, tiny_prepare

pytestmark = pytest.mark.integration
RESOLUTION = 64


def read_rows(cache_uri: str) -> list[dict]:
    import ray.data

    return ray.data.read_parquet(artifacts.shards_uri(cache_uri)).take_all()


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(out_dir=str(folder), num_images=12, seed=5, uncaptioned_fraction=0.25))
    return folder


@pytest.fixture(scope="module")
def synth_cache(ray_session, tiny_models, synth_set: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    config = tiny_prepare(synth_set, out, random_flip=True, center_crop=False)
    return config, prepare(config, log=lambda _: None)


def test_odd_corpus_goes_through_without_a_crash(ray_session, tiny_models, tmp_path: Path) -> None:
    expected = build_odd_corpus(tmp_path / "odd")
    info = prepare(tiny_prepare(tmp_path / "odd", tmp_path / "cache"), log=lambda _: None)
    manifest = storage.read_json(info.manifest_uri)
    cached_keys = {row["key"] for row in read_rows(info.uri)}
    good = {name for name, reason in expected.items() if reason is None}
    assert cached_keys == good
    for name, reason in expected.items():
        if reason is not None:
            assert name in manifest["skipped_files"][reason], (name, reason)
    assert sum(manifest["skipped"].values()) == len(expected) - len(good)
    assert len({reason for reason in expected.values() if reason}) >= 8
    # A plain folder has no captions: every caption is the captioner's.
    assert manifest["captions"]["sources"] == {"tiny:blip": len(good)}


def test_given_captions_kept_missing_ones_made_by_the_model(synth_set: Path, synth_cache) -> None:
    _, info = synth_cache
    given = {}
    for line in (synth_set / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        given[row["file_name"]] = row["text"]
    rows = read_rows(info.uri)
    assert len(rows) == 12
    for row in rows:
        if given[row["key"]]:
            assert row["caption"] == given[row["key"]] and row["caption_source"] == "given"
        else:
            assert row["caption"].strip() and row["caption_source"] == "tiny:blip"
    assert sum(1 for r in rows if r["caption_source"] == "tiny:blip") == 3


def test_cached_rows_reproduce_from_their_own_image_and_caption(synth_set: Path, synth_cache):
    config, info = synth_cache
    rows = read_rows(info.uri)
    vae = load_vae_for("tiny:base", vae_ref=None)
    text = load_text_encoders("tiny:base")
    for row in random.Random(0).sample(rows, 4):
        image = decode_image((synth_set / row["key"]).read_bytes()).image
        rng = np.random.default_rng([config.seed, int(row["sample_id"][:15], 16)])
        prepared = transforms.prepare_image(
            image, resolution=RESOLUTION, center_crop=False, random_flip=True, rng=rng
        )
        assert tuple(row["time_ids"]) == prepared.time_ids
        assert prepared.original_size == (image.height, image.width)
        pixels = torch.from_numpy(transforms.to_tensor_input(prepared.image))[None]
        with torch.inference_mode():
            latents = encode_latent_dist(vae, pixels)
            embeds, pooled = encode_prompts(text.tokenizers, text.encoders, [row["caption"]])
        np.testing.assert_allclose(row["latents"], latents.mean[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(row["prompt_embeds"], embeds[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(row["pooled_prompt_embeds"], pooled[0].numpy(), atol=1e-5)


def test_manifest_records_split_captions_and_timings(synth_cache) -> None:
    _, info = synth_cache
    manifest = storage.read_json(info.manifest_uri)
    assert info.num_train + info.num_val == 12 and info.num_val >= 1
    rows = read_rows(info.uri)
    assert {r["split"] for r in rows} == {"train", "val"}
    captions = manifest["captions"]
    assert captions["count"] == 12 and 0 < captions["length_min"] <= captions["length_max"]
    assert set(manifest["timings"]) >= {"scan_s", "dedup_s", "build_s", "total_s"}


def test_same_inputs_do_no_work_and_changes_give_a_new_cache(synth_set: Path, synth_cache):
    config, info = synth_cache
    manifest_before = Path(info.manifest_uri).read_bytes()
    shards_before = {p: p.stat().st_mtime_ns for p in Path(info.uri, "shards").iterdir()}
    again = prepare(config, log=lambda _: None)
    assert again.reused and again.uri == info.uri and again.timings == {}
    assert Path(info.manifest_uri).read_bytes() == manifest_before
    assert {p: p.stat().st_mtime_ns for p in Path(info.uri, "shards").iterdir()} == shards_before
    changed = config.model_copy(update={"resolution": 72})
    assert prepare(changed, log=lambda _: None).fingerprint != info.fingerprint


def test_parquet_source_with_image_bytes(ray_session, tiny_models, synth_set, tmp_path) -> None:
    rows = [json.loads(line) for line in (synth_set / "metadata.jsonl").read_text().splitlines()]
    table = pa.table(
        {
            "image": [(synth_set / r["file_name"]).read_bytes() for r in rows],
            "text": [r["text"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "set.parquet")
    info = prepare(tiny_prepare(tmp_path / "set.parquet", tmp_path / "cache"), log=lambda _: None)
    assert info.num_rows == len(rows)


@pytest.mark.parametrize("model_stage", ["driver", "actors"])
def test_streams_a_source_larger_than_the_memory_limit(
    ray_session, tiny_models, tmp_path, model_stage
) -> None:
    from ray.data import DataContext, ExecutionResources

    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):  # 24 x 0.75 MB decoded, against a 4 MB object-store budget
        pixels = np.full((512, 512, 3), (20, 60, 160), dtype=np.uint8)
        x, y = rng.integers(0, 400, size=2)
        pixels[y : y + 100, x : x + 100] = 240
        pixels[:, (i * 19) % 512] = 255
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    context = DataContext.get_current()
    saved = context.execution_options.resource_limits
    context.execution_options.resource_limits = ExecutionResources(object_store_memory=4 * 2**20)
    try:
        info = prepare(
            tiny_prepare(folder, tmp_path / "cache", dedup_threshold=None, model_stage=model_stage),
            log=lambda _: None,
        )
    finally:
        context.execution_options.resource_limits = saved
    assert info.num_rows == 24


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "/no/such/folder"}, "does not exist"),
        ({"caption_column": "caption"}, "unknown caption column 'caption'"),
        ({"resolution": 100}, "multiple of 8"),
        ({"source": "someone/blueprints-nowhere"}, "hub dataset"),
    ],
)
def test_bad_arguments_fail_before_work(
    overrides, message, synth_set: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    values = {"source": str(synth_set), "out": str(tmp_path / "cache"), **overrides}
    argv = ["data", "prepare"]
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "cache").exists()
    with pytest.raises(BluepriError):
        prepare(
            PrepareConfig.model_construct(
                **{**tiny_prepare(synth_set, tmp_path).__dict__, **overrides}
            )
        )
