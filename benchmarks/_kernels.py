"""Kernels a compiled step launches, read from its HLO, and compiling under a time limit.

A compiled XLA program is a tree of computations. Every fusion, custom call
(cuBLAS, cadence's CPU kernels, ...) and copy in the computations that run on
the host's schedule is one kernel launch; the bodies of fusions and reductions
are code inside such a kernel and are not counted. Computations reached through
``call`` (XLA's GPU backend outlines runs of kernels into ``command_buffer``
calls, replayed as one CUDA graph), ``while`` and ``conditional`` run on that
schedule too, so their kernels count. Counts are static: a kernel inside a loop
counts once.
"""

from __future__ import annotations

import re
import threading
import time
import warnings
from collections import Counter
from typing import Any

# `name (params) -> result {` opens a computation; `ENTRY` marks the program's.
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{\s*$")
# `%name = type op(operands), attributes`; XLA may print names without `%`.
_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.+?) ([a-z][\w\-]*)\((.*)$")
# Attributes naming computations run on the host's schedule (not inside a kernel).
_SCHEDULED = re.compile(
    r"(?:body|condition|true_computation|false_computation)=%?([\w.\-]+)"
    r"|branch_computations=\{([^}]*)\}"
)
_TO_APPLY = re.compile(r"to_apply=%?([\w.\-]+)")
# Instructions that launch nothing: bookkeeping, aliasing and control flow.
_NO_KERNEL = frozenset(
    {
        "parameter",
        "constant",
        "tuple",
        "get-tuple-element",
        "bitcast",
        "call",
        "while",
        "conditional",
        "after-all",
        "add-dependency",
        "opt-barrier",
        "partition-id",
        "replica-id",
        "domain",
    }
)


def _computations(text: str) -> tuple[dict[str, list[str]], str | None]:
    """Each computation's instruction lines, and the entry computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            comps[current] = []
            if m.group(1):
                entry = current
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def count(text: str) -> dict[str, Any]:
    """Kernel launches in compiled HLO text (``compiled.as_text()``).

    Returns the total (``kernels``), the fusions, custom calls and copies among
    them, any other launching opcodes (``other``), and how many command buffers
    (CUDA graphs) group them.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> text = jax.jit(lambda a, b: (a * 2, b + a)).lower(jnp.ones(8), jnp.ones(8))
        >>> count(text.compile().as_text())["kernels"] >= 1
        True
    """
    comps, entry = _computations(text)
    if entry is None:
        raise ValueError("count: no ENTRY computation in the HLO text")
    ops: Counter[str] = Counter()
    command_buffers = 0
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            m = _INSTR.match(line)
            if not m:
                continue
            op, rest = m.group(2), m.group(3)
            for single, many in _SCHEDULED.findall(rest):
                todo += [single] if single else [n.strip().lstrip("%") for n in many.split(",")]
            if op == "call":
                called = _TO_APPLY.search(rest)
                if called:
                    todo.append(called.group(1))
                    command_buffers += "command_buffer" in called.group(1)
            if op not in _NO_KERNEL and not op.endswith("-done"):
                ops[op] += 1
    main = {"fusion": "fusions", "custom-call": "custom_calls", "copy": "copies"}
    out: dict[str, Any] = {"kernels": sum(ops.values())}
    out |= {key: ops.pop(op, 0) for op, key in main.items()}
    out["other"] = dict(sorted(ops.items()))
    out["command_buffers"] = command_buffers
    return out


class CompileTimeout(RuntimeError):
    """Lowering and compiling took longer than the time allowed."""


# Compiles still running after their caller gave up on them (see `compile_within`).
ABANDONED: list[threading.Thread] = []


def compile_within(jitted: Any, args: tuple[Any, ...], timeout: float) -> tuple[Any, dict]:
    """``jitted.lower(*args).compile()``, giving up after `timeout` seconds.

    XLA cannot be interrupted mid-compile, so the work runs in a daemon thread
    and a late compile is left to finish in the background (it is recorded in
    `ABANDONED`; the caller should end the process with ``os._exit`` once its
    results are written, rather than wait for it). Returns the compiled
    executable and ``lower_s``, ``compile_s`` and ``donation_warnings`` (jax
    warns "Some donated buffers were not usable" when a donated input has no
    output to alias).
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                lowered = jitted.lower(*args)
                t1 = time.perf_counter()
                box["compiled"] = lowered.compile()
                box["info"] = {
                    "lower_s": t1 - t0,
                    "compile_s": time.perf_counter() - t1,
                    "donation_warnings": sum("donated" in str(w.message) for w in caught),
                }
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        ABANDONED.append(thread)
        raise CompileTimeout(f"lowering and compiling took more than {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["compiled"], box["info"]
