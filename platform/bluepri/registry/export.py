"""Export to the kohya key format that ComfyUI, A1111, SD.Next and InvokeAI load.

The conversion is diffusers' own (`convert_state_dict_to_kohya`, which takes PEFT keys):
our diffusers-format keys go to PEFT first, split by owner because diffusers names UNet
(`.lora.down`) and text-encoder (`.lora_linear_layer.down`) layers differently.
"""

from __future__ import annotations

from typing import Any

from bluepri import __version__
from bluepri.artifacts import AdapterInfo
from bluepri.errors import BluepriError

KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_")
TEXT_ENCODERS = ("text_encoder.", "text_encoder_2.")
KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def to_kohya(state_dict: dict[str, Any], *, alpha: float | None = None) -> dict[str, Any]:
    """diffusers-format LoRA tensors -> kohya keys (`lora_unet_..._to_q.lora_down.weight`)."""
    import torch
    from diffusers.utils.state_dict_utils import (
        StateDictType,
        convert_state_dict_to_kohya,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    unet = {k: v for k, v in state_dict.items() if k.startswith("unet.")}
    encoders = {with_text_model(k): v for k, v in state_dict.items() if not k.startswith("unet.")}
    peft = convert_unet_state_dict_to_peft(unet)
    if encoders:
        peft.update(convert_state_dict_to_peft(encoders, original_type=StateDictType.DIFFUSERS))
    kohya = convert_state_dict_to_kohya(peft)
    for key in kohya:
        if not (key.startswith(KOHYA_PREFIXES) and key.endswith(KOHYA_SUFFIXES)):
            raise BluepriError(f"cannot express LoRA key {key!r} in kohya format")
    if alpha is not None:
        # diffusers writes alpha = rank (scale 1); kohya scales by alpha / rank, so the
        # artifact's trained alpha goes in, or an alpha != rank adapter would change strength.
        for key in kohya:
            if key.endswith(".alpha"):
                kohya[key] = torch.tensor(float(alpha), dtype=torch.float32)
    return kohya


def with_text_model(key: str) -> str:
    """`text_encoder.encoder.layers...` -> `text_encoder.text_model.encoder.layers...`.

    transformers 5 dropped CLIPTextModel's `text_model` wrapper, so adapters trained under
    it lack that level; kohya names (`lora_te1_text_model_encoder_layers_0_...`) follow the
    checkpoints' own layout, which has it, and UIs ignore text-encoder keys without it.
    """
    for prefix in TEXT_ENCODERS:
        if key.startswith(prefix) and not key.startswith(f"{prefix}text_model."):
            return f"{prefix}text_model.{key[len(prefix) :]}"
    return key


def kohya_metadata(info: AdapterInfo, adapter_id: str, sha256: str) -> dict[str, str]:
    """The `ss_*` header fields kohya's tools and UIs read, plus where the file came from."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(info.rank),
        "ss_network_alpha": f"{info.alpha:g}",
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": info.base,
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "bluepri_adapter": adapter_id,
        "bluepri_weights_sha256": sha256,
        "bluepri_version": __version__,
    }


def kohya_safetensors(
    state_dict: dict[str, Any], *, alpha: float | None, metadata: dict[str, str]
) -> bytes:
    """The kohya-format file's bytes."""
    from safetensors.torch import save

    tensors = {k: v.contiguous() for k, v in to_kohya(state_dict, alpha=alpha).items()}
    return save(tensors, metadata=metadata)
