"""timm's modules, loaded without importing the timm package.

``import timm`` imports torchvision, which is not installable beside the CPU
torch used here. timm's scheduler and optimizer modules import only the
standard library, numpy, torch and their own siblings, so each subpackage
(``scheduler``, ``optim``) is loaded as a synthetic package whose ``__path__``
is timm's folder, without running timm's ``__init__`` files.

Example (with timm and torch installed)::

    Lamb = load_timm("optim", "lamb").Lamb
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

_PREFIX = "_timm_"


def load_timm(subpackage: str, module: str) -> types.ModuleType:
    """timm's ``timm/<subpackage>/<module>.py``, as a module.

    Raises:
        ImportError: timm or torch is not installed, or the file is missing.
    """
    package = f"{_PREFIX}{subpackage}"
    name = f"{package}.{module}"
    if name not in sys.modules:
        # find_spec of a top-level package locates it without executing it.
        spec = importlib.util.find_spec("timm")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("timm is not installed")
        folder = Path(next(iter(spec.submodule_search_locations))) / subpackage
        if not (folder / f"{module}.py").is_file():
            raise ImportError(f"no timm source {module}.py in {folder}")
        if package not in sys.modules:
            synthetic = types.ModuleType(package)
            synthetic.__path__ = [str(folder)]
            sys.modules[package] = synthetic
        importlib.import_module(name)
    return sys.modules[name]
