"""Real random LoRA adapters for tiny:base, packaged as the registry takes them."""

from __future__ import annotations

import hashlib
from pathlib import Path


def make_adapter(folder: Path, seed: int) -> Path:
    """A LoRA (rank 4, random non-zero weights) with its adapter.json."""
    import torch

    from bluepri.artifacts import ADAPTER_JSON, WEIGHTS_NAME, AdapterInfo
    from bluepri.models import load_base
    from bluepri.models.lora import attach_lora, save_lora_folder

    donor = load_base("tiny:base")
    torch.manual_seed(seed)
    attach_lora(donor.unet, rank=4, init=False)
    save_lora_folder(folder, donor.unet)
    digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    info = AdapterInfo(base="tiny:base", rank=4, alpha=4, weights={"sha256": digest})
    (folder / ADAPTER_JSON).write_text(info.to_json())
    return folder
