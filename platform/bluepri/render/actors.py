"""The model stages of the render pipeline: Ray Data callable classes, one actor pool each.

`BaseStage` (SDXL base + the adapter LRU) turns plan rows into latents at
`high_noise_frac` (refining rows) or finished pixels; `RefinerStage` turns latents into
pixels. Both call THE generation path (`bluepri.generate.run_base` / `run_refiner`) on
groups of compatible rows (`batch_key`), so a row gets the bytes it would get alone, from
`bluepri generate` or from the service. A group whose models fail (an adapter that does
not load) is marked failed with its reason and the stream goes on. Latents travel between
the pools as safetensors bytes and pixels as `np.save` bytes: exact, self-describing, any
dtype (bf16 included), nothing unpickled.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from bluepri.config import ModelsConfig
from bluepri.errors import BluepriError, error_line
from bluepri.generate import GenerationRequest, ResolvedAdapter, batch_key


def stage_schema():
    """Plan columns + what the model stages add: one schema for every block between them."""
    import pyarrow as pa

    from bluepri.render.plan import plan_schema

    return pa.schema(
        [
            *plan_schema(),
            ("latents", pa.binary()),  # the base's output for the refiner (safetensors)
            ("pixels", pa.binary()),  # the finished image (np.save of uint8 HxWx3)
            ("error_code", pa.string()),
            ("error", pa.string()),
            ("seconds", pa.float64()),
            ("base_worker", pa.string()),
            ("refiner_worker", pa.string()),
        ]
    )


def pack_pixels(image: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(image.convert("RGB")), allow_pickle=False)
    return buffer.getvalue()


def unpack_pixels(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def pack_latents(latents: Any) -> bytes:
    from safetensors.torch import save

    return save({"latents": latents.detach().to("cpu").contiguous()})


def unpack_latents(data: bytes) -> Any:
    from safetensors.torch import load

    return load(bytes(data))["latents"]


def as_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    schema = stage_schema()
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema)


def request_of(row: dict[str, Any]) -> GenerationRequest:
    """The plan row's request, exactly as planned (the plan checked it already)."""
    return GenerationRequest(
        prompt=str(row["prompt"]),
        prompt_2=row["prompt_2"],
        negative_prompt=row["negative_prompt"],
        negative_prompt_2=row["negative_prompt_2"],
        width=int(row["width"]),
        height=int(row["height"]),
        num_inference_steps=int(row["steps"]),
        guidance_scale=float(row["guidance_scale"]),
        seed=int(row["seed"]),
        refine=bool(row["refine"]),
        high_noise_frac=float(row["high_noise_frac"]),
        adapter=row["adapter"],
        adapter_scale=float(row["adapter_scale"]),
    )


def groups(requests: list[GenerationRequest]) -> list[list[int]]:
    """Indices of compatible requests (`batch_key`), first-seen order."""
    found: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
        found.setdefault(batch_key(request), []).append(index)
    return list(found.values())


def actor_id() -> str:
    import ray

    return ray.get_runtime_context().get_actor_id() or "driver"


def fail_rows(rows: list[dict[str, Any]], indices: list[int], err: BaseException) -> None:
    for i in indices:
        rows[i]["error_code"] = "render_error"
        rows[i]["error"] = error_line(err)


class BaseStage:
    """SDXL base (+ adapters from the registry, verified, in a bounded LRU) -> latents or
    pixels. One per actor of the base pool."""

    def __init__(self, models: dict[str, Any], registry: str, max_adapters: int):
        from bluepri.generate import load_pipelines

        config = ModelsConfig.model_validate(models)
        self.pipes = load_pipelines(config.model_copy(update={"refiner": None}), max_adapters)
        self.registry_root = registry
        self._registry = None
        self.adapters: dict[str, ResolvedAdapter] = {}
        self.worker = actor_id()

    def adapter(self, label: str | None, sha256: str | None) -> ResolvedAdapter | None:
        """The pinned adapter, verified by the registry on this node, once per actor."""
        if label is None:
            return None
        if label not in self.adapters:
            from bluepri.generate import resolve_adapter
            from bluepri.registry import AdapterRegistry

            if self._registry is None:
                self._registry = AdapterRegistry(self.registry_root)
            resolved = resolve_adapter(label, self._registry)
            if resolved.sha256 != sha256:
                raise BluepriError(
                    f"adapter {label} has sha256 {resolved.sha256}, the job pinned {sha256}"
                )
            self.adapters[label] = resolved
        return self.adapters[label]

    def __call__(self, batch: Any) -> Any:
        """A pyarrow table of plan rows -> the same rows with latents or pixels."""
        from bluepri.generate import run_base

        rows = batch.to_pylist()
        requests = [request_of(row) for row in rows]
        for indices in groups(requests):
            group = [requests[i] for i in indices]
            first = rows[indices[0]]
            started = time.perf_counter()
            try:
                adapter = self.adapter(group[0].adapter, first["adapter_sha256"])
                output = run_base(self.pipes, group, adapter)
            except Exception as err:  # that group's rows fail with the reason; the job goes on
                fail_rows(rows, indices, err)
                continue
            share = (time.perf_counter() - started) / len(group)
            for n, i in enumerate(indices):
                rows[i]["base_worker"] = self.worker
                rows[i]["seconds"] = share
                if group[0].refine:
                    rows[i]["latents"] = pack_latents(output[n : n + 1])
                else:
                    rows[i]["pixels"] = pack_pixels(output[n])
        return as_table(rows)


class RefinerStage:
    """SDXL refiner: the base's latents -> pixels (`denoising_start`), batched by key.
    Rows that failed or do not refine pass through."""

    def __init__(self, models: dict[str, Any]):
        from bluepri.generate import Pipelines, load_pipelines

        config = ModelsConfig.model_validate(models)
        loaded = load_pipelines(config, max_adapters=1)
        # The refiner keeps the base's VAE and text encoder 2, which it shares.
        self.pipes = Pipelines(base=None, refiner=loaded.refiner, models=config)
        del loaded
        self.worker = actor_id()

    def __call__(self, batch: Any) -> Any:
        """The base's rows -> pixels for the refining ones (latents dropped)."""
        import torch

        from bluepri.generate import run_refiner

        rows = batch.to_pylist()
        todo = [i for i, row in enumerate(rows) if row.get("latents") is not None]
        requests = [request_of(rows[i]) for i in todo]
        for members in groups(requests):
            indices = [todo[m] for m in members]
            group = [requests[m] for m in members]
            started = time.perf_counter()
            try:
                latents = torch.cat([unpack_latents(rows[i]["latents"]) for i in indices])
                images = run_refiner(self.pipes, latents, group)
            except Exception as err:
                fail_rows(rows, indices, err)
                continue
            share = (time.perf_counter() - started) / len(group)
            for image, i in zip(images, indices, strict=True):
                rows[i]["pixels"] = pack_pixels(image)
                rows[i]["refiner_worker"] = self.worker
                rows[i]["seconds"] = float(rows[i]["seconds"] or 0.0) + share
        for row in rows:
            row["latents"] = None  # done with: keep the blocks small
        return as_table(rows)
