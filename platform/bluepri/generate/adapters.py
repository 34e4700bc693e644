"""Adapters for generation: references resolved to verified folders, and a bounded LRU of
adapters loaded into one pipeline.

`resolve_adapter` turns a request's reference into a `ResolvedAdapter` (folder, version,
sha256): registry references go through `AdapterRegistry.get`, which verifies the weights'
sha256 before handing the folder out. `AdapterCache` loads adapters into the base pipeline
with `load_lora_weights` under a name derived from the weights' sha256 (two references to
the same weights share one load), and really unloads the least recently used one with
`delete_adapters` when it holds `capacity` of them, so memory stays bounded however many
adapters are asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bluepri.artifacts import WEIGHTS_NAME, has_adapter, read_adapter_info
from bluepri.errors import BluepriError

CHAMPION = "champion"
# name[@version]: the registry's id rule on both sides, so a reference is never a path.
ADAPTER_REFERENCE = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})(?:@(?P<version>[A-Za-z0-9][A-Za-z0-9._-]{0,99}))?"
)


@dataclass(frozen=True)
class ResolvedAdapter:
    """A reference made concrete: the verified folder and what exactly it holds."""

    reference: str
    folder: str
    sha256: str
    name: str | None = None  # registry name and version; None for a plain folder
    version: str | None = None

    @property
    def load_name(self) -> str:
        """The peft adapter name: one per weights file, whatever referenced it."""
        return "a" + self.sha256[:16]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.name else self.reference


def parse_adapter_reference(reference: str) -> tuple[str, str]:
    """(name, version) of `name`, `name@v0003` or `name@champion`; one line if malformed."""
    match = ADAPTER_REFERENCE.fullmatch(reference)
    if match is None or ".." in reference:
        raise BluepriError(
            f"malformed adapter reference {reference!r}: use name, name@version or name@champion"
        )
    return match["name"], match["version"] or CHAMPION


def is_adapter_reference(value: str) -> bool:
    return ADAPTER_REFERENCE.fullmatch(value) is not None and ".." not in value


def resolve_adapter(reference: str | None, registry: Any = None) -> ResolvedAdapter | None:
    """None, a registry reference (with a registry), or a local adapter folder."""
    if reference is None:
        return None
    if registry is not None and is_adapter_reference(reference):
        name, version = parse_adapter_reference(reference)
        version = registry.resolve_version(name, version)
        folder = registry.get(name, version)  # verifies the weights' sha256
        sha256 = read_adapter_info(str(folder)).weights.sha256
        return ResolvedAdapter(reference, str(folder), sha256, name, version)
    return adapter_folder(reference)


def adapter_folder(reference: str) -> ResolvedAdapter:
    """A local folder holding diffusers-format LoRA weights (adapter.json optional)."""
    folder = Path(reference).expanduser().resolve()
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise BluepriError(f"adapter {reference!r} has no {WEIGHTS_NAME}")
    if has_adapter(str(folder)):
        sha256 = read_adapter_info(str(folder)).weights.sha256
    else:
        sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    return ResolvedAdapter(reference, str(folder), sha256)


class AdapterCache:
    """At most `capacity` adapters loaded into `pipe`, least recently used evicted first."""

    def __init__(self, pipe: Any, capacity: int = 8):
        if capacity < 1:
            raise BluepriError("an adapter cache holds at least one adapter")
        self.pipe = pipe
        self.capacity = capacity
        self.loaded: OrderedDict[str, ResolvedAdapter] = OrderedDict()
        self.loads = self.evictions = self.hits = 0

    def activate(self, adapter: ResolvedAdapter | None, scale: float = 1.0) -> None:
        """Make `adapter` (at `scale`) the only active one; None runs the base model alone.

        With nothing ever loaded, None leaves the pipeline as it is (training validation
        hands in a pipeline whose UNet carries the LoRA being trained)."""
        if adapter is None:
            if self.loaded:
                self.pipe.disable_lora()
            return
        name = adapter.load_name
        if name in self.loaded:
            self.loaded.move_to_end(name)
            self.hits += 1
        else:
            self.load(adapter)
        self.pipe.enable_lora()
        self.pipe.set_adapters([name], adapter_weights=[scale])

    def load(self, adapter: ResolvedAdapter) -> None:
        while len(self.loaded) >= self.capacity:
            evicted, _ = self.loaded.popitem(last=False)
            self.pipe.delete_adapters(evicted)
            self.evictions += 1
        try:
            self.pipe.load_lora_weights(adapter.folder, adapter_name=adapter.load_name)
        except Exception as err:
            self.discard(adapter.load_name)
            why = f"{type(err).__name__}: {err}".splitlines()[0]
            raise BluepriError(f"adapter {adapter.label} failed to load ({why})") from None
        # diffusers skips keys it does not recognise with a warning: weights for another
        # architecture "load" as nothing at all, which must not pass for an adapter.
        present = {n for names in self.pipe.get_list_adapters().values() for n in names}
        if adapter.load_name not in present:
            self.discard(adapter.load_name)
            raise BluepriError(
                f"adapter {adapter.label} failed to load (no LoRA weights this base recognises)"
            )
        self.loaded[adapter.load_name] = adapter
        self.loads += 1

    def discard(self, name: str) -> None:
        """Remove whatever a failed load left behind, so the pipeline stays usable."""
        # Nothing loaded under that name raises: then there is nothing to remove.
        with contextlib.suppress(Exception):
            self.pipe.delete_adapters(name)
