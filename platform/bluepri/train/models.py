"""Builders for one worker's training objects: models, LoRA adapters, optimiser, scheduler.

Small functions in the order diffusers' script builds things, so `loop.py` can call them one
after another and still read top to bottom. The models come from `load_base`, the same
loading path generation uses, and the validation pipeline shares their modules (no second
copy of SDXL in memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bluepri.config import TrainConfig
from bluepri.denoising import TEXT_ENCODER_NAMES, DenoisingModels, load_denoising_models
from bluepri.errors import BluepriError
from bluepri.models.lora import TEXT_ENCODER_TARGETS, attach_lora

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainingModels(DenoisingModels):
    """The frozen SDXL parts and noise schedule, and which modules carry trained LoRA."""

    trainable: dict[str, torch.nn.Module] = field(default_factory=dict)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Every trained parameter, in a fixed order (optimiser state and all-reduce rely on it)."""
        return [
            p for module in self.trainable.values() for p in module.parameters() if p.requires_grad
        ]

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {
            f"{name}.{pname}": p
            for name, module in self.trainable.items()
            for pname, p in module.named_parameters()
            if p.requires_grad
        }


def text_encoder_rates(config: TrainConfig, learning_rate: float) -> tuple[float, float]:
    """Learning rates of text encoders 1 and 2: 0 unless trained, else their own or the UNet's."""
    if not config.train_text_encoder:
        return 0.0, 0.0
    scale = learning_rate / config.learning_rate  # --scale_lr scales every group alike
    rates = (config.text_encoder_lr, config.text_encoder_2_lr)
    return tuple(learning_rate if r is None else r * scale for r in rates)  # type: ignore[return-value]


def load_models(config: TrainConfig, device: torch.device) -> TrainingModels:
    """SDXL base (+ replacement VAE) in the weight dtype, frozen, and the DDPM noise schedule."""
    models = load_denoising_models(
        config.pretrained_model_name_or_path,
        weight_dtype=WEIGHT_DTYPES[config.mixed_precision],
        device=device,
        vae_ref=config.pretrained_vae_model_name_or_path,
        prediction_type=config.prediction_type,
        into=TrainingModels,
    )
    assert isinstance(models, TrainingModels)
    return models


def add_adapters(models: TrainingModels, config: TrainConfig, seed: int, te_rates) -> None:
    """LoRA on the UNet (and on each text encoder whose rate is > 0), trainable in float32.

    Seeded first, so every rank builds the same initial adapter weights; the adapter's B
    matrices start at zero, so training starts from the base model.
    """
    alpha = config.lora_alpha if config.lora_alpha is not None else config.rank
    torch.manual_seed(seed)
    attach_lora(models.unet, rank=config.rank, alpha=alpha, targets=tuple(config.lora_targets))
    models.trainable["unet"] = models.unet
    for name, encoder, rate in zip(TEXT_ENCODER_NAMES, models.text_encoders, te_rates, strict=True):
        if rate > 0:
            attach_text_encoder_lora(encoder, rank=config.rank, alpha=alpha)
            models.trainable[name] = encoder
            models.text_adapted.add(name)  # its captions are encoded live, not cached
    if models.weight_dtype != torch.float32:
        from diffusers.training_utils import cast_training_params

        # Frozen weights stay in half precision; the optimiser updates float32 LoRA weights.
        cast_training_params(list(models.trainable.values()), dtype=torch.float32)
    if config.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
        for name in TEXT_ENCODER_NAMES:
            if name in models.trainable:
                enable_activation_checkpointing(models.trainable[name])
    for module in models.trainable.values():
        module.train()


def attach_text_encoder_lora(encoder: Any, *, rank: int, alpha: float) -> None:
    """LoRA on a CLIP text encoder's attention projections, as diffusers' script adds it.

    Through peft's `inject_adapter_in_model`, which transformers' `add_adapter` calls
    underneath: transformers 5.24's wrapper refuses peft < 0.22 (unreleased at the time of
    writing) although the injection and the saved keys are the same.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(TEXT_ENCODER_TARGETS),
    )
    inject_adapter_in_model(config, encoder)


def enable_activation_checkpointing(encoder: Any) -> None:
    # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias).
    enable = getattr(encoder, "activation_checkpointing_enable", None)
    (enable or encoder.gradient_checkpointing_enable)()


def build_optimizer(models: TrainingModels, config: TrainConfig, rates: dict[str, float]):
    """AdamW (or bitsandbytes' 8-bit AdamW) with one parameter group per trained module."""
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise BluepriError(
                "--use_8bit_adam needs bitsandbytes: pip install bitsandbytes"
            ) from None
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    groups = [
        {"params": [p for p in module.parameters() if p.requires_grad], "lr": rates[name]}
        for name, module in models.trainable.items()
    ]
    return optimizer_class(
        groups,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def build_lr_scheduler(optimizer, config: TrainConfig, max_train_steps: int):
    """diffusers' `get_scheduler`, stepped once per optimiser step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=max_train_steps,
    )


def build_grad_scaler(config: TrainConfig, device: torch.device):
    """A loss scaler for fp16 (gradients underflow in half precision); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")


def set_tf32(allow: bool) -> None:
    """TensorFloat-32 matmuls on Ampere+ GPUs: faster, slightly less precise."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
