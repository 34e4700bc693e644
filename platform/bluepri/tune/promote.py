"""Promotion: the search's best adapter becomes champion only if it really is better; then,
when the search asks for it, the champion's evaluation against the base, night after night.

"Better" is decided now, on the current cache's validation split, by re-measuring BOTH the
candidate and the current champion with the same fixed-noise held-out loss; numbers from an
old run (another cache, another day) are never compared. The decision, with both numbers,
is recorded in the registry's history either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bluepri import storage
from bluepri.config import EvalConfig, SearchConfig, TrainConfig, build_config
from bluepri.eval import heldout_losses
from bluepri.registry import AdapterRegistry, default_root


def promote_best(
    config: SearchConfig, result: Any, base: TrainConfig, log: Callable[[str], None]
) -> dict[str, Any]:
    """Put the best trial's adapter in the registry and promote it if it beats the champion."""
    registry = AdapterRegistry(config.registry or default_root())
    record = registry.put(result.best_adapter, config.adapter_name)
    champion = registry.champion(config.adapter_name)
    folders = [registry.get(config.adapter_name, record.version)]
    if champion is not None and champion != record.version:
        folders.append(registry.get(config.adapter_name, champion))
    # Both on one loaded base, with the same fixed noise: numbers that compare.
    losses = heldout_losses(
        result.cache_uri,
        base.pretrained_model_name_or_path,
        folders,
        prediction_type=base.prediction_type,
        vae_ref=base.pretrained_vae_model_name_or_path,
    )
    candidate_loss = losses[0]
    champion_loss = losses[1] if len(losses) > 1 else None
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


EVAL_HISTORY = "eval-history.parquet"  # under the search's storage path: one per nightly job


def champion_eval_config(
    config: SearchConfig, base: TrainConfig, cache_uri: str, experiment_path: str
) -> EvalConfig:
    """The evaluation of the champion after a search: the search's base model, cache and
    registry; its own folder and the night's name in the history."""
    settings = dict(config.evaluation or {})
    models = {
        "base": base.pretrained_model_name_or_path,
        "vae": base.pretrained_vae_model_name_or_path,
        "refiner": None,  # the search trains the base; a refiner is the evaluation's choice
        **settings.pop("models", {}),
    }
    values = {
        "history": storage.join(config.storage_path, EVAL_HISTORY),
        **settings,
        "out": storage.join(experiment_path, "eval"),
        "cache": cache_uri,
        "adapters": [f"{config.adapter_name}@champion"],
        "registry": str(AdapterRegistry(config.registry or default_root()).root),
        "models": models,
        "label": config.experiment_name,
        "search": experiment_path,
    }
    return build_config(EvalConfig, values)


def evaluate_champion(
    config: SearchConfig, base: TrainConfig, cache_uri: str, experiment_path: str, log
) -> dict[str, Any]:
    """Evaluate the champion against the base (see `champion_eval_config`); the report, the
    history and the scores, for the search's result."""
    from bluepri.eval import evaluate

    result = evaluate(champion_eval_config(config, base, cache_uri, experiment_path), log=log)
    return {
        "report": result.report,
        "eval_json": storage.join(result.out, "eval.json"),
        "history": result.history,
        "runs": [
            {"label": r.label, "refine": r.refine, **r.scores.model_dump()} for r in result.runs
        ],
        "notes": result.notes,
    }
