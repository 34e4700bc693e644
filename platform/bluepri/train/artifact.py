"""The adapter artifact of DESIGN.md: what a training run leaves in `--output_dir`.

    pytorch_lora_weights.safetensors   diffusers key format (vanilla load_lora_weights)
    adapter.json                       base ref, rank, alpha, targets, training config,
                                       cache fingerprint, metrics, sha256, created time
    README.md                          model card
    loss_curve.png, metrics.json       training and held-out loss history
    validation/epoch-NNNN.png          sample grids (written during training)

The names and the adapter.json model are `bluepri.artifacts`'s; this module writes them.
Rank 0 writes into a local folder and `publish_folder` copies it to the output URI, so
`--output_dir` may be a local path or shared storage (s3://, gs://).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bluepri import __version__, storage
from bluepri.artifacts import ADAPTER_FORMAT, ADAPTER_JSON, MODEL_CARD, WEIGHTS_NAME, AdapterInfo
from bluepri.models.lora import TEXT_ENCODER_TARGETS, save_lora_folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_adapter(
    folder: Path,
    *,
    unet: Any,
    text_encoder: Any | None,
    text_encoder_2: Any | None,
    config: dict[str, Any],
    plan: dict[str, Any],
    metrics: dict[str, Any],
) -> AdapterInfo:
    """Weights, adapter.json and the model card into local `folder`; returns adapter.json."""
    save_lora_folder(folder, unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2)
    trained = ["unet"] + [
        name
        for name, module in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2))
        if module is not None
    ]
    rank = config["rank"]
    info = AdapterInfo.model_validate(
        {
            "format": ADAPTER_FORMAT,
            "kind": "sdxl-lora",
            "base": config["pretrained_model_name_or_path"],
            "vae": config["pretrained_vae_model_name_or_path"],
            "rank": rank,
            "alpha": config["lora_alpha"] if config["lora_alpha"] is not None else rank,
            "targets": {
                "unet": list(config["lora_targets"]),
                **{name: list(TEXT_ENCODER_TARGETS) for name in trained[1:]},
            },
            "trained_modules": trained,
            "prediction_type": metrics.get("prediction_type"),
            "cache": {"uri": plan["cache_uri"], "fingerprint": plan["cache_fingerprint"]},
            "training_config": config,
            "plan": plan,
            "metrics": {k: v for k, v in metrics.items() if k != "prediction_type"},
            "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(folder / WEIGHTS_NAME)},
            "created": datetime.now(timezone.utc).isoformat(),
            "bluepri_version": __version__,
        }
    )
    (folder / MODEL_CARD).write_text(model_card(info))
    # adapter.json last: a folder holding it is a finished artifact (`has_adapter`).
    (folder / ADAPTER_JSON).write_text(info.to_json())
    return info


def model_card(info: AdapterInfo) -> str:
    """A Hugging Face model card: front matter the hub indexes, then how to use it."""
    config, metrics = info.training_config, info.metrics
    prompt = config.get("validation_prompt") or "a detailed blueprint drawing"
    cache = info.cache.fingerprint if info.cache else "-"
    lines = [
        "---",
        f"base_model: {info.base}",
        "library_name: diffusers",
        "license: openrail++",
        "tags:",
        "  - stable-diffusion-xl",
        "  - text-to-image",
        "  - diffusers",
        "  - lora",
        "  - blueprints",
        f"instance_prompt: {json.dumps(prompt)}",
        "---",
        "",
        "# SDXL LoRA for blueprint drawings",
        "",
        f"LoRA adapter (rank {info.rank}, alpha {info.alpha}) for `{info.base}`, "
        f"trained with bluepri {info.bluepri_version} on cache "
        f"`{cache}`. Trained modules: {', '.join(info.trained_modules)}.",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from diffusers import StableDiffusionXLPipeline",
        "",
        f'pipe = StableDiffusionXLPipeline.from_pretrained("{info.base}", '
        'torch_dtype=torch.float16).to("cuda")',
        'pipe.load_lora_weights("<this folder or hub id>")',
        f"image = pipe({json.dumps(prompt)}).images[0]",
        "```",
        "",
        "## Training",
        "",
        f"- steps: {metrics.get('global_step')}, epochs: {metrics.get('epochs')}",
        f"- learning rate: {config['learning_rate']} ({config['lr_scheduler']}), "
        f"batch size {config['train_batch_size']} x {config['num_workers']} workers "
        f"x {config['gradient_accumulation_steps']} accumulation",
        f"- resolution: {info.plan.get('resolution')}, mixed precision: "
        f"{config['mixed_precision']}, snr_gamma: {config['snr_gamma']}",
        f"- held-out loss (fixed noise): {metrics.get('initial_val_loss')} before, "
        f"{metrics.get('final_val_loss')} after",
        f"- weights sha256: `{info.weights.sha256}`",
        "",
    ]
    return "\n".join(lines)


def publish_folder(local: Path, destination: str, *, last: str | None = None) -> None:
    """Copy a local folder's files to a local path or URI (existing files are replaced).

    `last` names the file that says the folder is complete (adapter.json, a checkpoint's
    state.json): it is copied after every other file, so a copy cut short leaves no marker.
    A file that cannot be read fails the copy rather than being left out.
    """
    fs, root = storage.resolve(destination)
    files = sorted(path for path in local.rglob("*") if not path.is_dir())
    files.sort(key=lambda path: path.relative_to(local).as_posix() == last)  # stable: last, last
    for path in files:
        relative = path.relative_to(local).as_posix()
        target = f"{root.rstrip('/')}/{relative}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with path.open("rb") as source, fs.open_output_stream(target) as out:
            shutil.copyfileobj(source, out, 1 << 20)
