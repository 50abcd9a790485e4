"""How the table modules store trajectories in their JSON files."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def rows(x: Iterable[np.ndarray], dtype: str) -> list[list[float]]:
    """Snapshot rows as JSON lists; float32 values as the shortest repr that reads back exactly."""
    if dtype == "float32":
        return [[float(str(v)) for v in np.asarray(row).astype(np.float32)] for row in x]
    return [np.asarray(row).tolist() for row in x]
