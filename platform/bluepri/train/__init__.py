"""Training: LoRA fine-tuning of SDXL on Ray Train (`train(TrainConfig) -> TrainResult`).

The per-worker loop, losses (Min-SNR, noise offset), validation, checkpoints and the
TorchTrainer wiring live in this package; `train` is its one entry point.
"""

from bluepri.train.trainer import TrainResult, train

__all__ = ["TrainResult", "train"]
