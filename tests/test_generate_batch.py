"""Generation as batch stages: a batch gives each request the bytes it gets alone, the base
and refiner stages hand off across processes without changing a byte, adapters come from the
registry by reference and live in a bounded LRU (no Ray)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from bluepri.errors import BluepriError
from bluepri.generate import (
    GenerationRequest,
    Pipelines,
    generate,
    load_pipelines,
    resolve_adapter,
    run_base,
    run_refiner,
)
from bluepri.models.tiny import save_random_adapter

PROMPTS = [
    ("a floor plan of a small apartment", None, None),
    ("a mechanical gear with teeth", "white lines on blue", "blurry"),
    ("an aircraft wing section", None, "text"),
]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def requests(**settings) -> list[GenerationRequest]:
    values = dict(width=64, height=64, num_inference_steps=6, **settings)
    return [
        GenerationRequest(prompt=p, prompt_2=p2, negative_prompt=n, seed=10 + i, **values)
        for i, (p, p2, n) in enumerate(PROMPTS)
    ]


def batched(pipes: Pipelines, batch: list[GenerationRequest], adapter=None) -> list[bytes]:
    out = run_base(pipes, batch, adapter)
    images = run_refiner(pipes, out, batch) if batch[0].refine else out
    return [png(image) for image in images]


@pytest.mark.parametrize("refine", [True, False])
def test_a_batch_gives_each_request_its_single_bytes(tiny_pipelines, refine: bool) -> None:
    batch = requests(refine=refine)
    singles = [png(generate(tiny_pipelines, r).image) for r in batch]
    assert batched(tiny_pipelines, batch) == singles
    assert len(set(singles)) == len(singles)  # the prompts and seeds really differ


def test_any_scheduler_batched_and_split_gives_the_same_bytes(tiny_models) -> None:
    """An ancestral (noise-injecting) scheduler draws from the generators every step."""
    from diffusers import EulerAncestralDiscreteScheduler

    from bluepri.config import ModelsConfig

    pipes = load_pipelines(ModelsConfig.tiny())
    for pipe in (pipes.base, pipes.refiner):
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    batch = requests()
    singles = [png(generate(pipes, r).image) for r in batch]
    assert batched(pipes, batch) == singles
    assert batched(pipes, batch[1:]) == singles[1:]


HANDOFF = """
import sys
from safetensors.torch import save_file
from bluepri.config import ModelsConfig
from bluepri.generate import GenerationRequest, load_pipelines, run_base
request = GenerationRequest.model_validate_json(sys.argv[1])
pipes = load_pipelines(ModelsConfig(base="tiny:base", refiner=None))
save_file({"latents": run_base(pipes, [request]).contiguous()}, sys.argv[2])
"""


def test_base_and_refiner_in_two_processes_give_the_same_bytes(
    tiny_pipelines, tmp_path: Path
) -> None:
    request = requests()[1]
    latents_file = tmp_path / "latents.safetensors"
    subprocess.run(
        [sys.executable, "-c", HANDOFF, request.model_dump_json(), str(latents_file)],
        check=True,
        capture_output=True,
    )
    latents = load_file(str(latents_file))["latents"]
    image = run_refiner(tiny_pipelines, latents, [request])[0]
    assert png(image) == png(generate(tiny_pipelines, request).image)


def test_a_mixed_batch_is_refused(tiny_pipelines) -> None:
    batch = requests()
    batch[1] = batch[1].model_copy(update={"num_inference_steps": 8})
    with pytest.raises(BluepriError, match="must share"):
        run_base(tiny_pipelines, batch)


# -- adapters --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_folders(tiny_models, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [save_random_adapter(root / f"lora-{seed}", seed) for seed in range(3)]


def test_lru_evicts_unloads_and_stays_right(tiny_models, adapter_folders) -> None:
    from bluepri.config import ModelsConfig

    pipes = load_pipelines(ModelsConfig(base="tiny:base", refiner=None), max_adapters=2)
    request = requests(refine=False)[0]

    def image_with(folder: Path) -> bytes:
        return png(generate(pipes, request.model_copy(update={"adapter": str(folder)})).image)

    first = [image_with(folder) for folder in adapter_folders]  # the third evicts the first
    assert len(set(first)) == 3
    cache = pipes.adapters
    assert (cache.loads, cache.evictions) == (3, 1)
    # Really unloaded: peft holds only the cached adapters' layers, not one per adapter seen.
    held = set(pipes.base.get_list_adapters().get("unet", []))
    assert held == set(cache.loaded) and len(held) == 2
    again = [image_with(folder) for folder in reversed(adapter_folders)]
    assert again == list(reversed(first))
    assert len(pipes.base.get_list_adapters()["unet"]) == 2


def test_a_failing_adapter_load_fails_that_request_only(
    tiny_pipelines, adapter_folders, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    weights = (adapter_folders[0] / "pytorch_lora_weights.safetensors").read_bytes()
    (broken / "pytorch_lora_weights.safetensors").write_bytes(weights[: len(weights) // 2])
    request = requests(refine=False)[0]
    with pytest.raises(BluepriError, match="failed to load"):
        generate(tiny_pipelines, request.model_copy(update={"adapter": str(broken)}))
    plain = generate(tiny_pipelines, request)
    assert np.asarray(plain.image).std() > 0


def test_registry_references_resolve_to_verified_versions(
    tiny_pipelines, adapter_folders, tmp_path: Path
) -> None:
    from bluepri.registry import AdapterRegistry

    registry = AdapterRegistry(tmp_path / "registry")
    for folder in adapter_folders[:2]:
        registry.put(folder, "bp")
    registry.promote("bp", "v0002", "test")
    champion = resolve_adapter("bp", registry)
    assert (champion.version, champion.name) == ("v0002", "bp")
    assert resolve_adapter("bp@v0001", registry).sha256 != champion.sha256
    request = requests(refine=False)[0]
    by_reference = generate(
        tiny_pipelines, request.model_copy(update={"adapter": "bp@champion"}), registry
    )
    by_folder = generate(
        tiny_pipelines, request.model_copy(update={"adapter": str(adapter_folders[1])})
    )
    assert png(by_reference.image) == png(by_folder.image)
    assert by_reference.adapter.version == "v0002"
    for bad in ("bp@../v0001", "../bp", "nope", "bp@v0009"):
        with pytest.raises(BluepriError):
            resolve_adapter(bad, registry)
