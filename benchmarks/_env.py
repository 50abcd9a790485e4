"""Threads, caches and the header: what machine and software produced the figures.

Fairness settings (applied by `configure`, printed by `header`):

- Cores: the process (and the compile-time child processes, which inherit it)
  is restricted to ``--threads`` CPUs with ``sched_setaffinity`` before JAX
  starts its backend. XLA's CPU client sizes its intra-op pool to the CPUs it
  may use (there is no flag for the pool's size), and torch gets
  ``torch.set_num_threads(threads)``: both libraries compute on the same cores.
  The default is one: on a 2-core machine shared with other work, two-thread
  runs of both torch's OpenMP pool and XLA's pool stall whenever another
  process holds one of the cores (medians several times slower, quartiles
  wide), while one core already streams as fast as two here.
- XLA: no flags are added; ``XLA_FLAGS`` from the environment is honoured and printed.
- JAX's persistent compilation cache is turned off, so every compile time is a
  cold compile even if the environment configures a cache directory.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import Any

import jax


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure(threads: int) -> dict[str, Any]:
    """Apply the fairness settings above (`threads` 0: every CPU); returns them for the header.

    Must run before anything initializes JAX's backend.
    """
    from jax._src import xla_bridge  # private, hence the getattr below

    if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
        raise RuntimeError("benchmarks: configure() must run before JAX's backend starts")
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if allowed and 0 < threads < len(allowed):
        # The highest-numbered CPUs: CPU 0 tends to take the most interrupts.
        os.sched_setaffinity(0, allowed[-threads:])
    n = cores()
    jax.config.update("jax_enable_compilation_cache", False)
    settings: dict[str, Any] = {
        "cpus": sorted(os.sched_getaffinity(0)) if allowed else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "xla_threads": n,
        "jax_compilation_cache": False,
    }
    try:
        import torch
    except ImportError:
        settings["torch_threads"] = None
    else:
        torch.set_num_threads(n)
        settings["torch_threads"] = torch.get_num_threads()
    return settings


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> list[float] | None:
    """1-, 5- and 15-minute load: others share this machine, so the header records it."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the header prints, as a JSON-ready dict."""
    device = jax.devices()[0]
    import cadence
    from cadence.optimizers import _native

    # Built (or loaded from the cache) here, so no case's compile time pays for it.
    native = _native.available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks", *sys.argv[1:]]),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(m, 1) if (m := _memory_gib()) is not None else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "optax": _version("optax"),
            "torch": _version("torch") if settings["torch_threads"] else "not importable",
            "numpy": _version("numpy"),
            "cadence": cadence.__version__,
        },
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.device_kind} x{jax.device_count()}",
        "native_kernels": native,
        "settings": settings,
        "load_average": load_average(),
    }


def header(info: dict[str, Any]) -> str:
    """The lines printed before any table."""
    v = info["versions"]
    s = info["settings"]
    torch_threads = s["torch_threads"] if s["torch_threads"] is not None else "n/a"
    return "\n".join(
        [
            f"cadence optimizer benchmarks · {info['date']}",
            f"command: {info['command']}",
            f"machine: {info['cpu']}, {info['cores']} cores,"
            f" {info['memory_gib']} GiB, {info['platform']}",
            "versions: "
            + ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "optax", "torch", "numpy"))
            + f", cadence {v['cadence']}, python {info['python']}",
            f"XLA backend: {info['backend']} ({info['device']});"
            f" XLA_FLAGS={s['XLA_FLAGS'] or '(unset)'};"
            f" cadence native kernels {'on' if info.get('native_kernels') else 'off'}",
            f"threads: process on CPUs {s['cpus']}; XLA pool {s['xla_threads']},"
            f" torch {torch_threads}; JAX compilation cache off",
            f"load average at start: {info['load_average']}",
        ]
    )
