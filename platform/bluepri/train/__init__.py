"""Training: LoRA fine-tuning of SDXL on Ray Train (`train(TrainConfig) -> TrainResult`).

The per-worker loop, losses (Min-SNR, noise offset), validation, checkpoints and the
TorchTrainer wiring live in this package; `train` is its one entry point. What a stage that
drives training runs (tune) may rely on is exported here too: the plan a config makes on a
cache, the data stage's config for a training config, the report key that numbers
validations and which reports carry one.
"""

from bluepri.train.session import VALIDATION, carries_validation
from bluepri.train.trainer import TrainResult, make_plan, prepare_config_for, train

__all__ = [
    "VALIDATION",
    "TrainResult",
    "carries_validation",
    "make_plan",
    "prepare_config_for",
    "train",
]
