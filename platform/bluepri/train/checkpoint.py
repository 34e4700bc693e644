"""Training checkpoints: everything a worker needs to continue at the exact same step.

A checkpoint folder holds the trained LoRA weights (float32, by parameter name), the
optimiser, LR scheduler and grad scaler states, the RNG states, and `state.json` with the
global step, the position in the data order (epoch, next batch) and the metrics history.
Rank 0 writes it into a local folder and hands it to `ray.train.report`, which copies it
to the run's storage; on a restart `ray.train.get_checkpoint()` gives it back.

A user can name any folder with `--resume_from_checkpoint`, so a checkpoint is read as data
only: every piece is a safetensors file whose tensors are the state's tensors and whose
metadata holds the rest of the state as JSON. Nothing is unpickled; a file that is not
ours fails with one line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from bluepri.errors import BluepriError

STATE = "state.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
SCHEDULER = "lr_scheduler.safetensors"
SCALER = "grad_scaler.safetensors"
RNG = "rng.safetensors"
CHECKPOINT_PREFIX = "checkpoint-"
TREE_KEY = "bluepri_state"  # the safetensors metadata entry holding the JSON part


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


# -- state trees: nested dicts/lists/tuples of JSON values and tensors ---------------------------


def split_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON part of a state tree; its tensors move into `tensors`, referenced by key.

    Dicts keep their key types (an optimiser's state is keyed by int parameter ids, and a
    string id would silently drop the moments on load), tuples stay tuples.
    """
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"tensor": key}
    if isinstance(value, dict):
        return {
            "dict": [
                [split_tensors(k, tensors), split_tensors(v, tensors)] for k, v in value.items()
            ]
        }
    if isinstance(value, list | tuple):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [split_tensors(v, tensors) for v in value]}
    if isinstance(value, np.ndarray):
        return split_tensors(torch.from_numpy(value.copy()), tensors)
    if isinstance(value, np.generic):
        return {"value": value.item()}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `split_tensors`; anything but its own output is a ValueError."""
    if not isinstance(tree, dict) or len(tree) != 1:
        raise ValueError("malformed state tree")
    ((kind, content),) = tree.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "value":
        if content is not None and not isinstance(content, bool | int | float | str):
            raise ValueError("malformed state value")
        return content
    if kind in ("list", "tuple"):
        items = [join_tensors(v, tensors) for v in content]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in content}
    raise ValueError(f"unknown state node {kind!r}")


def save_tree(path: Path, value: Any) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = split_tensors(value, tensors)
    save_file(tensors, str(path), metadata={TREE_KEY: json.dumps(tree)})


def load_tree(path: Path) -> Any:
    """A state tree from one of our safetensors files, or one line saying it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tree = json.loads((handle.metadata() or {})[TREE_KEY])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        return join_tensors(tree, tensors)
    except Exception as err:  # safetensors, JSON and shape errors alike: not our file
        raise BluepriError(
            f"{str(path)!r} is not a bluepri checkpoint file ({type(err).__name__}); "
            "checkpoints are safetensors only"
        ) from None


# -- RNG ------------------------------------------------------------------------------------------


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
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))


# -- save / load ----------------------------------------------------------------------------------


def save_checkpoint(
    folder: Path,
    *,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: Any,
    lr_scheduler: Any,
    grad_scaler: Any,
    state: TrainState,
) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: p.detach().cpu().contiguous().clone() for name, p in parameters.items()}
    save_file(weights, str(folder / WEIGHTS))
    save_tree(folder / OPTIMIZER, optimizer.state_dict())
    save_tree(folder / SCHEDULER, lr_scheduler.state_dict())
    save_tree(folder / SCALER, grad_scaler.state_dict())
    save_tree(folder / RNG, rng_states())
    # state.json last: a folder without it is an interrupted write, never loaded.
    (folder / STATE).write_text(state.model_dump_json(indent=2))
    return folder


def read_state(folder: Path) -> TrainState:
    path = folder / STATE
    if not path.is_file():
        raise BluepriError(f"{str(folder)!r} is not a bluepri training checkpoint (no {STATE})")
    try:
        return TrainState.model_validate_json(path.read_bytes())
    except ValidationError:
        raise BluepriError(f"{str(path)!r} is not a valid bluepri training state") from None


def load_weights(
    folder: Path, parameters: dict[str, torch.nn.Parameter]
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = folder / WEIGHTS
    if not path.is_file():
        raise BluepriError(
            f"checkpoint {str(folder)!r} has no {WEIGHTS} (checkpoints of bluepri before "
            "safetensors-only checkpoints cannot be resumed)"
        )
    try:
        weights = load_file(str(path))
    except Exception as err:
        raise BluepriError(
            f"{str(path)!r} is not a safetensors file ({type(err).__name__})"
        ) from None
    if set(weights) != set(parameters):
        raise BluepriError(
            f"checkpoint {str(folder)!r} holds other LoRA weights than this run trains "
            "(rank, targets or --train_text_encoder differ)"
        )
    return weights


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
    weights = load_weights(folder, parameters)
    pieces = {name: load_tree(folder / name) for name in (OPTIMIZER, SCHEDULER, SCALER, RNG)}
    try:
        optimizer.load_state_dict(pieces[OPTIMIZER])
        lr_scheduler.load_state_dict(pieces[SCHEDULER])
        grad_scaler.load_state_dict(pieces[SCALER])
        set_rng_states(pieces[RNG])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        why = f"{type(err).__name__}: {err}".splitlines()[0]
        raise BluepriError(f"checkpoint {str(folder)!r} does not fit this run ({why})") from None
    with torch.no_grad():
        for name, param in parameters.items():
            param.copy_(weights[name].to(param.device, param.dtype))
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
