"""THE generation path: SDXL base -> refiner latent handoff, both prompts, seeds, adapters.

The demo, training validation, Ray Serve, catalogue rendering and evaluation all use it,
so one request and seed give the same pixels everywhere: batched or not, in one process or
split across two (`stages.py` says how). `generate` makes one image; serve and render call
the batch stages `run_base` and `run_refiner` themselves.
"""

from bluepri.generate.adapters import (
    AdapterCache,
    ResolvedAdapter,
    is_adapter_reference,
    parse_adapter_reference,
    resolve_adapter,
)
from bluepri.generate.invariance import batch_invariant
from bluepri.generate.request import GenerationRequest, batch_key
from bluepri.generate.stages import (
    Generated,
    Pipelines,
    generate,
    load_pipelines,
    refiner_seed,
    run_base,
    run_refiner,
)

__all__ = [
    "AdapterCache",
    "Generated",
    "GenerationRequest",
    "Pipelines",
    "ResolvedAdapter",
    "batch_invariant",
    "batch_key",
    "generate",
    "is_adapter_reference",
    "load_pipelines",
    "parse_adapter_reference",
    "refiner_seed",
    "resolve_adapter",
    "run_base",
    "run_refiner",
]
