"""Where the training loop runs, and what it needs from there: its rank, device, the
checkpoint to resume from, and a place to report metrics and checkpoints to.

Two places, one loop (`loop.run_worker`):
- `RayTrainSession`: a Ray Train worker, one of `num_workers` in a `TorchTrainer`'s group.
  Ray Train persists the checkpoints (`CheckpointConfig(num_to_keep)`), hands the latest back
  after a worker failure and forwards reports to its callbacks.
- `InProcessSession`: this process, for a one-worker run (Ray Train's "local mode", with
  checkpoints kept). A local `bluepri train` then starts neither Ray nor a worker group, like
  the diffusers script; a search's one-worker trial trains in its Tune trial's actor, which
  Tune reuses for the next trial (`reuse_actors`), so the second trial on an actor finds
  torch, diffusers and the process already up, where a `TorchTrainer` per trial would start a
  controller, a worker group and a process group and import everything again. Checkpoints go
  where Ray Train would put them (`<storage_path>/<run>/checkpoint-<step>`, the same files,
  `state.json` last), so `--resume_from_checkpoint latest`, a restarted trial and
  `tune --resume` find them exactly as before; in a trial, only validations reach Tune, as
  ASHA's rungs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from bluepri import storage
from bluepri.train.checkpoint import CHECKPOINT_PREFIX, STATE

# The report key numbering validations (1, 2, ...): Tune's ASHA uses it as its time axis.
VALIDATION = "validation"


def carries_validation(metrics: dict[str, Any]) -> bool:
    """Whether a report holds a fresh validation: only those reach Tune, as ASHA's rungs."""
    return metrics.get("val_loss") is not None and VALIDATION in metrics


class WorkerSession(Protocol):
    """What `loop.run_worker` asks of the place it runs in."""

    rank: int
    world_size: int
    device: torch.device

    def resume_checkpoint(self) -> str | None:
        """The checkpoint folder the runtime hands back after a failure, if any."""

    def report(
        self, metrics: dict[str, Any], checkpoint: Path | None = None, name: str = ""
    ) -> None:
        """Report metrics (and rank 0's checkpoint folder, saved under `name`)."""

    def wait_for_checkpoints(self) -> None:
        """Return once every reported checkpoint is registered (fault-injection tests)."""


class RayTrainSession:
    """A Ray Train worker: `ray.train`'s context, checkpoints and reports."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def resume_checkpoint(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return checkpoint.path if checkpoint is not None else None

    def report(
        self, metrics: dict[str, Any], checkpoint: Path | None = None, name: str = ""
    ) -> None:
        import ray.train

        saved = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        # Every rank reports (a barrier); only rank 0 hands a checkpoint.
        ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=name)

    def wait_for_checkpoints(self) -> None:
        import ray.train

        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
        )


class InProcessSession:
    """The one worker of a run in this very process: a local one-worker run, or a Tune
    trial in its own (reused) actor, whose validations go to Tune (`to_tune`)."""

    def __init__(self, run_dir: str, *, use_gpu: bool, keep: int | None, to_tune: bool) -> None:
        self.rank, self.world_size = 0, 1
        # Ray sets CUDA_VISIBLE_DEVICES to a trial's GPU: it is device 0 here.
        self.device = torch.device("cuda:0" if use_gpu else "cpu")
        self.run_dir = run_dir
        self.keep = keep
        self.to_tune = to_tune

    def resume_checkpoint(self) -> str | None:
        # A run restarted calls `train` again, which finds the run's latest checkpoint itself
        # (`--resume_from_checkpoint latest`): nothing to hand back here.
        return None

    def report(
        self, metrics: dict[str, Any], checkpoint: Path | None = None, name: str = ""
    ) -> None:
        if checkpoint is not None:
            persist_checkpoint(checkpoint, storage.join(self.run_dir, name))
            prune_checkpoints(self.run_dir, self.keep)
        if self.to_tune and carries_validation(metrics):
            import ray.tune

            ray.tune.report(metrics)  # validations only: ASHA's rungs

    def wait_for_checkpoints(self) -> None:
        return None  # `report` has written them before it returned


def persist_checkpoint(local: Path, destination: str) -> None:
    """Copy a checkpoint folder to storage with `state.json` last: a folder without it is an
    interrupted copy, which `latest_checkpoint` never picks."""
    from bluepri.train.artifact import publish_folder

    publish_folder(local, destination, last=STATE)


def prune_checkpoints(run_dir: str, keep: int | None) -> None:
    """Keep the newest `keep` checkpoints (Ray Train's `num_to_keep`); None keeps all."""
    if keep is None:
        return
    names = sorted(n for n in storage.list_dirs(run_dir) if n.startswith(CHECKPOINT_PREFIX))
    for name in names[:-keep]:
        storage.delete_dir(storage.join(run_dir, name))
