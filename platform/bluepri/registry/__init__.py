"""Adapter registry: versioned, checksummed LoRA artifacts, a champion per name, exports.

`AdapterRegistry(root)` over a local folder or a pyarrow filesystem URI, safe for many
concurrent writers and readers; see `store.py` for the layout and the concurrency design,
`atomic.py` for exclusive create, `history.py` for events and the champion's replay,
`cache.py` for local copies of remote versions, and `ids.py` / `checks.py` for what is refused.
"""

from bluepri.registry.history import Problem, RegistryWarning
from bluepri.registry.store import AdapterRecord, AdapterRegistry, Decision, Listing, default_root

__all__ = [
    "AdapterRecord",
    "AdapterRegistry",
    "Decision",
    "Listing",
    "Problem",
    "RegistryWarning",
    "default_root",
]
