"""Suite-wide settings: warnings are errors (pyproject), rank promotion raises."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64() -> Iterator[None]:
    """Run the test with `jax_enable_x64` on, restoring the previous setting."""
    with jax.enable_x64(True):
        yield
