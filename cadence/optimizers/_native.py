"""The CPU kernels behind `Optimizer.step`: built once, loaded, registered with XLA.

`_kernels.cc` is compiled with the machine's C++ compiler (``$CXX``, else
``c++``) against the XLA FFI headers that jaxlib ships, the first time a step
needs it, into a cache directory keyed by the source, the compiler, jaxlib
and the CPU (``$CADENCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cadence``, else
``~/.cache/cadence``). The library is written under a temporary name and
renamed, so concurrent processes never load a half-written file. Without a
compiler, or with ``CADENCE_NATIVE=0``, `step` uses XLA's loops instead: the
same numbers, more memory traffic on CPU.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jaxlib

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


def on_cpu(native: Callable[..., Any], xla: Callable[..., Any]) -> Callable[..., Any]:
    """`native` where the program runs on a CPU, `xla` elsewhere; derivatives follow `xla`.

    Example:
        >>> import jax.numpy as jnp
        >>> from cadence.optimizers import _native
        >>> double = _native.on_cpu(lambda x: x + x, lambda x: 2 * x)
        >>> double(jnp.ones(2))
        Array([2., 2.], dtype=float32)
    """

    def run(*args: Any) -> Any:
        # Only a CPU has the kernels; another platform lowers XLA's loops.
        return jax.lax.platform_dependent(*args, cpu=native, default=xla)

    run = jax.custom_jvp(run)
    # Derivatives (meta-learning through a step) follow XLA's formulation.
    run.defjvp(lambda primals, tangents: jax.jvp(xla, primals, tangents))
    return run
