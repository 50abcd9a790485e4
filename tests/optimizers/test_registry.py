"""One registry: the README's table, the tests and the benchmarks read `O.optimizers()`."""

from __future__ import annotations

import doctest

import pytest

from benchmarks._optimizers import SPECS
from cadence import optimizers as O

from . import registry_table
from .examples import MATRIX_OPTIMIZERS, OPTIMIZERS

LIBRARY = registry_table.library()


def test_the_registry_holds_the_library_optimizers():
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad", "lion"} <= set(LIBRARY)
    assert all(issubclass(cls, O.Optimizer) for cls in LIBRARY.values())


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_every_optimizer_names_its_reference_and_shows_an_example(name):
    cls = LIBRARY[name]
    assert cls.reference, f"{name} does not say what it matches"
    examples = doctest.DocTestParser().get_examples(cls.__doc__ or "")
    assert examples, f"{name}'s docstring has no runnable example"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_every_optimizer_has_test_cases(name):
    # The invariant tests run over `examples.OPTIMIZERS` (2-D-only ones, Muon,
    # over `MATRIX_OPTIMIZERS`): adding an optimizer to the library without
    # adding its cases there fails here.
    examples = OPTIMIZERS | MATRIX_OPTIMIZERS
    assert any(type(opt) is LIBRARY[name] for opt in examples.values())


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_every_optimizer_is_benchmarked(name):
    assert name in SPECS


def test_the_readme_table_is_the_registry():
    assert registry_table.current() == registry_table.render(), (
        "README.md's optimizer table is stale: run python -m tests.optimizers.registry_table"
    )


def test_a_type_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already exists"):

        @O.optimizer_type
        class adamw(O.Optimizer):  # noqa: N801 (the name clash is the point)
            per_leaf = ()

            def kernel(self, p, g, bufs, s, keep):
                return -g, bufs
