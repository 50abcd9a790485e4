"""The CPU kernels behind `Optimizer.step`: generated, built once, loaded, registered with XLA.

Each optimizer's single-pass kernel is C++ that `_codegen` writes from the
optimizer's Python definition; clip_by_global_norm's per-leaf sums are
`_norms.cc`. A source is compiled with the machine's C++ compiler (``$CXX``,
else ``c++``) against the XLA FFI headers that jaxlib ships, into a cache
directory keyed by the source, the compiler, jaxlib and the CPU
(``$CADENCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cadence``, else
``~/.cache/cadence``). A library is written under a temporary name and
renamed, so concurrent processes never load a half-written file.

Nothing is compiled or loaded until a program that calls a kernel is lowered
for a CPU, or run eagerly on one: a step exported or compiled for a GPU or
TPU never builds anything. Without a compiler, with ``CADENCE_NATIVE=0``, or
in a program spread over several devices (whose partitioner would gather a
custom call's operands), the CPU lowers XLA's formulation instead: the same
numbers, more memory traffic.

`on_cpu` pairs a formulation that calls the kernels with XLA's: one primitive
whose CPU lowering is the first and whose lowering everywhere else is the
second, so each platform traces only the program it runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
from jax.extend.core import Primitive, jaxpr_as_fun
from jax.interpreters import batching, mlir

__all__ = ["NORMS", "available", "ensure", "on_cpu", "register"]

log = logging.getLogger("cadence")

# For the host CPU, as XLA compiles. Contraction is off: the generated
# kernels say where XLA fuses a multiply into an add (std::fma), and the
# compiler must add no fusion of its own.
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-math-errno",
)
NORMS = "cadence_norm_partials"

# FFI target -> (symbol, source) of every kernel known in this process, and
# the targets already built and registered with XLA.
_SOURCES: dict[str, tuple[str, str]] = {
    NORMS: ("CadenceNormPartials", Path(__file__).with_name("_norms.cc").read_text()),
}
_REGISTERED: set[str] = set()
_FAILED: set[str] = set()
_LOCK = threading.Lock()


def _cache_dir() -> Path:
    if os.environ.get("CADENCE_CACHE_DIR"):
        return Path(os.environ["CADENCE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cadence"


def _cpu() -> str:
    """The host CPU's model and features (-march=native code is only for it)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return "\n".join(sorted({ln for ln in lines if ln.split(":")[0].strip() in keep}))


def _compiler() -> list[str] | None:
    cxx = os.environ.get("CXX") or "c++"
    argv = cxx.split()
    return argv if argv and shutil.which(argv[0]) else None


@functools.cache
def _compiler_version(cxx: tuple[str, ...]) -> str:
    return subprocess.run(
        [*cxx, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def _build(cxx: list[str], source: str) -> Path:
    key = hashlib.sha256(
        "\0".join(
            [source, " ".join(cxx), _compiler_version(tuple(cxx)), " ".join(FLAGS)]
            + [jaxlib.__version__, platform.machine(), platform.system(), _cpu()]
        ).encode()
    ).hexdigest()[:16]
    out = _cache_dir() / f"kernel-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".kernel-", suffix=".so")
    os.close(fd)
    src = Path(tmp).with_suffix(".cc")
    try:
        src.write_text(source)
        cmd = [*cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(src), "-o", tmp]
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, src):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return out


@functools.cache
def available() -> bool:
    """Whether native kernels can be built here: a C++ compiler, and not ``CADENCE_NATIVE=0``.

    Nothing is built by asking (see `ensure`).

    Example:
        >>> from cadence.optimizers import _native
        >>> isinstance(_native.available(), bool)
        True
    """
    if os.environ.get("CADENCE_NATIVE", "1") == "0":
        return False
    if _compiler() is None:
        log.info("cadence: no C++ compiler; Optimizer.step uses XLA's loops")
        return False
    return True


def register(target: str, symbol: str, source: str) -> None:
    """Make a kernel known; it is built the first time a CPU program needs it."""
    _SOURCES.setdefault(target, (symbol, source))


def ensure(targets: Sequence[str] | None = None) -> bool:
    """Build and register `targets` (default: every known kernel); False if any cannot be."""
    if not available():
        return False
    with _LOCK:
        wanted = list(_SOURCES) if targets is None else list(targets)
        if any(t in _FAILED for t in wanted):
            return False
        cxx = _compiler()
        assert cxx is not None
        for target in wanted:
            if target in _REGISTERED:
                continue
            symbol, source = _SOURCES[target]
            try:
                lib = ctypes.cdll.LoadLibrary(str(_build(cxx, source)))
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                _FAILED.add(target)
                detail = getattr(e, "stderr", "") or e
                log.warning("cadence: building a CPU kernel failed; using XLA's loops:\n%s", detail)
                return False
            _REGISTERED.add(target)
    return True


class _Branch:
    """A formulation carried as a primitive's parameter (hashed by identity)."""

    __slots__ = ("fn", "name", "targets")

    def __init__(self, fn: Callable[..., Any], name: str, targets: tuple[str, ...] = ()) -> None:
        self.fn, self.name, self.targets = fn, name, targets

    def __repr__(self) -> str:
        return self.name


def _platforms(args: Sequence[Any]) -> set[str]:
    found = {d.platform for x in args if isinstance(x, jax.Array) for d in x.devices()}
    return found or {jax.default_backend()}


def _impl(*args: Any, native: _Branch, xla: _Branch, out_avals: tuple[Any, ...]) -> list[Any]:
    # Outside jit the formulations run op by op, on the arguments' platform.
    del out_avals
    fn = native if _platforms(args) == {"cpu"} and ensure(native.targets) else xla
    return fn.fn(*args)


def _abstract(*args: Any, native: _Branch, xla: _Branch, out_avals: tuple[Any, ...]) -> Any:
    del args, native, xla
    return out_avals


def _lowering(branch: str) -> Callable[..., Any]:
    def rule(ctx: Any, *args: Any, **params: Any) -> Any:
        if branch == "native" and not (_one_device(ctx) and ensure(params["native"].targets)):
            branch_here = "xla"
        else:
            branch_here = branch
        return mlir.lower_fun(params[branch_here].fn, multiple_results=True)(ctx, *args)

    return rule


def _one_device(ctx: Any) -> bool:
    """Whether the program being lowered runs on one device (no partitioner to gather)."""
    return getattr(ctx.module_context.axis_context, "num_devices", None) == 1


def _batch(
    args: Sequence[Any], dims: Sequence[Any], *, native: _Branch, xla: _Branch, **_: Any
) -> tuple[Any, list[int]]:
    # vmap both formulations; the native one runs its calls in sequence.
    outs = on_cpu(jax.vmap(native.fn, in_axes=list(dims)), jax.vmap(xla.fn, in_axes=list(dims)))(
        *args
    )
    return outs, [0] * len(outs)


# One primitive, two lowerings: a CPU lowers the kernel calls and every other
# platform XLA's formulation, and neither is traced where the other runs (as
# `lax.platform_dependent` would trace both, doubling the cost of lowering).
_on_cpu_p = Primitive("cadence_on_cpu")
_on_cpu_p.multiple_results = True
_on_cpu_p.def_impl(_impl)
_on_cpu_p.def_abstract_eval(_abstract)
mlir.register_lowering(_on_cpu_p, _lowering("xla"))
mlir.register_lowering(_on_cpu_p, _lowering("native"), platform="cpu")
batching.primitive_batchers[_on_cpu_p] = _batch


def on_cpu(native: Callable[..., Any], xla: Callable[..., Any]) -> Callable[..., Any]:
    """`native` where the program runs on a CPU, `xla` elsewhere; derivatives follow `xla`.

    Both take and return pytrees of arrays, and must not close over traced
    values (pass those as arguments).

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence.optimizers import _native
        >>> double = _native.on_cpu(lambda x: x + x, lambda x: 2 * x)
        >>> double(jnp.ones(2))
        Array([2., 2.], dtype=float32)
    """

    def run(*args: Any) -> Any:
        flat, tree = jax.tree.flatten(args)
        out_tree: list[Any] = []

        def flat_fn(fn: Callable[..., Any]) -> Callable[..., list[Any]]:
            def call(*xs: Any) -> list[Any]:
                leaves, treedef = jax.tree.flatten(fn(*jax.tree.unflatten(tree, xs)))
                out_tree[:] = [treedef]
                return leaves

            return call

        # The native formulation is traced once here (it is a few calls), for
        # the output types; XLA's is traced only where it is lowered.
        jaxpr = jax.make_jaxpr(flat_fn(native))(*flat)
        (treedef,) = out_tree
        outs = _on_cpu_p.bind(
            *flat,
            native=_Branch(
                jaxpr_as_fun(jaxpr),
                f"<native {getattr(native, '__name__', '')}>",
                _targets(jaxpr.jaxpr),
            ),
            xla=_Branch(flat_fn(xla), f"<xla {getattr(xla, '__name__', '')}>"),
            out_avals=tuple(jaxpr.out_avals),
        )
        return jax.tree.unflatten(treedef, outs)

    run = jax.custom_jvp(run)
    # Derivatives (meta-learning through a step) follow XLA's formulation.
    run.defjvp(lambda primals, tangents: jax.jvp(xla, primals, tangents))
    return run


def _targets(jaxpr: Any) -> tuple[str, ...]:
    """The FFI targets a jaxpr calls (nested jaxprs included)."""
    found: dict[str, None] = {}
    for eqn in jaxpr.eqns:
        if "target_name" in eqn.params:
            found[eqn.params["target_name"]] = None
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                found.update(dict.fromkeys(_targets(inner)))
    return tuple(found)
