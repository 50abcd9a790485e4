#!/usr/bin/env bash
# Prepare and check a GPU machine (without network) for `python -m benchmarks.device`.
#
#   benchmarks/device_setup.sh [WHEEL_DIR]
#   . benchmarks/device_setup.sh [WHEEL_DIR]     # sourced: keeps the PYTHONPATH it sets
#
# With WHEEL_DIR, every wheel in it is installed, offline and without
# dependencies (name each needed wheel), into $DEVICE_SITE (default
# /tmp/device-site), which goes first on PYTHONPATH. Then, always, it checks
# what the device run imports and prints what is missing: required are jax
# with an accelerator, optax (with optax.contrib.muon) and numpy, and cadence
# from this checkout with its dependencies; optional are torch with CUDA (its
# rows are skipped without it) and a C++ compiler (without one, the CPU side
# of the parity check uses XLA's loops instead of cadence's native kernels).
# Exit status 0 when everything required imports, 1 otherwise.
# $PYTHON picks the interpreter (default python3).

_device_setup() {
    local py="${PYTHON:-python3}"
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [ -n "${1:-}" ]; then
        local wheels=("$1"/*.whl)
        if [ -e "${wheels[0]}" ]; then
            local site="${DEVICE_SITE:-/tmp/device-site}"
            "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --upgrade --target "$site" "${wheels[@]}" || {
                echo "device setup: installing the wheels in $1 failed"
                return 1
            }
            export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
            echo "device setup: installed ${#wheels[@]} wheel(s) into $site"
            echo "export PYTHONPATH=$PYTHONPATH"
        else
            echo "device setup: no wheels in $1; checking what is installed"
        fi
    fi
    (cd "$root" && "$py" - <<'EOF'
import importlib
import shutil
import sys

missing = []


def report(status, name, detail):
    print(f"{status:<9} {name:<20} {detail}")


def check(name, required=True):
    try:
        module = importlib.import_module(name)
    except Exception as e:  # an ImportError, or a broken install
        report("MISSING" if required else "optional", name, f"{type(e).__name__}: {e}")
        if required:
            missing.append(name)
        return None
    report("ok", name, getattr(module, "__version__", ""))
    return module


print(f"python {sys.version.split()[0]} at {sys.executable}")
jax = check("jax")
if jax is not None:
    device = jax.devices()[0]
    if device.platform == "cpu":
        report("MISSING", "accelerator", "JAX sees only the CPU (jax[cuda] plugin missing?)")
        missing.append("accelerator")
    else:
        report("ok", "accelerator", f"{device.platform}: {device.device_kind} x{jax.device_count()}")
check("numpy")
check("optax")
contrib = check("optax.contrib")
if contrib is not None and not hasattr(contrib, "muon"):
    report("MISSING", "optax.contrib.muon", "this optax is too old (the muon section fails)")
    missing.append("optax.contrib.muon")
check("cadence")
torch = check("torch", required=False)
if torch is not None:
    if torch.cuda.is_available():
        report("ok", "torch CUDA", torch.cuda.get_device_name())
    else:
        report("optional", "torch CUDA", "torch sees no GPU: the torch rows are skipped")
cxx = shutil.which("c++") or shutil.which("g++")
report("ok" if cxx else "optional", "C++ compiler", cxx or "none: the CPU step uses XLA's loops")
if missing:
    print("missing: " + ", ".join(missing) + " (carry them as wheels: benchmarks/README.md)")
    sys.exit(1)
print("ready: python -m benchmarks.device")
EOF
    )
}

_device_setup "$@"
_device_setup_status=$?
unset -f _device_setup
# Sourced, return (keeping the shell); run, exit.
return "$_device_setup_status" 2>/dev/null || exit "$_device_setup_status"
