"""LoRA adapters through peft: attach to SDXL's UNet / text encoders, extract, save.

Saved folders hold `pytorch_lora_weights.safetensors` in diffusers' key format, written by
diffusers' own `save_lora_weights`, so a vanilla `pipe.load_lora_weights(folder)` loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bluepri import artifacts

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def attach_lora(
    model: Any,
    *,
    rank: int,
    alpha: float | None = None,
    targets: tuple[str, ...] = UNET_TARGETS,
    init: bool | str = "gaussian",
) -> Any:
    """Add a peft LoRA adapter (alpha defaults to rank) to `model` in place; returns it.

    For the UNet (diffusers' `add_adapter`). transformers 5.24's `add_adapter` refuses peft
    < 0.22, so text encoders take peft's `inject_adapter_in_model` (see train/models.py).
    `init="gaussian"` is what diffusers' scripts use (B starts at zero, so training starts
    from the base model); `init=False` gives a random adapter that changes outputs at once.
    """
    from peft import LoraConfig

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights=init,
        target_modules=list(targets),
    )
    model.add_adapter(config)
    return model


def lora_state_dict(model: Any) -> dict[str, Any]:
    """The adapter weights of `model` in diffusers' key format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def save_lora_folder(
    folder: str | Path,
    unet: Any,
    text_encoder: Any | None = None,
    text_encoder_2: Any | None = None,
) -> Path:
    """Write the UNet (and text encoder) adapters as a diffusers LoRA folder."""
    from diffusers import StableDiffusionXLPipeline

    folder = Path(folder)
    StableDiffusionXLPipeline.save_lora_weights(
        save_directory=str(folder),
        unet_lora_layers=lora_state_dict(unet),
        text_encoder_lora_layers=lora_state_dict(text_encoder) if text_encoder else None,
        text_encoder_2_lora_layers=lora_state_dict(text_encoder_2) if text_encoder_2 else None,
        # The peft config travels in the safetensors metadata, so a vanilla loader applies
        # alpha / rank; without it diffusers assumes alpha == rank.
        unet_lora_adapter_metadata=adapter_metadata(unet),
        text_encoder_lora_adapter_metadata=adapter_metadata(text_encoder),
        text_encoder_2_lora_adapter_metadata=adapter_metadata(text_encoder_2),
        weight_name=artifacts.WEIGHTS_NAME,
        safe_serialization=True,
    )
    canonical_safetensors_header(folder / artifacts.WEIGHTS_NAME)
    return folder


def canonical_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place.

    safetensors writes its metadata map in the writing process's own hash order, so the same
    adapter saved by two processes differs in bytes, and its sha256 (the adapter's identity
    in adapter.json and the registry) with it. Only the order changes: same keys and values,
    same length, same tensors; a header that would not keep its length is left as it is.
    """
    import json
    import struct

    with path.open("r+b") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        raw = file.read(size)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:
            return
        file.seek(8)
        file.write(text.ljust(size, b" "))  # safetensors pads its header with spaces


def adapter_metadata(model: Any | None) -> dict[str, Any] | None:
    """The model's peft LoraConfig as a dict (what diffusers stores beside the weights).

    peft keeps `target_modules` in a set, whose order follows the process's string-hash
    seed; sorted, the same adapter gives the same bytes in every process."""
    if model is None or not getattr(model, "peft_config", None):
        return None
    metadata = next(iter(model.peft_config.values())).to_dict()
    if isinstance(metadata.get("target_modules"), list | set | tuple):
        metadata["target_modules"] = sorted(metadata["target_modules"])
    return metadata
