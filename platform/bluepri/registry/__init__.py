"""Adapter registry: versioned, checksummed LoRA artifacts, a champion per name, exports.

`AdapterRegistry(root)` over a local folder or a pyarrow filesystem URI; see `store.py` for
the layout and `ids.py` / `checks.py` for what is refused.
"""

from bluepri.registry.store import AdapterRecord, AdapterRegistry, Decision, default_root

__all__ = ["AdapterRecord", "AdapterRegistry", "Decision", "default_root"]
