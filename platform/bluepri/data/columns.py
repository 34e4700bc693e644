"""Building Ray Data numpy batch columns from per-row values (ragged-aware)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def object_column(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array, built element-wise so numpy never tries to nest the values."""
    values = list(values)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def stack_column(values: list[Any]) -> np.ndarray:
    """Arrays stacked when their shapes agree, else an object array (ragged aspect buckets);
    strings as an object array; other scalars as a plain numpy array."""
    if not values:
        return np.empty((0,), dtype=np.float32)
    if isinstance(values[0], np.ndarray):
        if len({v.shape for v in values}) == 1:
            return np.stack(values)
        return object_column(values)
    if isinstance(values[0], str):
        return object_column(values)
    return np.asarray(values)
