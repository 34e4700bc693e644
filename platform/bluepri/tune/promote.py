"""Promotion: the search's best adapter becomes champion only if it really is better.

"Better" is decided now, on the current cache's validation split, by re-measuring BOTH the
candidate and the current champion with the same fixed-noise held-out loss; numbers from an
old run (another cache, another day) are never compared. The decision, with both numbers,
is recorded in the registry's history either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bluepri.artifacts import read_adapter_info
from bluepri.config import SearchConfig, TrainConfig
from bluepri.eval import heldout_loss
from bluepri.registry import AdapterRegistry, default_root


def promote_best(
    config: SearchConfig, result: Any, base: TrainConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """Put the best trial's adapter in the registry and promote it if it beats the champion."""
    registry = AdapterRegistry(config.registry or default_root())
    record = registry.put(result.best_adapter, config.adapter_name)
    measure = measurer(result.cache_uri, base)
    candidate_loss = measure(registry.get(config.adapter_name, record.version))
    champion = registry.champion(config.adapter_name)
    champion_loss = None
    if champion is not None and champion != record.version:
        champion_loss = measure(registry.get(config.adapter_name, champion))
    decision = registry.promote_if_better(
        config.adapter_name,
        record.version,
        candidate_loss,
        champion_loss,
        reason=f"search {config.experiment_name}, trial {result.best_trial}",
    )
    log(
        f"{decision.action}: {config.adapter_name}/{record.version} val_loss {candidate_loss:.5f}"
        + (f" vs champion {champion} {champion_loss:.5f}" if champion_loss is not None else "")
    )
    return {
        "decision": decision.action,
        "reason": decision.reason,
        "candidate": record.version,
        "candidate_val_loss": candidate_loss,
        "champion_before": champion,
        "champion_val_loss": champion_loss,
        "champion_after": registry.champion(config.adapter_name),
        "registry": str(registry.root),
    }


def measurer(cache_uri: str, base: TrainConfig) -> Callable[[Any], float]:
    """Held-out loss of an adapter folder on this cache, with the search's base model."""

    def measure(adapter: Any) -> float:
        info = read_adapter_info(str(adapter))
        return heldout_loss(
            cache_uri,
            base.pretrained_model_name_or_path,
            adapter,
            prediction_type=info.prediction_type or base.prediction_type,
            vae_ref=base.pretrained_vae_model_name_or_path,
        )

    return measure
