"""Adapter registry: put/get/list round trips, promotion both ways, safety, export, CLI.

Unit tests, no Ray. Adapters are random LoRAs on the tiny base, saved the way training saves
them (diffusers' `save_lora_weights`), with an adapter.json written here.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bluepri.artifacts import ADAPTER_JSON, WEIGHTS_NAME
from bluepri.cli import main
from bluepri.errors import BluepriError
from bluepri.registry import AdapterRegistry, RegistryWarning

KOHYA_KEY = re.compile(r"lora_(unet|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)")
BAD_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "/etc",
    "/etc/passwd",
    "x/../../sentinel",
    "..\\x",
    ".hidden",
    "",
    "a\nb",
    "~root",
    "x" * 101,
    "sentinel/..",
]


# -- building adapters --------------------------------------------------------------------


def write_artifact(
    folder: Path, pipe, *, seed: int, alpha: int, text_encoder: bool, loss: float
) -> Path:
    """A random LoRA (rank 4) saved as a training run would, plus its adapter.json."""
    from peft import LoraConfig, inject_adapter_in_model

    from bluepri.models.lora import TEXT_ENCODER_TARGETS, attach_lora, save_lora_folder

    torch.manual_seed(seed)
    attach_lora(pipe.unet, rank=4, alpha=alpha, init=False)
    encoder = None
    if text_encoder:
        encoder = pipe.text_encoder
        config = LoraConfig(
            r=4,
            lora_alpha=alpha,
            init_lora_weights=False,
            target_modules=list(TEXT_ENCODER_TARGETS),
        )
        inject_adapter_in_model(config, encoder)
    save_lora_folder(folder, pipe.unet, text_encoder=encoder)
    pipe.unet.delete_adapters("default")
    if encoder is not None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in encoder.modules():
            if isinstance(module, BaseTunerLayer):
                module.delete_adapter("default")
    info = {
        "format": 1,
        "kind": "sdxl-lora",
        "base": "tiny:base",
        "rank": 4,
        "alpha": alpha,
        "targets": {"unet": ["to_q", "to_k", "to_v", "to_out.0"]},
        "trained_modules": ["unet", "text_encoder"] if text_encoder else ["unet"],
        "metrics": {"final_val_loss": loss, "initial_val_loss": loss + 0.1},
        "weights": {"file": WEIGHTS_NAME, "sha256": sha256(folder / WEIGHTS_NAME)},
        "created": f"2025-01-0{seed}T00:00:00+00:00",
    }
    (folder / ADAPTER_JSON).write_text(json.dumps(info, indent=2))
    (folder / "README.md").write_text("# test adapter\n")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def artifacts(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three different adapters; `a` also trains text encoder 1 and sits in a train output_dir."""
    from bluepri.models.loading import load_base

    pipe = load_base("tiny:base")
    root = tmp_path_factory.mktemp("artifacts")
    folders = {
        "a": write_artifact(root / "a", pipe, seed=1, alpha=4, text_encoder=True, loss=0.5),
        "b": write_artifact(root / "b", pipe, seed=2, alpha=8, text_encoder=False, loss=0.6),
        "c": write_artifact(root / "c", pipe, seed=3, alpha=4, text_encoder=False, loss=0.4),
    }
    # What else train leaves in output_dir: validation grids (part of the artifact) and the
    # run's pickled checkpoints and cache (not part of it).
    (folders["a"] / "validation").mkdir()
    (folders["a"] / "validation" / "epoch-0001.png").write_bytes(b"\x89PNG fake")
    (folders["a"] / "runs" / "train-1" / "checkpoint_000001").mkdir(parents=True)
    (folders["a"] / "runs" / "train-1" / "checkpoint_000001" / "optimizer.pt").write_bytes(b"x")
    (folders["a"] / "cache").mkdir()
    (folders["a"] / "cache" / "shard-0.parquet").write_bytes(b"x")
    return folders


@pytest.fixture()
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "registry")


def copy_artifact(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("runs", "cache"))
    return dest


def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- put, list, show, get -------------------------------------------------------------------


def test_put_list_show_get_round_trip(registry: AdapterRegistry, artifacts) -> None:
    first = registry.put(artifacts["a"], "blueprints")
    second = registry.put(str(artifacts["b"]), "blueprints")
    assert (first.version, second.version) == ("v0001", "v0002")
    assert first.sha256 == sha256(artifacts["a"] / WEIGHTS_NAME)

    records = registry.list()
    assert [(r.name, r.version) for r in records] == [
        ("blueprints", "v0001"),
        ("blueprints", "v0002"),
    ]
    assert records[1].metrics["final_val_loss"] == 0.6
    assert registry.versions("blueprints") == ["v0001", "v0002"]

    shown = registry.show("blueprints", "v0001")
    assert shown["sha256"] == first.sha256 and shown["champion"] is False
    assert shown["adapter"]["alpha"] == 4
    # The artifact's own files came in; the run's checkpoints and cache stayed behind.
    assert set(shown["files"]) == {
        ADAPTER_JSON,
        WEIGHTS_NAME,
        "README.md",
        "validation/epoch-0001.png",
    }

    folder = registry.get("blueprints", "v0001")
    assert (folder / WEIGHTS_NAME).read_bytes() == (artifacts["a"] / WEIGHTS_NAME).read_bytes()
    assert registry.get("blueprints", "latest").name == "v0002"
    assert registry.verify("blueprints", "v0002").sha256 == second.sha256
    history = registry.history("blueprints")
    assert [(e["action"], e["version"]) for e in history] == [("put", "v0001"), ("put", "v0002")]


def test_get_champion_before_any_promotion_is_a_clear_error(registry, artifacts) -> None:
    registry.put(artifacts["a"], "blueprints")
    assert registry.champion("blueprints") is None
    with pytest.raises(BluepriError, match="has no champion yet; promote a version first"):
        registry.get("blueprints")
    with pytest.raises(BluepriError, match="no adapter named 'other'"):
        registry.get("other", "v0001")
    with pytest.raises(BluepriError, match="no version 'v0009'"):
        registry.get("blueprints", "v0009")


def test_put_refuses_overwrite_and_incomplete_artifacts(
    registry: AdapterRegistry, artifacts, tmp_path: Path
) -> None:
    registry.put(artifacts["a"], "blueprints", version="release-1")
    with pytest.raises(BluepriError, match="already exists; versions are immutable"):
        registry.put(artifacts["b"], "blueprints", version="release-1")
    assert registry.verify("blueprints", "release-1").sha256 == sha256(
        artifacts["a"] / WEIGHTS_NAME
    )

    no_json = copy_artifact(artifacts["b"], tmp_path / "no-json")
    (no_json / ADAPTER_JSON).unlink()
    with pytest.raises(BluepriError, match="has no adapter.json"):
        registry.put(no_json, "blueprints")
    no_weights = copy_artifact(artifacts["b"], tmp_path / "no-weights")
    (no_weights / WEIGHTS_NAME).unlink()
    with pytest.raises(BluepriError, match=f"has no {WEIGHTS_NAME}"):
        registry.put(no_weights, "blueprints")
    with pytest.raises(BluepriError, match="is not a folder"):
        registry.put(tmp_path / "missing", "blueprints")

    # A weights file that does not match its adapter.json is refused and leaves nothing.
    corrupt = copy_artifact(artifacts["b"], tmp_path / "corrupt")
    flip_byte(corrupt / WEIGHTS_NAME)
    with pytest.raises(BluepriError, match="checksum mismatch .* refusing to store it"):
        registry.put(corrupt, "blueprints")
    assert registry.versions("blueprints") == ["release-1"]
    assert sorted(p.name for p in (registry.get("blueprints", "release-1").parent).iterdir()) == [
        "history",
        "release-1",
    ]


# -- promotion (acceptance 3) ---------------------------------------------------------------


def test_promote_and_rollback_follow_the_history(registry: AdapterRegistry, artifacts) -> None:
    for key in "abc":
        registry.put(artifacts[key], "blueprints")
    registry.promote("blueprints", "v0001", "first release")
    registry.promote("blueprints", "v0002", "new data", metrics={"val_loss": 0.6})
    registry.promote("blueprints", "v0003", "nightly")
    assert registry.get("blueprints").name == "v0003"

    back = registry.rollback("blueprints", "v0003 draws walls crooked")
    assert (back.champion_before, back.champion_after) == ("v0003", "v0002")
    assert registry.rollback("blueprints", "still bad").champion_after == "v0001"
    with pytest.raises(BluepriError, match="no earlier champion to roll back to"):
        registry.rollback("blueprints", "again")
    assert registry.champion("blueprints") == "v0001"

    last = registry.history("blueprints")[-1]
    assert last["version"] == "v0001" and last["reason"] == "still bad"
    assert last["champion_before"] == "v0002" and last["at"]
    actions = [(e["action"], e["version"]) for e in registry.history("blueprints")[3:]]
    assert actions == [
        ("promote", "v0001"),
        ("promote", "v0002"),
        ("promote", "v0003"),
        ("rollback", "v0002"),
        ("rollback", "v0001"),
    ]
    with pytest.raises(BluepriError, match="reason must not be empty"):
        registry.promote("blueprints", "v0002", "  ")


def test_promote_if_better_both_ways_records_both_numbers(
    registry: AdapterRegistry, artifacts
) -> None:
    for key in "abc":
        registry.put(artifacts[key], "blueprints")

    first = registry.promote_if_better("blueprints", "v0001", 0.5, None, reason="nightly 1")
    assert first.promoted and registry.champion("blueprints") == "v0001"

    worse = registry.promote_if_better("blueprints", "v0002", 0.6, 0.5, reason="nightly 2")
    assert not worse.promoted and worse.action == "reject"
    assert registry.champion("blueprints") == "v0001"  # the worse one did not replace it
    assert worse.metrics == {
        "metric": "val_loss",
        "candidate": 0.6,
        "champion": 0.5,
        "champion_version": "v0001",
    }

    tie = registry.promote_if_better("blueprints", "v0003", 0.5, 0.5)
    assert not tie.promoted  # a tie does not beat the champion
    broken = registry.promote_if_better("blueprints", "v0003", math.nan, 0.5)
    assert not broken.promoted and "not finite" in broken.reason

    better = registry.promote_if_better("blueprints", "v0003", 0.4, 0.5, reason="nightly 3")
    assert better.promoted and registry.champion("blueprints") == "v0003"
    assert better.reason == "nightly 3: v0003 val_loss 0.4 < champion v0001 0.5"

    with pytest.raises(BluepriError, match="pass its re-measured val_loss"):
        registry.promote_if_better("blueprints", "v0002", 0.1, None)

    decisions = [e for e in registry.history("blueprints") if e["action"] != "put"]
    assert [(e["action"], e["version"]) for e in decisions] == [
        ("promote", "v0001"),
        ("reject", "v0002"),
        ("reject", "v0003"),
        ("reject", "v0003"),
        ("promote", "v0003"),
    ]
    assert (
        decisions[1]["metrics"]["candidate"] == 0.6 and decisions[1]["metrics"]["champion"] == 0.5
    )
    assert decisions[3]["metrics"]["candidate"] is None  # NaN is recorded as no measurement
    assert decisions[-1]["metrics"]["candidate"] == 0.4
    assert decisions[-1]["metrics"]["champion"] == 0.5


def test_record_decision_validates_the_decision(registry: AdapterRegistry, artifacts) -> None:
    registry.put(artifacts["a"], "blueprints")
    kept = registry.record_decision("blueprints", "v0001", "reject", "manual check", 0.7, 0.5)
    assert kept.champion_after is None and registry.champion("blueprints") is None
    with pytest.raises(BluepriError, match="decision must be one of promote, reject"):
        registry.record_decision("blueprints", "v0001", "maybe", "?", 0.1, 0.2)
    with pytest.raises(BluepriError, match="val_loss 'low' is not a number"):
        registry.record_decision("blueprints", "v0001", "promote", "?", "low", 0.2)


# -- safety (acceptance 4) -----------------------------------------------------------------


class RecordingHandler(pafs.FileSystemHandler):
    """A local filesystem that writes down every path it is asked about."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()
        self.paths: list[str] = []

    def _seen(self, *paths: str) -> None:
        self.paths.extend(paths)

    def __eq__(self, other) -> bool:
        return self is other

    def __ne__(self, other) -> bool:
        return self is not other

    def get_type_name(self) -> str:
        return "recording"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        self._seen(*paths)
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self._seen(selector.base_dir)
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._seen(path)
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._seen(path)
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._seen(path)
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise AssertionError("the registry must never empty a filesystem")

    def delete_file(self, path):
        self._seen(path)
        self.local.delete_file(path)

    def move(self, src, dest):
        self._seen(src, dest)
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self._seen(src, dest)
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        self._seen(path)
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        self._seen(path)
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._seen(path)
        return self.local.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        self._seen(path)
        return self.local.open_append_stream(path)


def snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `folder` outside `skip`."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and skip not in p.parents
    }


def every_operation(registry: AdapterRegistry, source: Path, out: Path, bad: str) -> list:
    """Each public call with `bad` as the name, then as the version."""
    return [
        lambda: registry.put(source, bad),
        lambda: registry.put(source, "ok", version=bad),
        lambda: registry.get(bad, "v0001"),
        lambda: registry.get("ok", bad),
        lambda: registry.verify(bad, "v0001"),
        lambda: registry.verify("ok", bad),
        lambda: registry.show(bad, "v0001"),
        lambda: registry.show("ok", bad),
        lambda: registry.promote(bad, "v0001", "r"),
        lambda: registry.promote("ok", bad, "r"),
        lambda: registry.promote_if_better("ok", bad, 0.1, 0.2),
        lambda: registry.record_decision(bad, "v0001", "promote", "r", 0.1, 0.2),
        lambda: registry.rollback(bad, "r"),
        lambda: registry.history(bad),
        lambda: registry.list(bad),
        lambda: registry.champion(bad),
        lambda: registry.load_state_dict("ok", bad),
        lambda: registry.export(bad, "v0001", out),
        lambda: registry.export("ok", bad, out),
    ]


def test_traversal_names_are_refused_and_nothing_outside_the_root_is_touched(
    artifacts, tmp_path: Path
) -> None:
    # A sentinel registry-like tree next to the root: what `../sentinel` etc. would reach.
    sentinel = tmp_path / "sentinel"
    shutil.copytree(artifacts["b"], sentinel / "v0001")
    (sentinel / "champion").write_text(json.dumps({"version": "v0001"}))
    source = copy_artifact(artifacts["b"], tmp_path / "source")
    root, cache, out = tmp_path / "registry", tmp_path / "cache", tmp_path / "out"
    handler = RecordingHandler()
    registry = AdapterRegistry(root, filesystem=pafs.PyFileSystem(handler), cache_dir=cache)
    registry.put(source, "ok")
    registry.promote("ok", "v0001", "baseline")
    before = snapshot(tmp_path, skip=root)

    for bad in BAD_IDS:
        for call in every_operation(registry, source, out, bad):
            with pytest.raises(BluepriError, match="invalid adapter (name|version)"):
                call()
    for reserved in ("champion", "latest", "history", "history.jsonl"):
        with pytest.raises(BluepriError, match="reserved"):
            registry.put(source, "ok", version=reserved)

    # Ordinary use reads and writes inside the root only (the cache is outside it by design).
    registry.get("ok")
    registry.list()
    registry.history("ok")
    registry.record_decision("ok", "v0001", "reject", "no change", 0.2, 0.1)
    after = snapshot(tmp_path, skip=root)
    assert {k: v for k, v in after.items() if not k.startswith(f"{cache}/")} == before
    assert not out.exists()
    assert handler.paths, "the recording filesystem saw no calls"
    outside = [p for p in handler.paths if not p.startswith(f"{root}/") and p != str(root)]
    assert outside == []
    assert not any(".." in p.split("/") for p in handler.paths)


def test_symlinks_cannot_lead_out_of_the_root_or_into_an_artifact(
    registry: AdapterRegistry, artifacts, tmp_path: Path
) -> None:
    registry.put(artifacts["b"], "ok")
    outside = tmp_path / "outside"
    shutil.copytree(Path(registry.root) / "ok", outside)
    (Path(registry.root) / "planted").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BluepriError, match="outside the registry root"):
        registry.get("planted", "v0001")

    linked = copy_artifact(artifacts["b"], tmp_path / "linked")
    (linked / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (tmp_path / "secret.txt").write_text("not for the registry")
    with pytest.raises(BluepriError, match="holds a symbolic link"):
        registry.put(linked, "ok")


class Boom:
    """Unpickling this creates `marker`: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_weights_are_refused(registry: AdapterRegistry, artifacts, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-loaded"
    payload = pickle.dumps(Boom(marker))
    for extra in ("pytorch_lora_weights.bin", "optimizer.pt", "validation/state.pkl"):
        folder = copy_artifact(artifacts["b"], tmp_path / extra.replace("/", "-"))
        (folder / extra).parent.mkdir(exist_ok=True)
        (folder / extra).write_bytes(payload)
        with pytest.raises(BluepriError, match="pickle-based weights are refused"):
            registry.put(folder, "ok")

    # A pickle renamed to .safetensors, with adapter.json claiming its sha256.
    disguised = copy_artifact(artifacts["b"], tmp_path / "disguised")
    (disguised / WEIGHTS_NAME).write_bytes(payload)
    info = json.loads((disguised / ADAPTER_JSON).read_text())
    info["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()
    (disguised / ADAPTER_JSON).write_text(json.dumps(info))
    with pytest.raises(BluepriError, match="not in safetensors format"):
        registry.put(disguised, "ok")

    # A .bin planted next to stored weights: diffusers would fall back to it, so it is refused.
    registry.put(artifacts["b"], "ok")
    stored = Path(registry.root) / "ok" / "v0001"
    (stored / "pytorch_lora_weights.bin").write_bytes(payload)
    for call in (registry.get, registry.verify, registry.load_state_dict):
        with pytest.raises(BluepriError, match="pickle-based weights are refused"):
            call("ok", "v0001")
    assert not marker.exists()
    assert registry.versions("ok") == ["v0001"]


def test_tampered_weights_are_refused(registry: AdapterRegistry, artifacts, tmp_path: Path) -> None:
    registry.put(artifacts["b"], "ok")
    registry.promote("ok", "v0001", "baseline")
    weights = Path(registry.root) / "ok" / "v0001" / WEIGHTS_NAME
    flip_byte(weights)
    for call in (
        lambda: registry.get("ok"),
        lambda: registry.verify("ok", "v0001"),
        lambda: registry.load_state_dict("ok", "v0001"),
        lambda: registry.export("ok", "v0001", tmp_path / "out"),
        lambda: registry.promote("ok", "v0001", "again"),
    ):
        with pytest.raises(BluepriError, match="checksum mismatch for adapter ok/v0001"):
            call()

    # Re-signing adapter.json to match does not help: the registry kept the digest from put.
    info_path = weights.parent / ADAPTER_JSON
    info = json.loads(info_path.read_text())
    info["weights"]["sha256"] = sha256(weights)
    info_path.write_text(json.dumps(info))
    with pytest.raises(BluepriError, match="checksum mismatch .* adapter.json changed after put"):
        registry.get("ok", "v0001")


def test_a_remote_root_hands_out_a_verified_cached_copy(artifacts, tmp_path: Path) -> None:
    root, cache = tmp_path / "bucket" / "registry", tmp_path / "cache"
    registry = AdapterRegistry(f"file://{root}", cache_dir=cache)
    record = registry.put(artifacts["b"], "ok")
    assert record.uri == f"file://{root}/ok/v0001"
    registry.promote("ok", "v0001", "baseline")

    local = registry.get("ok")
    assert cache in local.parents and sha256(local / WEIGHTS_NAME) == record.sha256
    flip_byte(local / WEIGHTS_NAME)  # a damaged cache copy is replaced, not handed out
    assert sha256(registry.get("ok") / WEIGHTS_NAME) == record.sha256
    (local / "pytorch_lora_weights.bin").write_bytes(b"planted")  # diffusers would load it
    assert not (registry.get("ok") / "pytorch_lora_weights.bin").exists()
    assert [p.name for p in local.parent.iterdir()] == [local.name]  # no staging, no trash
    shutil.rmtree(local)
    flip_byte(root / "ok" / "v0001" / WEIGHTS_NAME)  # a damaged stored copy is refused
    with pytest.raises(BluepriError, match="checksum mismatch"):
        registry.get("ok")
    assert list(local.parent.iterdir()) == []  # nothing half-downloaded left behind


def test_no_module_but_artifacts_spells_an_artifact_file_name() -> None:
    """The cache's, adapter's and render's file names come from bluepri.artifacts, the one
    home of the contract: no other module of the package writes one out."""
    import ast

    import bluepri
    from bluepri import artifacts

    contract = {
        artifacts.MANIFEST, artifacts.WEIGHTS_NAME, artifacts.ADAPTER_JSON,
        artifacts.MODEL_CARD, artifacts.METRICS_JSON, artifacts.LOSS_CURVE,
        artifacts.RENDER_MANIFEST, artifacts.RENDER_PARTS, artifacts.RENDER_RUN,
        artifacts.RENDER_GALLERY, artifacts.RENDER_SHEET_INDEX,
    }  # fmt: skip
    package = Path(bluepri.__file__).parent
    spelled = {}
    for source in package.rglob("*.py"):
        if source.name == "artifacts.py":
            continue
        tree = ast.parse(source.read_text())
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        if literals & contract:
            spelled[str(source.relative_to(package))] = literals & contract
    assert spelled == {}


# -- export ---------------------------------------------------------------------------------


def kohya_key(diffusers_key: str) -> str:
    """What kohya calls one of our diffusers-format keys (written out independently)."""
    module, kind = re.fullmatch(
        r"(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight", diffusers_key
    ).groups()
    owner, path = module.split(".", 1)
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}[owner]
    if owner != "unet" and not path.startswith("text_model."):
        path = f"text_model.{path}"
    return f"{prefix}_{path.replace('.', '_')}.lora_{kind}.weight"


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_export_kohya_keys_and_tensors_round_trip(
    registry: AdapterRegistry, artifacts, tmp_path: Path
) -> None:
    registry.put(artifacts["a"], "ok")  # UNet + text encoder 1, alpha 4
    registry.put(artifacts["b"], "ok")  # UNet only, alpha 8 (so scale alpha/rank = 2)
    original = load_file(artifacts["a"] / WEIGHTS_NAME)

    path = Path(registry.export("ok", "v0001", tmp_path / "out", format="kohya"))
    assert path == tmp_path / "out" / "ok-v0001.safetensors"
    exported = load_file(path)
    assert all(KOHYA_KEY.fullmatch(k) for k in exported), sorted(exported)[:5]
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_") for k in exported)
    assert len(exported) == len(original) * 3 // 2  # down + up + alpha per module
    for key, tensor in original.items():
        assert torch.equal(exported[kohya_key(key)], tensor), key
    alphas = {float(v) for k, v in exported.items() if k.endswith(".alpha")}
    assert alphas == {4.0}
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_dim"] == "4" and meta["bluepri_adapter"] == "ok/v0001"

    # diffusers' own kohya loader reads it back to the same LoRA, at the trained strength.
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(registry_base()))
    kohya_b = registry.export("ok", "v0002", tmp_path / "out")
    pipe.load_lora_weights(str(registry.get("ok", "v0002")), adapter_name="stored")
    pipe.load_lora_weights(kohya_b, adapter_name="kohya")
    layers = [m for m in pipe.unet.modules() if hasattr(m, "lora_A") and "kohya" in m.lora_A]
    assert layers
    for layer in layers:
        assert torch.equal(layer.lora_A["kohya"].weight, layer.lora_A["stored"].weight)
        assert torch.equal(layer.lora_B["kohya"].weight, layer.lora_B["stored"].weight)
        assert layer.scaling["kohya"] == 2.0


def registry_base() -> Path:
    from bluepri.models.loading import tiny_folder

    return tiny_folder("base")


def test_export_diffusers_copy_loads_in_vanilla_diffusers(
    registry: AdapterRegistry, artifacts, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline

    registry.put(artifacts["c"], "ok")
    folder = Path(registry.export("ok", "v0001", tmp_path / "out", format="diffusers"))
    assert folder == tmp_path / "out" / "ok-v0001"
    assert sha256(folder / WEIGHTS_NAME) == sha256(artifacts["c"] / WEIGHTS_NAME)

    pipe = StableDiffusionXLPipeline.from_pretrained(str(registry_base()))
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    added = {
        "text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
    }
    with torch.no_grad():
        plain = pipe.unet(sample, 10, hidden, added_cond_kwargs=added).sample
        pipe.load_lora_weights(str(folder))
        adapted = pipe.unet(sample, 10, hidden, added_cond_kwargs=added).sample
    assert not torch.allclose(plain, adapted)

    with pytest.raises(BluepriError, match="inside the registry root"):
        registry.export("ok", "v0001", Path(registry.root) / "ok" / "copies")
    with pytest.raises(BluepriError, match="export format must be one of kohya, diffusers"):
        registry.export("ok", "v0001", tmp_path / "out", format="ckpt")


# -- CLI --------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_put_list_promote_verify(artifacts, tmp_path: Path, capsys) -> None:
    flags = ("--registry", str(tmp_path / "registry"))
    code, out, err = run_cli(capsys, "adapters", "put", str(artifacts["a"]), "--name", "bp", *flags)
    assert code == 0, err
    assert out.startswith("bp/v0001 sha256 ")
    code, _, _ = run_cli(capsys, "adapters", "put", str(artifacts["c"]), "--name", "bp", *flags)
    assert code == 0
    code, out, _ = run_cli(capsys, "adapters", "promote", "bp", "v0002", "--reason", "x", *flags)
    assert code == 0 and out.strip() == "bp: champion None -> v0002"

    code, out, _ = run_cli(capsys, "adapters", "list", *flags)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  bp/v0001 ") and "val_loss 0.5" in lines[0]
    assert lines[1].startswith("* bp/v0002 ")

    code, out, _ = run_cli(capsys, "adapters", "show", "bp", *flags)
    assert code == 0 and json.loads(out)["version"] == "v0002"
    code, out, _ = run_cli(capsys, "adapters", "export", "bp", "--out", str(tmp_path / "x"), *flags)
    assert code == 0 and out.strip().endswith("bp-v0002.safetensors")

    flip_byte(tmp_path / "registry" / "bp" / "v0001" / WEIGHTS_NAME)
    code, out, err = run_cli(capsys, "adapters", "verify", "bp", *flags)
    assert code == 2
    assert out.splitlines()[0].startswith("FAILED bp/v0001: checksum mismatch")
    assert out.splitlines()[1].startswith("ok bp/v0002")
    assert err.strip() == "bluepri: error: 1 of 2 versions of 'bp' failed verification"


@pytest.mark.parametrize(
    "argv",
    [
        ("adapters", "show", "../x"),
        ("adapters", "promote", "bp", "../../etc", "--reason", "r"),
        ("adapters", "list", "a/b"),
        ("adapters", "rollback", "/etc", "--reason", "r"),
    ],
)
def test_cli_bad_names_exit_2_with_one_line(argv, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(capsys, *argv, "--registry", str(tmp_path / "registry"))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("bluepri: error: invalid adapter ")
    assert not (tmp_path / "registry").exists()


def test_cli_default_registry_is_under_bluepri_home(bluepri_home: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "adapters", "list")
    assert code == 0
    assert out.strip() == f"no adapters in {bluepri_home / 'registry'}"


# -- untrusted adapter.json and history (issue 9, defect 2.12) ---------------------------------


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def broken_adapter_json(good: str, case: str) -> str:
    """adapter.json text that JSON accepts but that would break a reader of the registry."""
    info = json.loads(good)
    if case == "metrics is a string":
        return json.dumps({**info, "metrics": "great"})
    if case == "alpha is a word":
        return json.dumps({**info, "alpha": "four"})
    depth = {"nested 900 deep": 900, "nested 5000 deep": 5000}[case]
    return json.dumps(info)[:-1] + f', "training_config": {{"x": {nested_json(depth)}}}}}'


BROKEN_CASES = ["metrics is a string", "alpha is a word", "nested 900 deep", "nested 5000 deep"]


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_put_refuses_an_adapter_json_that_would_break_readers(
    case: str, registry: AdapterRegistry, artifacts, tmp_path: Path
) -> None:
    source = copy_artifact(artifacts["b"], tmp_path / "source")
    (source / ADAPTER_JSON).write_text(
        broken_adapter_json((source / ADAPTER_JSON).read_text(), case)
    )
    with pytest.raises(BluepriError) as refused:
        registry.put(source, "bp")
    assert len(str(refused.value).splitlines()) == 1
    assert registry.list() == []


def test_readers_report_a_hand_broken_version_and_go_on(
    registry: AdapterRegistry, artifacts, tmp_path: Path, capsys
) -> None:
    for key in "abc":
        registry.put(artifacts[key], "bp")
    registry.promote("bp", "v0002", "the good one")
    stored = Path(registry.root) / "bp"
    for version, case in (("v0001", "nested 5000 deep"), ("v0003", "alpha is a word")):
        path = stored / version / ADAPTER_JSON
        path.write_text(broken_adapter_json(path.read_text(), case))

    with pytest.warns(RegistryWarning) as warned:
        records = registry.list()
    assert sorted(str(w.message)[:16] for w in warned) == ["adapter bp/v0001", "adapter bp/v0003"]
    assert [r.version for r in records] == ["v0002"]
    assert records[0].metrics["final_val_loss"] == 0.6 and records[0].info["rank"] == 4
    listing = registry.scan()
    assert [r.version for r in listing.records] == ["v0002"]
    assert sorted(p.where for p in listing.problems) == ["bp/v0001", "bp/v0003"]

    for call in (
        lambda: registry.verify("bp", "v0001"),
        lambda: registry.export("bp", "v0003", tmp_path / "out"),
        lambda: registry.show("bp", "v0003"),
    ):
        with pytest.raises(BluepriError) as refused:
            call()
        assert len(str(refused.value).splitlines()) == 1
    code, out, err = run_cli(capsys, "adapters", "list", "--registry", str(registry.root))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("* bp/v0002 ")
    skipped = err.splitlines()  # the CLI names each skipped entry on stderr, one line each
    assert [line.split(":")[1].strip() for line in skipped] == [
        "skipped bp/v0001",
        "skipped bp/v0003",
    ]


def legacy_registry(root: Path, artifacts, lines: list[str]) -> Path:
    """A registry as the code before issue 9 wrote it: `history.jsonl` and a `champion` file."""
    name = root / "bp"
    for version, key in (("v0001", "b"), ("v0002", "c")):
        copy_artifact(artifacts[key], name / version)
    (name / "history.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return name


def legacy_event(action: str, version: str, **fields) -> str:
    return json.dumps(
        {"at": "2025-01-01T00:00:00+00:00", "action": action, "version": version, **fields}
    )


def legacy_puts(artifacts) -> list[str]:
    return [
        legacy_event("put", "v0001", sha256=sha256(artifacts["b"] / WEIGHTS_NAME)),
        legacy_event("put", "v0002", sha256=sha256(artifacts["c"] / WEIGHTS_NAME)),
    ]


def test_a_legacy_history_is_read_and_a_broken_line_is_skipped_and_reported(
    artifacts, tmp_path: Path
) -> None:
    lines = [
        *legacy_puts(artifacts),
        legacy_event("promote", "v0001", champion_before=None, reason="first"),
        '{"action": "promote", "version": "v00',  # a crash mid-write, or a careless edit
        "",
        legacy_event("promote", "v0002", champion_before="v0001", reason="better"),
    ]
    folder = legacy_registry(tmp_path / "registry", artifacts, lines)
    (folder / "champion").write_text(json.dumps({"version": "v0002"}))
    registry = AdapterRegistry(tmp_path / "registry")

    with pytest.warns(RegistryWarning, match="bp/history.jsonl line 4 is not valid JSON"):
        events = registry.history("bp")
    assert [(e["action"], e["version"]) for e in events] == [
        ("put", "v0001"),
        ("put", "v0002"),
        ("promote", "v0001"),
        ("promote", "v0002"),
    ]
    with pytest.warns(RegistryWarning):
        assert registry.champion("bp") == "v0002"
        back = registry.rollback("bp", "v0002 is worse after all")
        assert back.champion_after == "v0001" and registry.champion("bp") == "v0001"
        assert registry.history("bp")[-1]["action"] == "rollback"
        assert registry.verify("bp", "v0002").sha256 == sha256(artifacts["c"] / WEIGHTS_NAME)
    assert (folder / "history.jsonl").read_text() == "".join(f"{line}\n" for line in lines)


def test_a_version_without_a_put_event_is_refused(artifacts, tmp_path: Path) -> None:
    """The put event's sha256 is what catches a re-signed adapter.json: never skip it."""
    legacy_registry(tmp_path / "registry", artifacts, legacy_puts(artifacts)[1:])
    registry = AdapterRegistry(tmp_path / "registry")
    assert registry.verify("bp", "v0002").version == "v0002"
    for call in (registry.get, registry.verify, registry.load_state_dict):
        with pytest.raises(BluepriError, match="bp/v0001 has no put event in the registry history"):
            call("bp", "v0001")


def test_the_champion_is_replayed_from_the_history_not_a_pointer_file(
    registry: AdapterRegistry, artifacts
) -> None:
    for key in "abc":
        registry.put(artifacts[key], "bp")
    for version in ("v0001", "v0002", "v0003"):
        registry.promote("bp", version, f"crown {version}")
    folder = Path(registry.root) / "bp"
    assert not (folder / "champion").exists()
    (folder / "champion").write_text(json.dumps({"version": "v0001"}))  # stale, or planted
    assert registry.champion("bp") == "v0003"
    assert registry.rollback("bp", "crooked walls").champion_after == "v0002"
    assert registry.get("bp").name == "v0002"


def test_rollbacks_decided_on_the_same_champion_undo_it_once(artifacts, tmp_path: Path) -> None:
    """Two people who both roll back v0002 at once mean "not v0002", not "two steps back"."""
    rollback = legacy_event("rollback", "v0001", champion_before="v0002", reason="bad")
    lines = [
        *legacy_puts(artifacts),
        legacy_event("promote", "v0001", reason="first"),
        legacy_event("promote", "v0002", reason="second"),
        legacy_event("promote", "v0001", reason="first again"),
        legacy_event("promote", "v0002", reason="second again"),
        rollback,
        rollback,
    ]
    legacy_registry(tmp_path / "registry", artifacts, lines)
    assert AdapterRegistry(tmp_path / "registry").champion("bp") == "v0001"


def test_a_broken_history_event_file_is_skipped_and_reported(
    registry: AdapterRegistry, artifacts
) -> None:
    registry.put(artifacts["b"], "bp")
    registry.promote("bp", "v0001", "first")
    events = Path(registry.root) / "bp" / "history"
    (events / "00000007.json").write_text('{"action": "prom')
    (events / "00000008.json").write_text(json.dumps({"action": "promote", "version": "../x"}))
    with pytest.warns(RegistryWarning) as warned:
        assert [e["action"] for e in registry.history("bp")] == ["put", "promote"]
    assert [str(w.message) for w in warned] == [
        "bp/history/00000007.json is not valid JSON (Unterminated string starting at: line 1 "
        "column 12 (char 11))",
        "bp/history/00000008.json names no valid version",
    ]


# -- failed writes and repeated puts (issue 9, item 3) -----------------------------------------


def registry_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def fail_into(target: str, real):
    """`real(src, dst)` except when `dst` lies under `target`: then an I/O error."""

    def failing(src, dst, *args, **kwargs):
        if f"/{target}" in str(dst):
            raise OSError(5, "injected I/O error", str(dst))
        return real(src, dst, *args, **kwargs)

    return failing


@pytest.mark.parametrize("when", ["the history write fails", "a copy fails mid-way"])
def test_a_failed_put_leaves_no_staging_files_claims_or_events(
    when: str, registry: AdapterRegistry, artifacts, monkeypatch
) -> None:
    import os

    from bluepri.registry import store

    registry.put(artifacts["b"], "bp")
    before = registry_files(Path(registry.root))
    if when == "the history write fails":
        for call in ("replace", "link"):  # whichever puts the event file in place
            monkeypatch.setattr(os, call, fail_into("history", getattr(os, call)))
    else:
        real_copy = store.copy_hashed

        def copy_then_fail(src_fs, src, dst_fs, dst):
            digest = real_copy(src_fs, src, dst_fs, dst)
            if dst.endswith(WEIGHTS_NAME):  # the model card is in, adapter.json is not yet
                raise OSError(5, "injected I/O error", dst)
            return digest

        monkeypatch.setattr(store, "copy_hashed", copy_then_fail)
    with pytest.raises(OSError, match="injected I/O error"):
        registry.put(artifacts["c"], "bp")
    monkeypatch.undo()
    assert registry_files(Path(registry.root)) == before
    assert registry.versions("bp") == ["v0001"]
    assert [e["action"] for e in registry.history("bp")] == ["put"]
    assert registry.put(artifacts["c"], "bp").version == "v0002"


class FailingWrites(RecordingHandler):
    """A local filesystem (through pyarrow's generic API, so the claim protocol is used)
    whose writes to paths containing `target` fail half-way."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def open_output_stream(self, path, metadata):
        stream = self.local.open_output_stream(path)
        if self.target not in path:
            return stream
        return pa.PythonFile(HalfWriter(stream), mode="w")


class HalfWriter:
    def __init__(self, stream) -> None:
        self.stream = stream
        self.closed = False

    def write(self, data) -> int:
        self.stream.write(bytes(data)[: len(data) // 2])
        raise OSError(5, "injected I/O error")

    def close(self) -> None:
        self.stream.close()
        self.closed = True

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("target", ["/history", WEIGHTS_NAME])
def test_a_failed_put_on_an_object_store_leaves_nothing_behind(
    target: str, artifacts, tmp_path: Path
) -> None:
    handler = FailingWrites(target="no failure yet")
    registry = AdapterRegistry(tmp_path / "registry", filesystem=pafs.PyFileSystem(handler))
    registry.put(artifacts["b"], "bp")
    before = registry_files(tmp_path / "registry")
    handler.target = target
    with pytest.raises(OSError, match="injected I/O error"):
        registry.put(artifacts["c"], "bp")
    handler.target = "no failure any more"
    assert registry_files(tmp_path / "registry") == before
    assert registry.versions("bp") == ["v0001"]
    assert [e["action"] for e in registry.history("bp")] == ["put"]


def test_putting_the_same_weights_again_returns_the_existing_version(
    registry: AdapterRegistry, artifacts, tmp_path: Path
) -> None:
    first = registry.put(artifacts["b"], "bp")
    again = registry.put(copy_artifact(artifacts["b"], tmp_path / "rerun"), "bp")
    assert (again.version, again.sha256) == (first.version, first.sha256)
    assert registry.versions("bp") == ["v0001"]
    assert [e["action"] for e in registry.history("bp")] == ["put"]
    assert registry.put(artifacts["c"], "bp").version == "v0002"
    # Another name is another lineage; an explicit version is a request to store that one.
    assert registry.put(artifacts["b"], "other").version == "v0001"
    assert registry.put(artifacts["b"], "bp", version="release-1").version == "release-1"
