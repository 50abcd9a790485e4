"""The LR range test: one compiled step, divergence stop, a sensible suggestion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cadence import lr_finder
from cadence import optimizers as O


def regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    w = rng.normal(size=(8,)).astype(np.float32)
    y = x @ w + 0.1 * rng.normal(size=256).astype(np.float32)
    batches = [
        (jnp.asarray(x[i : i + 32]), jnp.asarray(y[i : i + 32])) for i in range(0, 256, 32)
    ] * 40

    def loss_fn(params, batch):
        xb, yb = batch
        return jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)

    return loss_fn, {"w": jnp.zeros(8), "b": jnp.zeros(())}, batches


def test_sweep_is_exponential_and_stops_at_divergence():
    loss_fn, params, batches = regression()
    r = lr_finder.lr_range_test(loss_fn, params, batches, O.sgd, 1e-5, 100.0, 200)
    assert r.diverged and len(r.lrs) < 200
    expected = 1e-5 * (100.0 / 1e-5) ** (np.arange(len(r.lrs)) / 199)
    np.testing.assert_allclose(r.lrs, expected, rtol=1e-5)
    assert len(r.losses) == len(r.smoothed) == len(r.lrs)
    # Least squares with SGD diverges above 2 / (largest Hessian eigenvalue).
    hessian = 2 * np.mean([np.asarray(b[0]).T @ np.asarray(b[0]) / 32 for b in batches[:8]], 0)
    critical = 2 / np.linalg.eigvalsh(hessian).max()
    assert r.lrs[-1] > critical
    assert critical / 100 < r.suggested_lr < critical


def test_one_compilation_for_the_whole_sweep():
    loss_fn, params, batches = regression()
    traces = []

    def counting_loss(p, b):
        traces.append(None)
        return loss_fn(p, b)

    r = lr_finder.lr_range_test(counting_loss, params, batches, O.adam, 1e-6, 1.0, 50)
    assert len(r.lrs) > 10
    # One trace to check the loss is a scalar, one to compile the step: not one per lr.
    assert len(traces) == 2


def test_works_with_optax_optimizers_and_short_data():
    loss_fn, params, batches = regression()
    r = lr_finder.lr_range_test(loss_fn, params, batches[:30], optax.adam, 1e-6, 1e-2, 100)
    assert len(r.lrs) == 30 and not r.diverged
    assert np.isfinite(r.suggested_lr)


def test_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    loss_fn, params, batches = regression()
    r = lr_finder.lr_range_test(loss_fn, params, batches, O.sgd, 1e-5, 100.0, 120)
    ax = lr_finder.plot(r)
    assert ax.get_xscale() == "log" and "divergence" in ax.get_title()
    ax.figure.savefig(tmp_path / "lr.png")


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"start": 0.0}, ValueError, "start must be finite and > 0"),
        ({"end": float("inf")}, ValueError, "end must be finite"),
        ({"start": 1.0, "end": 0.5}, ValueError, "end must be > start"),
        ({"num": 1}, ValueError, "num must be an int >= 2"),
        ({"smoothing": 1.0}, ValueError, "smoothing"),
        ({"diverge_factor": 1.0}, ValueError, "diverge_factor"),
        ({"start": "1e-3"}, TypeError, "start must be a number"),
    ],
)
def test_bad_arguments(kw, error, message):
    loss_fn, params, batches = regression()
    with pytest.raises(error, match=message):
        lr_finder.lr_range_test(loss_fn, params, batches, O.sgd, **kw)


def test_non_scalar_loss_is_refused():
    _, params, batches = regression()
    with pytest.raises(ValueError, match="scalar"):
        lr_finder.lr_range_test(
            lambda p, b: (b[0] @ p["w"]) ** 2, params, batches, O.sgd, 1e-3, 1.0, 5
        )


def test_params_are_not_modified():
    loss_fn, params, batches = regression()
    before = jax.tree.map(np.asarray, params)
    lr_finder.lr_range_test(loss_fn, params, batches, O.sgd, 1e-3, 1.0, 10)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, params))
