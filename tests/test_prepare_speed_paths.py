"""Where the build's models run (in the driver with or without helper actors, a fused
caption+encode actor pool, or a caption pool and an encode pool) changes how fast a cache
is made, never what is in it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from bluepri import artifacts
from bluepri.artifacts import row_arrays
from bluepri.config import PrepareConfig, SynthConfig
from bluepri.data import prepare as prepare_module
from bluepri.data.model_stage import (
    CaptionAndEncode,
    concat_batches,
    given_captions,
    row_slice,
    run_in_driver,
    start_helpers,
    torch_threads,
)
from bluepri.data.prepare import (
    DRIVER,
    FUSED_ACTORS,
    HELPER_MIN_IMAGES,
    SEPARATE_ACTORS,
    encode_workers,
    model_place,
    model_process_count,
    prepare,
)
from bluepri.data.synth import synthesize
from odd_corpus import tiny_prepare

# Seconds a blocked fake helper waits before failing its call: a guard against a hang only.
HANG_GUARD_S = 120
# name -> (where the models run, config overrides)
VARIANTS = {
    "driver": (DRIVER, {}),
    "driver_and_helper": (DRIVER, {"num_encode_actors": 2}),
    "fused_actors": (FUSED_ACTORS, {}),
    "separate_actors": (SEPARATE_ACTORS, {}),
}


def config_with(**overrides) -> PrepareConfig:
    return PrepareConfig(source="/set", out="/out", **overrides)


@pytest.mark.parametrize(
    ("overrides", "place"),
    [
        ({}, DRIVER),
        ({"num_encode_actors": 2}, DRIVER),
        ({"num_caption_actors": 2}, DRIVER),
        ({"model_stage": "actors"}, FUSED_ACTORS),
        ({"model_stage": "driver", "num_encode_actors": 2}, DRIVER),
        ({"device": "cuda"}, SEPARATE_ACTORS),
        ({"device": "cuda:1", "model_stage": "actors"}, SEPARATE_ACTORS),
        ({"device": "cuda", "model_stage": "driver"}, DRIVER),
    ],
)
def test_model_place_follows_the_config(overrides, place) -> None:
    assert model_place(config_with(**overrides)) == place


def test_model_processes_share_the_model_cpus() -> None:
    config = config_with(num_caption_actors=3, num_encode_actors=2)
    assert model_process_count(config, 2, True, DRIVER) == 3  # the driver and two helpers
    assert model_process_count(config, 2, False, DRIVER) == 2
    assert model_process_count(config, 2, True, FUSED_ACTORS) == 3
    assert model_process_count(config, 2, False, FUSED_ACTORS) == 2
    assert model_process_count(config, 2, True, SEPARATE_ACTORS) == 5
    assert model_process_count(config, 2, False, SEPARATE_ACTORS) == 2


@pytest.mark.parametrize(
    ("overrides", "place", "images", "cpus", "workers"),
    [
        # Unset: in the driver on CPU, a helper once the set pays for its start-up.
        ({}, DRIVER, HELPER_MIN_IMAGES, 2.0, 2),
        ({}, DRIVER, 500, 16.0, 2),
        ({}, DRIVER, HELPER_MIN_IMAGES - 1, 2.0, 1),  # a small set: the driver alone
        ({}, DRIVER, 500, 1.0, 1),  # no second CPU for it
        ({}, FUSED_ACTORS, 500, 2.0, 1),
        ({}, SEPARATE_ACTORS, 500, 8.0, 1),  # one GPU
        # Set: as given, whatever the set.
        ({"num_encode_actors": 1}, DRIVER, 500, 2.0, 1),
        ({"num_encode_actors": 3}, DRIVER, 10, 2.0, 3),
        ({"num_encode_actors": 4}, SEPARATE_ACTORS, 10, 8.0, 4),
    ],
)
def test_encode_workers_unset_means_a_helper_only_where_it_pays(
    overrides, place, images, cpus, workers
) -> None:
    assert encode_workers(config_with(**overrides), place, images, cpus) == workers


def test_batches_split_and_joined_keep_rows_in_order() -> None:
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros((2, 2)), np.ones((2, 3)), np.full((1, 1), 2.0)]
    batch = {
        "key": np.array(["a", "b", "c"], dtype=object),
        "latents": np.arange(12.0).reshape(3, 2, 2),
        "ragged": ragged,
    }
    parts = [row_slice(batch, 0, 2), row_slice(batch, 2, 4)]
    joined = concat_batches(parts)
    assert list(joined["key"]) == ["a", "b", "c"]
    np.testing.assert_array_equal(joined["latents"], batch["latents"])
    for got, want in zip(joined["ragged"], ragged, strict=True):
        np.testing.assert_array_equal(got, want)
    # Fixed-shape rows of different shapes in two parts become one ragged column.
    mixed = concat_batches([{"x": np.zeros((1, 2))}, {"x": np.zeros((1, 3))}])
    assert mixed["x"].dtype == object and [r.shape for r in mixed["x"]] == [(2,), (3,)]


def test_given_captions_are_marked_given() -> None:
    batch = {"caption": np.array(["a", "b"], dtype=object)}
    assert list(given_captions(batch)["caption_source"]) == ["given", "given"]
    assert "caption_source" not in batch


class FakeDataset:
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def iter_batches(self, **_: object):
        return iter(self.batches)


def test_driver_skips_batches_left_empty_by_changed_inputs(tmp_path: Path) -> None:
    seen = []

    def stage(batch):
        seen.append(list(batch["sample_id"]))
        return {"sample_id": batch["sample_id"], "latents": np.zeros((len(batch["sample_id"]), 2))}

    rows = {"sample_id": np.array(["s1", "s2"], dtype=object)}
    written = run_in_driver(
        FakeDataset([{}, rows]), stage, str(tmp_path / "shards"), batch_size=2, threads=1
    )
    assert written == 2 and seen == [["s1", "s2"]]
    assert len(list((tmp_path / "shards").iterdir())) == 1


@pytest.fixture(scope="module")
def captioned_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(out_dir=str(folder), num_images=10, seed=3, uncaptioned_fraction=0.4))
    return folder


@pytest.fixture(scope="module")
def caches(ray_session, tiny_models, captioned_set: Path, tmp_path_factory):
    """The same set prepared with the models in each place."""
    out = {}
    for name, (place, overrides) in VARIANTS.items():
        config = tiny_prepare(
            captioned_set,
            tmp_path_factory.mktemp(name),
            random_flip=True,
            center_crop=False,
            caption_batch_size=3,
            **overrides,
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(prepare_module, "model_place", lambda _config, p=place: p)
            out[name] = prepare(config, log=lambda _: None)
    return out


def rows_by_key(cache_uri: str) -> dict[str, dict]:
    table = artifacts.shard_dataset(cache_uri).to_table()
    names = table.column_names
    rows = {}
    for i, key in enumerate(table.column("key").to_pylist()):
        rows[key] = {name: table.column(name)[i] for name in names}
    return rows


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["driver_and_helper", "fused_actors", "separate_actors"])
def test_every_model_place_writes_the_same_cache(caches, variant) -> None:
    driver, other = caches["driver"], caches[variant]
    assert other.fingerprint == driver.fingerprint
    assert (other.num_train, other.num_val, other.skipped) == (
        driver.num_train,
        driver.num_val,
        driver.skipped,
    )
    driver_set, other_set = artifacts.shard_dataset(driver.uri), artifacts.shard_dataset(other.uri)
    assert other_set.schema.remove_metadata() == driver_set.schema.remove_metadata()
    want, got = rows_by_key(driver.uri), rows_by_key(other.uri)
    assert sorted(got) == sorted(want) and len(want) == 10
    for key, row in want.items():
        for name, value in row.items():
            assert got[key][name].equals(value), (key, name)


@pytest.mark.integration
def test_captions_are_made_and_kept_in_the_driver_too(caches) -> None:
    manifest = artifacts.read_manifest(caches["driver"].uri)
    assert set(manifest.captions.sources) == {"given", "tiny:blip"}


def picture_batch(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample_id": np.array([f"{seed}-{i}" for i in range(count)], dtype=object),
        "image": rng.integers(0, 256, size=(count, 32, 48, 3), dtype=np.uint8),
        "caption": np.array(["a plan", "a section", "an elevation"][:count], dtype=object),
    }


@pytest.mark.integration
def test_a_ready_helper_takes_batches_and_writes_what_the_driver_would(
    ray_session, tiny_models, tmp_path: Path
) -> None:
    stage_kwargs = {
        "caption": None,
        "encode": {"base_ref": "tiny:base"},
        "caption_batch_size": 2,
    }
    helpers = start_helpers(1, stage_kwargs, str(tmp_path / "shards"), 1, {"num_cpus": 0.5})
    batches = [picture_batch(3, seed) for seed in range(3)]
    stage = CaptionAndEncode(**stage_kwargs)
    calls = []

    def driver_stage(batch):
        calls.append(batch["sample_id"][0])
        # The helper answers its calls in order: once this one is answered, so is the
        # readiness call run_in_driver made first, and the next batch is the helper's.
        ray_session.get(helpers[0].ready.remote())
        return stage(batch)

    shards = str(tmp_path / "shards")
    written = run_in_driver(
        FakeDataset(batches), driver_stage, shards, batch_size=3, threads=1, helpers=helpers
    )
    assert written == 9 and calls[0] == "0-0" and "1-0" not in calls  # batch 1: the helper
    table = artifacts.shard_dataset(str(tmp_path)).to_table()
    assert sorted(table.column("sample_id").to_pylist()) == sorted(
        f"{seed}-{i}" for seed in range(3) for i in range(3)
    )
    ids, latents = table.column("sample_id").to_pylist(), row_arrays(table.column("latents"))
    by_id = dict(zip(ids, latents, strict=True))
    with torch_threads(1):  # as the helper computed it
        expected = stage(batches[1])
    for i, sample_id in enumerate(expected["sample_id"]):
        assert np.array_equal(by_id[sample_id], expected["latents"][i])


@pytest.mark.integration
def test_a_helper_still_loading_when_the_stream_ends_is_not_waited_for(
    ray_session, tmp_path: Path
) -> None:
    @ray_session.remote(num_cpus=0)
    class Gate:
        def __init__(self) -> None:
            self.event = asyncio.Event()

        async def wait(self) -> None:
            await self.event.wait()

        def open(self) -> None:
            self.event.set()

    @ray_session.remote(num_cpus=0)
    class StillLoading:
        def __init__(self, gate) -> None:
            self.gate = gate

        def ready(self) -> int:
            # Only a bound against a hang: the gate opens after run_in_driver returns.
            ray_session.get(self.gate.wait.remote(), timeout=HANG_GUARD_S)
            return 0

    gate = Gate.remote()
    helper = StillLoading.remote(gate)

    def stage(batch):
        return {"sample_id": batch["sample_id"], "latents": np.zeros((len(batch["sample_id"]), 2))}

    batches = [{"sample_id": np.array([f"s{i}"], dtype=object)} for i in range(3)]
    written = run_in_driver(
        FakeDataset(batches), stage, str(tmp_path), batch_size=1, threads=1, helpers=[helper]
    )
    gate.open.remote()
    assert written == 3 and len(list(tmp_path.iterdir())) == 3
