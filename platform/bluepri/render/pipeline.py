"""The Ray Data pipeline: plan files -> Base pool -> Refiner pool -> writer -> the driver.

    read_datasource(plan)        tasks        one block per plan file (rows of one batch
                                              key), key by key
    map_batches(BaseStage)       actor pool   `base_actors` actors, `base_batch_size` rows
    map_batches(RefinerStage)    actor pool   `refiner_actors` actors, its own batch size
    map_batches(write_images)    tasks        PNG + text chunks, atomic file, sha256
    iter_batches on the driver                one manifest part per finished block

Ray Data streams: blocks flow through the stages as they are ready, with backpressure,
so memory is bounded by the blocks in flight, not by the catalogue. A plan file stays one
block from the read to the driver (`PlanDatasource`: one read task per file; Ray's
parquet reader would pack small files into one task, and then one block would be the
whole catalogue), which is what lets the manifest record a killed run block by block.
Model actors take a fraction of the CPUs (`pool_resources`) so that read and write tasks
always find one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bluepri.config import RenderConfig
from bluepri.render.plan import PlanFile


def plan_datasource(files: list[PlanFile]):
    """A Ray Data datasource with one read task, and so one block, per plan file."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    def reader(uri: str):
        def read() -> list:
            import io

            import pyarrow.parquet as pq

            from bluepri import storage

            return [pq.read_table(io.BytesIO(storage.read_bytes(uri)))]

        return read

    class PlanDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> None:
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [
                ReadTask(
                    reader(f.uri),
                    BlockMetadata(
                        num_rows=f.rows, size_bytes=None, exec_stats=None, input_files=[f.uri]
                    ),
                )
                for f in files
            ]

    return PlanDatasource()


@dataclass(frozen=True)
class PoolResources:
    actor_cpus: float
    task_cpus: float
    actor_gpus: float


def pool_resources(config: RenderConfig) -> PoolResources:
    """CPUs (and GPUs) per model actor and per read/write task that fit the cluster together.

    Ray Data holds the actors for the whole stream; if they took every CPU, the tasks that
    feed and drain them could never be scheduled and the stream would stall. Model actors
    share half of the CPUs (at most one each); the read and write tasks, light next to a
    diffusion model, take a quarter CPU each (an eighth of a small cluster), so several run
    in the other half.
    """
    import ray

    resources = ray.cluster_resources()
    total = resources.get("CPU", 1.0)
    actors = config.base_actors + (config.refiner_actors if config.models.refiner else 0)
    actor_cpus = config.actor_cpus or min(1.0, total / 2 / actors)
    task_cpus = config.task_cpus or min(0.25, total / 8)
    gpus = config.actor_gpus
    if gpus is None:
        on_gpu = config.models.device.startswith("cuda")
        gpus = min(1.0, resources.get("GPU", 0.0) / actors) if on_gpu else 0.0
    return PoolResources(actor_cpus, task_cpus, gpus)


def model_args(resources: PoolResources) -> dict[str, float]:
    args = {"num_cpus": resources.actor_cpus}
    if resources.actor_gpus:
        args["num_gpus"] = resources.actor_gpus
    return args


def build_dataset(config: RenderConfig, files: list[PlanFile], out: str, registry: str):
    """The lazy Dataset of manifest records for the rows in `files`."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from bluepri.render.actors import BaseStage, RefinerStage
    from bluepri.render.writer import write_images

    resources = pool_resources(config)
    models = config.models.model_dump()
    ds = ray.data.read_datasource(
        plan_datasource(files), override_num_blocks=len(files), num_cpus=resources.task_cpus
    )
    ds = ds.map_batches(
        BaseStage,
        fn_constructor_kwargs={
            "models": models,
            "registry": registry,
            "max_adapters": config.max_adapters_per_actor,
        },
        batch_size=config.base_batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=config.base_actors),
        **model_args(resources),
    )
    if config.models.refiner:
        ds = ds.map_batches(
            RefinerStage,
            fn_constructor_kwargs={"models": models},
            batch_size=config.refiner_batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=config.refiner_actors),
            **model_args(resources),
        )
    return ds.map_batches(
        write_images(out), batch_size=None, batch_format="pyarrow", num_cpus=resources.task_cpus
    )


@contextlib.contextmanager
def quiet_data_context() -> Iterator[None]:
    """Our progress line instead of Ray Data's bars, for this run only."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved


def run_pipeline(
    config: RenderConfig,
    files: list[PlanFile],
    out: str,
    registry: str,
    on_block: Callable[[Any], None],
) -> None:
    """Stream every planned row through the stages; `on_block` gets each finished block
    (a pyarrow table of manifest records) as it arrives."""
    if not files:
        return
    with quiet_data_context():
        ds = build_dataset(config, files, out, registry)
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            on_block(block)
