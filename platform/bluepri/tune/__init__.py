"""Tune: Ray Tune + Optuna + ASHA over training runs on one cache, and promotion."""

from bluepri.tune.search import TuneResult, tune

__all__ = ["TuneResult", "tune"]
