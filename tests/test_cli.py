"""`python -m cadence`: plot and demo."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cadence import schedules as S
from cadence.__main__ import main


@pytest.fixture(autouse=True)
def _agg(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")


def _png(path) -> bytes:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


@pytest.mark.parametrize("name", S.NAMES)
def test_plot_every_registered_name(tmp_path, name, capsys):
    kw = {
        "polynomial": ["--kw", "lr_end=1e-6", "--kw", "power=2"],
        "cosine_with_min_lr": ["--kw", "min_lr_rate=0.1"],
        "warmup_stable_decay": ["--kw", "num_decay_steps=30"],
        "cosine_warmup_with_min_lr": ["--kw", "min_lr_rate=0.1"],
    }.get(name, [])
    out = tmp_path / f"{name}.png"
    assert main(["plot", name, "--steps", "120", "--warmup", "10", "-o", str(out), *kw]) == 0
    _png(out)
    assert "wrote" in capsys.readouterr().out


def test_plot_covers_every_schedule_type(tmp_path):
    from cadence.__main__ import _names
    from cadence.schedules._base import REGISTRY

    # Every type but the two that only exist as expressions (arithmetic, from_fn).
    assert set(REGISTRY) - set(_names()) == {"arithmetic", "from_fn"}
    for name in _names():
        out = tmp_path / f"{name}.png"
        assert main(["plot", name, "--steps", "80", "--warmup", "5", "-o", str(out)]) == 0, name
        _png(out)
    assert (
        main(["plot", "one_cycle", "--kw", "three_phase=true", "-o", str(tmp_path / "x.png")]) == 0
    )


def test_plot_a_config_file_and_inline_json(tmp_path):
    s = S.restarts(S.cosine(1.0, 20, end=0.1), 20, mult=2.0)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(S.to_config(s)))
    assert main(["plot", str(path), "--steps", "100", "-o", str(tmp_path / "a.png")]) == 0
    inline = json.dumps(S.to_config(S.linear(1.0, 0.0, 50)))
    assert main(["plot", inline, "--steps", "60", "-o", str(tmp_path / "b.png")]) == 0
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")


def test_plot_title_is_the_schedule_repr(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    s = S.get("cosine", 1e-3, 10, 100)
    ax = S.plot(s, 100)
    assert ax.get_title().replace("\n", "") == repr(s)
    assert ax.get_xlabel() == "step"
    xs, ys = ax.lines[0].get_data()
    assert len(xs) == 101 and ys[10] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plot", "nonsense"], "neither a schedule name"),
        (["plot", "cosine", "--kw", "num_cycles"], "KEY=VALUE"),
        (["plot", "cosine", "--kw", "bogus=1"], "unknown keyword"),
        (["plot", '{"type": "nope"}'], "is not a schedule type"),
        (["plot", "missing.json"], "No such file"),
    ],
)
def test_plot_errors_are_reported_not_raised(tmp_path, argv, message, capsys):
    assert main([*argv, "-o", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_names_and_examples():
    result = subprocess.run(
        [sys.executable, "-m", "cadence", "plot", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warmup_stable_decay" in result.stdout and "examples:" in result.stdout


def test_demo_trains_checkpoints_resumes_and_plots(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cadence", "demo", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "checkpoint written" in out and "resumed from step 300" in out
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    assert accuracy >= 0.95
    _png(tmp_path / "demo.png")
    # Checkpoints of the throwaway run are not left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.png"]


def test_demo_rejects_too_few_steps(capsys):
    assert main(["demo", "--steps", "3", "--no-plot"]) == 2
    assert "--steps must be >= 10" in capsys.readouterr().err


def run(argv) -> int:
    """`main`'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_inline_json_of_any_length(tmp_path, capsys):
    s = S.join(
        [S.warmup(S.cosine(1e-3, 900, end=1e-5), 100), S.linear(1e-5, 0.0, 500), S.constant(0.0)],
        [1000, 1500],
    )
    inline = json.dumps(S.to_config(s), indent=2)
    assert len(inline) > 255  # longer than a file name may be
    assert main(["plot", inline, "--steps", "1600", "-o", str(tmp_path / "j.png")]) == 0
    _png(tmp_path / "j.png")
    assert f"wrote {tmp_path / 'j.png'}: {s!r}" in capsys.readouterr().out


def test_output_without_suffix_is_written_and_reported_as_png(tmp_path, capsys):
    assert main(["plot", "cosine", "--steps", "50", "-o", str(tmp_path / "noext")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["noext.png"]
    _png(tmp_path / "noext.png")
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'noext.png'}: ")


DEEP = (
    '{"type": "warmup", "steps": 1, "s": ' * 3000
    + '{"type": "constant", "value": 1.0}'
    + "}" * 3000
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plot", "deep.json"], "deep.json nests too deeply"),
        (["plot", DEEP], "the inline JSON nests too deeply"),
        (["plot", '{"a": ' * 150 + "1" + "}" * 150], "nests 150 levels deep; at most 100"),
        (["plot", "cosine", "--kw", "num_cycles=" + "[" * 5000 + "]" * 5000], "--kw num_cycles"),
        (["plot", "cosine", "--steps", str(10**13)], "--steps: must be between 1 and 10000000"),
        (["plot", "cosine", "--steps", str(2**31)], "--steps: must be between 1 and 10000000"),
        (["plot", "cosine", "--steps", "2**31"], "--steps: expected an integer, got '2**31'"),
        (["plot", "cosine", "--total", str(2**31)], "--total: must be between 1 and 2147483647"),
        (["plot", "cosine", "--warmup", "-1"], "--warmup: must be between 0 and"),
        (["plot", "exponential", "--kw", "rate=1e30"], "is inf at step 2: nothing to plot"),
        (["plot", "piecewise", "--kw", "values=[1e38, 1e39, 1]"], "values must be finite"),
        (["plot", "cosine", "--peak", "inf"], "--peak: must be a finite number, got inf"),
        (["plot", "exponential", "--peak", "inf"], "--peak: must be a finite number"),
        (["plot", "cosine", "--peak", "nan"], "--peak: must be a finite number, got nan"),
        (["plot", "cosine", "-o", "x.xyz"], "cannot write .xyz files; use one of"),
        (["plot", "cosine", "-o", "missing/x.png"], "there is no directory missing"),
        (["demo", "--steps", str(10**13)], "--steps: must be between 1 and 2147483647"),
    ],
)
def test_every_bad_argument_is_one_line_and_exit_2(tmp_path, monkeypatch, argv, message, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deep.json").write_text(DEEP)
    if argv[0] == "plot" and "-o" not in argv:
        argv = [*argv, "-o", "x.png"]
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err[-2000:]
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "argv",
    [["wsd", "--kw", "decay=1e30"], ["step_decay", "--kw", "every=1e30"]],
    ids=["wsd", "step_decay"],
)
def test_step_counts_past_int32_plot(tmp_path, argv):
    # A count of any size is a valid schedule (token-counted runs pass 2**31).
    out = tmp_path / "big.png"
    assert main(["plot", *argv, "-o", str(out)]) == 0
    _png(out)
