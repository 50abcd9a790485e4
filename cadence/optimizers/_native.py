"""The CPU kernels behind `Optimizer.step`: built once, loaded, registered with XLA.

`_kernels.cc` is compiled with the machine's C++ compiler (``$CXX``, else
``c++``) against the XLA FFI headers that jaxlib ships, the first time a step
needs it, into a cache directory keyed by the source, the compiler, jaxlib
and the CPU (``$CADENCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cadence``, else
``~/.cache/cadence``). The library is written under a temporary name and
renamed, so concurrent processes never load a half-written file. Without a
compiler, or with ``CADENCE_NATIVE=0``, `step` uses XLA's loops instead: the
same numbers, more memory traffic on CPU.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
from jax.extend.core import Primitive, jaxpr_as_fun
from jax.interpreters import batching, mlir

__all__ = [
    "BUFFER",
    "CENTERED",
    "DECAY",
    "DECOUPLED",
    "NESTEROV",
    "SCALED",
    "available",
    "on_cpu",
]

log = logging.getLogger("cadence")

# Flags, as in _kernels.cc.
DECAY, BUFFER, NESTEROV, CENTERED, DECOUPLED, SCALED = 1, 2, 4, 8, 16, 32

SOURCE = Path(__file__).with_name("_kernels.cc")
# For the host CPU, as XLA compiles: XLA's CPU backend fuses a product into a
# following sum where the CPU has FMA instructions, and the kernels must round
# exactly as it does (-ffp-contract=fast, and std::fma where GCC would not).
FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-fPIC",
    "-shared",
    "-ffp-contract=fast",
    "-fno-math-errno",
)
SYMBOLS = {
    "cadence_sgd": "CadenceSgd",
    "cadence_adam": "CadenceAdam",
    "cadence_rmsprop": "CadenceRmsprop",
    "cadence_lion": "CadenceLion",
    "cadence_norm_partials": "CadenceNormPartials",
}


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


def _build(cxx: list[str]) -> Path:
    version = subprocess.run(
        [*cxx, "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), " ".join(cxx), version, " ".join(FLAGS), jaxlib.__version__]
            + [platform.machine(), platform.system(), _cpu()]
        ).encode()
    ).hexdigest()[:16]
    out = _cache_dir() / f"kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".kernels-", suffix=".so")
    os.close(fd)
    try:
        cmd = [*cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def available() -> bool:
    """Whether the native kernels are built and registered (once per process).

    Example:
        >>> from cadence.optimizers import _native
        >>> isinstance(_native.available(), bool)
        True
    """
    if os.environ.get("CADENCE_NATIVE", "1") == "0":
        return False
    cxx = _compiler()
    if cxx is None:
        log.info("cadence: no C++ compiler; Optimizer.step uses XLA's loops")
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_build(cxx)))
        for name, symbol in SYMBOLS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), "cpu")
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("cadence: building the CPU kernels failed; using XLA's loops:\n%s", detail)
        return False
    return True


class _Branch:
    """A formulation carried as a primitive's parameter (hashed by identity)."""

    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name

    def __repr__(self) -> str:
        return self.name


def _platforms(args: Sequence[Any]) -> set[str]:
    found = {d.platform for x in args if isinstance(x, jax.Array) for d in x.devices()}
    return found or {jax.default_backend()}


def _impl(*args: Any, native: _Branch, xla: _Branch, out_avals: tuple[Any, ...]) -> list[Any]:
    # Outside jit the formulations run op by op, on the arguments' platform.
    del out_avals
    fn = native if _platforms(args) == {"cpu"} else xla
    return fn.fn(*args)


def _abstract(*args: Any, native: _Branch, xla: _Branch, out_avals: tuple[Any, ...]) -> Any:
    del args, native, xla
    return out_avals


def _lowering(branch: str) -> Callable[..., Any]:
    def rule(ctx: Any, *args: Any, **params: Any) -> Any:
        return mlir.lower_fun(params[branch].fn, multiple_results=True)(ctx, *args)

    return rule


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
            native=_Branch(jaxpr_as_fun(jaxpr), f"<native {getattr(native, '__name__', '')}>"),
            xla=_Branch(flat_fn(xla), f"<xla {getattr(xla, '__name__', '')}>"),
            out_avals=tuple(jaxpr.out_avals),
        )
        return jax.tree.unflatten(treedef, outs)

    run = jax.custom_jvp(run)
    # Derivatives (meta-learning through a step) follow XLA's formulation.
    run.defjvp(lambda primals, tangents: jax.jvp(xla, primals, tangents))
    return run
