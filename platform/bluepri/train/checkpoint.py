"""Training checkpoints: everything a worker needs to continue at the exact same step.

A checkpoint folder holds the trained LoRA weights (float32, by parameter name), the
optimiser, LR scheduler and grad scaler states, the RNG states, and `state.json` with the
global step, the position in the data order (epoch, next batch) and the metrics history.
Rank 0 writes it into a local folder and hands it to `ray.train.report`, which copies it
to the run's storage; on a restart `ray.train.get_checkpoint()` gives it back.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from bluepri.errors import BluepriError

STATE = "state.json"
WEIGHTS = "trainable.pt"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "lr_scheduler.pt"
SCALER = "grad_scaler.pt"
RNG = "rng.pt"
CHECKPOINT_PREFIX = "checkpoint-"


class TrainState(BaseModel):
    """Where training stands; every field survives a restart."""

    global_step: int = 0  # optimiser steps done
    epoch: int = 0  # the epoch being walked
    next_batch: int = 0  # the first batch of `epoch` not yet trained on
    finished: bool = False
    initial_val_loss: float | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)  # train and val records
    resumed_at: list[int] = Field(default_factory=list)  # steps this run restarted from
    samples_seen: int = 0  # training samples over all ranks
    train_seconds: float = 0.0  # time in optimiser steps (not validation or checkpoints)
    plan: dict[str, Any] = Field(default_factory=dict)  # the plan it was trained under


def checkpoint_name(global_step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{global_step:08d}"


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    folder: Path,
    *,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: Any,
    lr_scheduler: Any,
    grad_scaler: Any,
    state: TrainState,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({name: p.detach().cpu().clone() for name, p in parameters.items()}, folder / WEIGHTS)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER)
    torch.save(lr_scheduler.state_dict(), folder / SCHEDULER)
    torch.save(grad_scaler.state_dict(), folder / SCALER)
    torch.save(rng_states(), folder / RNG)
    # state.json last: a folder without it is an interrupted write, never loaded.
    (folder / STATE).write_text(state.model_dump_json(indent=2))
    return folder


def read_state(folder: Path) -> TrainState:
    path = folder / STATE
    if not path.is_file():
        raise BluepriError(f"{str(folder)!r} is not a bluepri training checkpoint (no {STATE})")
    return TrainState.model_validate(json.loads(path.read_text()))


def load_checkpoint(
    folder: Path,
    *,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: Any,
    lr_scheduler: Any,
    grad_scaler: Any,
) -> TrainState:
    """Restore every piece in place; returns the state to continue from."""
    state = read_state(folder)
    weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    if set(weights) != set(parameters):
        raise BluepriError(
            f"checkpoint {str(folder)!r} holds other LoRA weights than this run trains "
            "(rank, targets or --train_text_encoder differ)"
        )
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(weights[name].to(param.device, param.dtype))
    optimizer.load_state_dict(
        torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=False)
    )
    lr_scheduler.load_state_dict(torch.load(folder / SCHEDULER, weights_only=False))
    grad_scaler.load_state_dict(torch.load(folder / SCALER, weights_only=False))
    set_rng_states(torch.load(folder / RNG, weights_only=False))
    return state


def latest_checkpoint(run_folder: str) -> str | None:
    """The newest complete checkpoint folder of a run (by step), or None."""
    from bluepri import storage

    names = [n for n in storage.list_dirs(run_folder) if n.startswith(CHECKPOINT_PREFIX)]
    for name in sorted(names, reverse=True):
        candidate = storage.join(run_folder, name)
        if storage.is_file(storage.join(candidate, STATE)):
            return candidate
    return None
