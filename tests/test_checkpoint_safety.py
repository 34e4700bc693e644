"""Checkpoints a user names (`--resume_from_checkpoint`) are data, never code.

A crafted checkpoint folder whose optimiser/scheduler/scaler/RNG files are pickles that run
code when unpickled must be refused without running anything; a real checkpoint round-trips
every piece of state exactly. No Ray, no models: a few parameters and a real AdamW.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from bluepri.errors import BluepriError
from bluepri.train.checkpoint import TrainState, load_checkpoint, save_checkpoint


class RunsCode:
    """Unpickling this creates a marker file: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def training_pieces(seed: int = 0):
    torch.manual_seed(seed)
    parameters = {
        "lora_A": torch.nn.Parameter(torch.randn(4, 8)),
        "lora_B": torch.nn.Parameter(torch.randn(8, 4)),
    }
    optimizer = torch.optim.AdamW(parameters.values(), lr=1e-3, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return parameters, optimizer, scheduler, scaler


def take_steps(parameters, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        loss = sum((p**2).sum() for p in parameters.values())
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def save(folder: Path, parameters, optimizer, scheduler, scaler) -> Path:
    return save_checkpoint(
        folder,
        parameters=parameters,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        grad_scaler=scaler,
        state=TrainState(global_step=3, epoch=1, next_batch=2),
    )


def load(folder: Path):
    parameters, optimizer, scheduler, scaler = training_pieces(seed=1)
    state = load_checkpoint(
        folder,
        parameters=parameters,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        grad_scaler=scaler,
    )
    return state, parameters, optimizer, scheduler


def test_round_trip_restores_every_piece_exactly(tmp_path: Path) -> None:
    parameters, optimizer, scheduler, scaler = training_pieces()
    take_steps(parameters, optimizer, scheduler, 3)
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    save(tmp_path / "ckpt", parameters, optimizer, scheduler, scaler)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1).item())

    state, restored, restored_opt, restored_sched = load(tmp_path / "ckpt")
    assert state.global_step == 3 and state.next_batch == 2
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_draws
    for name, param in parameters.items():
        assert torch.equal(restored[name], param)
    assert restored_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert restored_opt.param_groups[0]["betas"][1] == 0.99
    # The moments came back under the right parameters: one more step agrees to the bit.
    take_steps(parameters, optimizer, scheduler, 1)
    take_steps(restored, restored_opt, restored_sched, 1)
    for name, param in parameters.items():
        assert torch.equal(restored[name], param)


def test_crafted_pickles_in_a_checkpoint_never_run(tmp_path: Path) -> None:
    parameters, optimizer, scheduler, scaler = training_pieces()
    folder = save(tmp_path / "ckpt", parameters, optimizer, scheduler, scaler)
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save(RunsCode(marker), buffer)  # what torch.load(weights_only=False) would run
    payload = buffer.getvalue()
    # Every state file but the weights and state.json becomes the payload, under the names
    # of both checkpoint layouts (torch.save's .pt files, and safetensors).
    for name in ["optimizer.pt", "lr_scheduler.pt", "grad_scaler.pt", "rng.pt"]:
        (folder / name).write_bytes(payload)
    for path in folder.iterdir():
        if path.name != "state.json" and not path.name.startswith("trainable"):
            path.write_bytes(payload)
    with pytest.raises(BluepriError):
        load(folder)
    assert not marker.exists(), "loading a checkpoint ran code from a pickle"


def test_no_unpickling_anywhere_in_the_platform() -> None:
    """Nothing a user can name is ever unpickled: no torch.load, pickle.load or
    weights_only=False left in platform/ (safetensors and JSON only)."""
    root = Path(__file__).resolve().parents[1] / "platform"
    offenders = []
    for path in root.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(
                s in code
                for s in ("torch.load(", "pickle.load", "weights_only=False", "pickle.loads")
            ):
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert offenders == []


# -- publishing: the marker file lands last ---------------------------------------------------


@pytest.mark.parametrize("marker", ["adapter.json", "state.json"])
def test_a_publish_cut_short_leaves_no_marker(tmp_path: Path, marker: str) -> None:
    """adapter.json (an adapter) and state.json (a checkpoint) say "this folder is complete":
    a copy that fails on another file must not have written them."""
    from bluepri.train.artifact import publish_folder

    local = tmp_path / "local"
    local.mkdir()
    (local / marker).write_text("{}")
    (local / "a-small.txt").write_text("copied")
    (local / "zz-weights.safetensors").symlink_to(tmp_path / "gone")  # unreadable: the copy fails
    with pytest.raises(OSError):
        publish_folder(local, str(tmp_path / "out"), last=marker)
    assert not (tmp_path / "out" / marker).exists()

    (local / "zz-weights.safetensors").unlink()
    publish_folder(local, str(tmp_path / "out"), last=marker)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-small.txt", marker]
