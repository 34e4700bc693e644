"""Model references and the tiny offline models (no Ray)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bluepri.artifacts import WEIGHTS_NAME
from bluepri.errors import BluepriError
from bluepri.models import load_base, load_captioner, load_refiner, resolve_ref
from bluepri.models.tiny import build_tiny


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_weight_files(tmp_path: Path) -> None:
    first = file_digests(build_tiny("base", tmp_path / "a", seed=7))
    second = file_digests(build_tiny("base", tmp_path / "b", seed=7))
    other = file_digests(build_tiny("base", tmp_path / "c", seed=8))
    weights = [k for k in first if k.endswith(".safetensors")]
    assert len(weights) == 4  # unet, vae, text_encoder, text_encoder_2
    assert first == second
    assert all(first[k] != other[k] for k in weights)


def test_tiny_base_has_sdxl_structure(tiny_models: dict[str, Path]) -> None:
    pipe = load_base("tiny:base")
    unet = pipe.unet.config
    te1, te2 = pipe.text_encoder.config, pipe.text_encoder_2.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + (
        te2.projection_dim
    )
    assert sum("CrossAttn" in b for b in unet.down_block_types) >= 2
    assert pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == 77
    for name in ("vocab.json", "merges.txt"):
        assert (tiny_models["base"] / "tokenizer" / name).is_file()
        assert (tiny_models["base"] / "tokenizer_2" / name).is_file()


def test_refiner_shares_latent_space_with_base(tiny_models: dict[str, Path]) -> None:
    base = load_base("tiny:base")
    refiner = load_refiner("tiny:refiner")
    assert refiner.text_encoder is None
    assert refiner.unet.config.projection_class_embeddings_input_dim == (
        5 * refiner.unet.config.addition_time_embed_dim + refiner.text_encoder_2.config.hidden_size
    )
    for ours, theirs in zip(
        base.vae.state_dict().values(), refiner.vae.state_dict().values(), strict=True
    ):
        assert (ours == theirs).all()
    shared = load_refiner("tiny:refiner", share_from=base)
    assert shared.vae is base.vae and shared.text_encoder_2 is base.text_encoder_2


def test_tiny_blip_captions_an_image(tiny_models: dict[str, Path]) -> None:
    from PIL import Image

    captioner = load_captioner("tiny:blip")
    inputs = captioner.processor(
        images=Image.new("RGB", (90, 70), (20, 60, 160)), return_tensors="pt"
    )
    ids = captioner.model.generate(**inputs, max_new_tokens=8, min_new_tokens=3)
    text = captioner.processor.decode(ids[0], skip_special_tokens=True)
    assert len(text.split()) >= 3


def test_long_prompts_are_truncated_like_clip(tiny_models: dict[str, Path]) -> None:
    pipe = load_base("tiny:base")
    ids = pipe.tokenizer("blueprint " * 200, truncation=True, max_length=77).input_ids
    assert len(ids) == 77
    assert ids[-1] == pipe.tokenizer.eos_token_id


@pytest.mark.parametrize(
    ("ref", "kind", "message"),
    [
        ("tiny:nope", "base", "unknown model ref 'tiny:nope'"),
        ("bad ref!", "base", "unknown model ref"),
        ("/definitely/not/here", "base", "does not exist"),
    ],
)
def test_bad_refs_are_refused(ref: str, kind: str, message: str) -> None:
    with pytest.raises(BluepriError, match=message):
        resolve_ref(ref, kind)  # type: ignore[arg-type]


def test_folder_that_is_not_a_pipeline(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BluepriError, match="not a diffusers pipeline folder"):
        load_base(str(tmp_path))
    with pytest.raises(BluepriError, match="is a file"):
        load_base(str(tmp_path / "config.json"))


def test_base_without_two_text_encoders_is_refused(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(BluepriError, match="two text encoders"):
        load_base(str(tiny_models["refiner"]))


def test_unreachable_hub_id_names_the_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BluepriError) as err:
        load_base("stabilityai/stable-diffusion-xl-base-1.0")
    message = str(err.value)
    assert "stabilityai/stable-diffusion-xl-base-1.0" in message and "tiny:base" in message
    assert "\n" not in message


def test_saved_lora_reloads_in_vanilla_diffusers_with_its_alpha(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    from bluepri.models.lora import attach_lora, save_lora_folder

    trained = load_base("tiny:base")
    torch.manual_seed(0)
    attach_lora(trained.unet, rank=4, alpha=8, init=False)  # scale alpha / rank = 2
    save_lora_folder(tmp_path / "adapter", trained.unet)
    reloaded = load_base("tiny:base")
    reloaded.load_lora_weights(str(tmp_path / "adapter"))
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 96))
    cond = {"text_embeds": torch.randn(1, 64), "time_ids": torch.randn(1, 6)}
    with torch.no_grad():
        want = trained.unet(*inputs, added_cond_kwargs=cond).sample
        got = reloaded.unet(*inputs, added_cond_kwargs=cond).sample
    assert torch.equal(want, got)


def test_adapter_metadata_is_the_same_in_every_process() -> None:
    """The peft config beside the weights must not depend on the process's string-hash seed
    (peft keeps target modules in a set): a run republished after a restart, in another
    process, writes the same bytes."""
    import subprocess
    import sys

    program = (
        "import json, types; from peft import LoraConfig; "
        "from bluepri.models.lora import adapter_metadata, UNET_TARGETS; "
        "model = types.SimpleNamespace(peft_config={'default': LoraConfig(r=4, "
        "target_modules=list(UNET_TARGETS))}); "
        "print(json.dumps(adapter_metadata(model), sort_keys=True))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (0, 1, 2, 3)
    }
    assert len(outputs) == 1


def test_a_saved_adapter_is_the_same_bytes_in_every_process(tiny_models, tmp_path: Path) -> None:
    """The adapter's sha256 is its identity (adapter.json, registry): the same weights saved by
    another process must give the same file. safetensors writes its metadata map in the
    process's own hash order, so without a canonical header two processes differ."""
    import subprocess
    import sys

    program = (
        "import sys, hashlib, torch; from pathlib import Path; "
        "from bluepri.models.loading import load_base; "
        "from bluepri.models.lora import attach_lora, save_lora_folder; "
        "unet = load_base('tiny:base').unet; torch.manual_seed(0); "
        "attach_lora(unet, rank=4, init=False); folder = save_lora_folder(sys.argv[1], unet); "
        f"print(hashlib.sha256((folder / {WEIGHTS_NAME!r}).read_bytes()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program, str(tmp_path / str(index))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for index in range(5)
    }
    assert len(digests) == 1
