"""torch.optim rows: the for-loop, foreach and fused paths, or nothing without torch.

torch's default on CPU is the for-loop (single-tensor) path: it picks foreach
only for CUDA-like devices. The for-loop row is therefore also torch's default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._optimizers import MAX_NORM, SCHEDULE_STEPS, Spec
from ._timing import Runner

try:
    import torch
except ImportError:  # the harness runs without torch and prints n/a
    torch = None

MODES = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def available() -> bool:
    return torch is not None


def version() -> str | None:
    return torch.__version__ if torch is not None else None


def _tensors(tree: dict[str, np.ndarray], dtype: str, device: str = "cpu") -> list[Any]:
    dt = getattr(torch, dtype)
    return [torch.from_numpy(v).to(device=device, dtype=dt, copy=True) for v in tree.values()]


def make(
    spec: Spec,
    params_np: dict[str, np.ndarray],
    grads_np: dict[str, np.ndarray],
    dtype: str,
    mode: str,
    device: str = "cpu",
) -> tuple[Any, list[Any], Any] | None:
    """(optimizer, params, scheduler) for one path on `device`, or None where torch lacks it."""
    if torch is None or spec.torch is None or (mode == "fused" and not spec.fused):
        return None
    cls, kwargs = spec.torch
    params = [torch.nn.Parameter(p) for p in _tensors(params_np, dtype, device)]
    for p, g in zip(params, _tensors(grads_np, dtype, device), strict=True):
        p.grad = g
    opt = getattr(torch.optim, cls)(params, **kwargs, **MODES[mode])
    sched = None
    if spec.torch_cosine:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=SCHEDULE_STEPS)
    return opt, params, sched


def runner(
    spec: Spec,
    params_np: dict[str, np.ndarray],
    grads_np: dict[str, np.ndarray],
    dtype: str,
    mode: str,
    device: str = "cpu",
) -> Runner | None:
    """The training loop's optimizer part: clip (if the spec asks), step, schedule."""
    built = make(spec, params_np, grads_np, dtype, mode, device)
    if built is None:
        return None
    opt, params, sched = built

    def step() -> None:
        if spec.torch_clip:
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        if sched is not None:
            sched.step()

    # On the CPU every torch call has finished when it returns; CUDA calls only queue work.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return Runner(f"torch ({mode})", "torch", step, sync, {"mode": mode, "device": device})


# bitsandbytes' 8-bit counterparts of the specs' torch.optim classes.
_EIGHT_BIT = {
    "SGD": "SGD8bit",
    "Adam": "Adam8bit",
    "AdamW": "AdamW8bit",
    "RMSprop": "RMSprop8bit",
    "Adagrad": "Adagrad8bit",
}


def state_bytes_8bit(spec: Spec, params_np: dict[str, np.ndarray]) -> int | None:
    """Bytes of a bitsandbytes 8-bit optimizer's state after one CPU step, or None.

    None without bitsandbytes or where it has no 8-bit class for the spec.
    Every tensor of ``optimizer.state`` counts (codes, block absmax, the
    float32 state of leaves under its ``min_8bit_size``); its quantization
    maps are shared by the leaves and counted once.
    """
    if torch is None or spec.torch is None or spec.torch[0] not in _EIGHT_BIT:
        return None
    try:
        import bitsandbytes
    except ImportError:
        return None
    cls, kwargs = spec.torch
    params = [torch.nn.Parameter(p) for p in _tensors(params_np, "float32")]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt = getattr(bitsandbytes.optim, _EIGHT_BIT[cls])(params, **kwargs)
    opt.step()
    seen: set[int] = set()
    total = 0
    for st in opt.state.values():
        for t in st.values():
            if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def state_bytes(spec: Spec, params_np: dict[str, np.ndarray], dtype: str) -> int | None:
    """Bytes of ``optimizer.state`` tensors after one step (torch's default path)."""
    built = make(spec, params_np, params_np, dtype, "for-loop")
    if built is None:
        return None
    opt, _, _ = built
    opt.step()
    return sum(
        t.numel() * t.element_size()
        for st in opt.state.values()
        for t in st.values()
        if isinstance(t, torch.Tensor)
    )
