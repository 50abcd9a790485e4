"""Single-pass CPU kernels written from an optimizer's own arithmetic.

An elementwise optimizer's step for one leaf (`kernel`, the learning rate and
weight decay, then ``optax.apply_updates``) is traced on a short vector (so a
reduction or a matrix product shows, and is refused) with its scalars, and the
resulting jaxpr is translated, operation for operation, into one C++ loop that
reads the parameter, the gradient and each buffer once and writes the new
parameter and buffers in place. Nobody writes C++ for an optimizer: the
Python definition is the only one.

The loop must round exactly as XLA's CPU backend rounds the same program
(`Optimizer.step` equals `update` + `apply_updates` bit for bit). XLA's LLVM
backend fuses a product into the sum or difference that consumes it when the
product has no other use in the loop that computes an output (LLVM's FMA
contraction; XLA writes each output in a loop of its own); the generated code
makes those decisions explicitly, per output, with ``std::fma`` and is
compiled with contraction off, so the C++ compiler adds none of its own.

Only the operations whose rounding is fixed by IEEE 754 are translated
(``+ - * /``, sqrt, comparisons, selects, max/min, sign, abs and conversions
between float64, float32 and bfloat16 storage); a program with anything else
(``exp``, ``log``, an integer op, a reduction) gets no kernel and runs as
XLA compiles it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex

__all__ = ["Kernel", "generate"]

# The shape leaf arrays are traced with (any length but 1 would do).
_LEAF = (3,)
_CTYPES = {"float64": "double", "float32": "float", "bfloat16": "float", "bool": "bool"}
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}
_LOGIC = {"and": "&&", "or": "||"}
# Calls whose body is inlined.
_CALLS = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A generated kernel: its FFI target, C++ source and the scalars it reads, in order."""

    target: str
    symbol: str
    source: str
    scalars: tuple[str, ...]


class _Unsupported(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class _Eqn:
    prim: str
    ins: tuple[Any, ...]  # variable ids (int) or literals (_Lit)
    out: int
    dtype: str


@dataclasses.dataclass(frozen=True)
class _Lit:
    value: Any
    dtype: str


def generate(
    step: Callable[..., tuple[Any, dict[str, Any]]],
    param: jnp.dtype,
    buffers: Sequence[tuple[str, jnp.dtype]],
    scalars: dict[str, jnp.dtype],
) -> Kernel | None:
    """The single-pass kernel for ``step(p, g, bufs, s) -> (new_p, new_bufs)``, or None.

    `step` is traced on a parameter, gradient and buffers shaped like a leaf
    (of dtype `param` and the buffers' dtypes) and the 0-d scalars `s`. None
    when it uses an operation that is not elementwise or has no exact
    translation.
    """
    names = [n for n, _ in buffers]
    snames = list(scalars)

    def flat(p: Any, g: Any, *rest: Any) -> list[Any]:
        bufs = dict(zip(names, rest[: len(names)], strict=True))
        s = dict(zip(snames, rest[len(names) :], strict=True))
        new_p, new_bufs = step(p, g, bufs, s)
        return [new_p, *(new_bufs[n] for n in names)]

    # The leaf arrays are traced as vectors, so that anything that is not
    # elementwise (a reduction, a matrix product, a reshape) shows in the
    # program and is refused; the scalars as scalars.
    avals = [jax.ShapeDtypeStruct(_LEAF, param)] * 2
    avals += [jax.ShapeDtypeStruct(_LEAF, d) for _, d in buffers]
    avals += [jax.ShapeDtypeStruct((), d) for d in scalars.values()]
    try:
        closed = jax.make_jaxpr(flat)(*avals)
    except Exception:  # noqa: BLE001 (a whole-leaf rule may refuse a vector: no kernel then)
        return None
    try:
        return _Program.build(closed).kernel(names, snames)
    except _Unsupported:
        return None


def _dtype(aval: Any) -> str:
    """The dtype of a value of the element loop: a per-element (leaf-shaped) or scalar one."""
    name = jnp.dtype(aval.dtype).name
    if name not in _CTYPES or aval.shape not in ((), _LEAF):
        raise _Unsupported(f"{name}{aval.shape}")
    return name


class _Program:
    """A jaxpr flattened into one list of scalar operations on numbered variables."""

    def __init__(self) -> None:
        self.eqns: list[_Eqn] = []
        self.inputs: list[tuple[int, str]] = []
        self.outputs: list[Any] = []
        self._next = 0

    def _new(self) -> int:
        self._next += 1
        return self._next - 1

    @classmethod
    def build(cls, closed: Any) -> _Program:
        prog = cls()
        env: dict[Any, Any] = {}
        for v in closed.jaxpr.invars:
            env[v] = prog._new()
            prog.inputs.append((env[v], _dtype(v.aval)))
        for v, c in zip(closed.jaxpr.constvars, closed.consts, strict=True):
            env[v] = _literal(c, v.aval)
        prog.outputs = prog._inline(closed.jaxpr, env)
        return prog

    def _read(self, env: dict[Any, Any], v: Any) -> Any:
        if isinstance(v, jex.Literal):
            return _literal(v.val, v.aval)
        return env[v]

    def _inline(self, jaxpr: Any, env: dict[Any, Any]) -> list[Any]:
        """Append `jaxpr`'s operations (calls inlined); its outputs as ids or literals."""
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [self._read(env, v) for v in eqn.invars]
            if name in _CALLS:
                inner = eqn.params[_CALLS[name]]
                sub = inner.jaxpr if hasattr(inner, "jaxpr") else inner
                consts = getattr(inner, "consts", ())
                sub_env = {
                    v: _literal(c, v.aval) for v, c in zip(sub.constvars, consts, strict=True)
                }
                sub_env |= dict(zip(sub.invars, ins, strict=True))
                env.update(zip(eqn.outvars, self._inline(sub, sub_env), strict=True))
                continue
            (out,) = eqn.outvars
            dtype = _dtype(out.aval)
            if name in ("copy", "copy_p") or (
                # A scalar broadcast over the leaf, or a shape kept as it is.
                name in ("broadcast_in_dim", "reshape", "squeeze")
                and eqn.invars[0].aval.shape in ((), out.aval.shape)
            ):
                env[out] = ins[0]
                continue
            if name == "convert_element_type" and isinstance(ins[0], _Lit):
                env[out] = _literal(ins[0].value, out.aval)
                continue
            if name == "integer_pow":
                if eqn.params["y"] != 2:
                    raise _Unsupported("integer_pow")
                name, ins = "mul", [ins[0], ins[0]]
            elif name == "square":
                name, ins = "mul", [ins[0], ins[0]]
            supported = (
                name in _BINARY
                or name in _COMPARE
                or name in _LOGIC
                or name in ("neg", "sqrt", "abs", "sign", "max", "min", "select_n", "not")
                or name == "convert_element_type"
            )
            if not supported:
                raise _Unsupported(name)
            if name in _BINARY and dtype == "bfloat16":
                raise _Unsupported("bfloat16 arithmetic")
            env[out] = self._new()
            self.eqns.append(_Eqn(name, tuple(ins), env[out], dtype))
        return [self._read(env, v) for v in jaxpr.outvars]

    # ------------------------------------------------------------------ C++

    def _types(self) -> dict[int, str]:
        types = dict(self.inputs)
        types.update({e.out: e.dtype for e in self.eqns})
        return types

    def _cone(self, out: Any) -> list[_Eqn]:
        """The operations an output depends on, in program order."""
        producer = {e.out: e for e in self.eqns}
        needed: set[int] = set()
        stack = [out] if isinstance(out, int) else []
        while stack:
            v = stack.pop()
            if v in needed or v not in producer:
                continue
            needed.add(v)
            stack.extend(x for x in producer[v].ins if isinstance(x, int))
        return [e for e in self.eqns if e.out in needed]

    def _emit_output(self, k: int, out: Any, types: dict[int, str]) -> tuple[list[str], str]:
        """Statements computing output `k`, with its own contraction decisions."""
        cone = self._cone(out)
        producer = {e.out: e for e in cone}
        uses: dict[int, int] = {}
        for e in cone:
            for x in e.ins:
                if isinstance(x, int):
                    uses[x] = uses.get(x, 0) + 1
        if isinstance(out, int):
            uses[out] = uses.get(out, 0) + 1

        def ref(x: Any) -> str:
            if isinstance(x, _Lit):
                return _c_literal(x)
            return f"v{x}_{k}" if x in producer else f"in{x}"

        def contractible(x: Any) -> _Eqn | None:
            e = producer.get(x) if isinstance(x, int) else None
            if e is not None and e.prim == "mul" and uses.get(x) == 1 and e.dtype != "bfloat16":
                return e
            return None

        lines = []
        for e in cone:
            a = [ref(x) for x in e.ins]
            ctype = _CTYPES[e.dtype]
            if e.prim in ("add", "sub"):
                first, second = (contractible(x) for x in e.ins)
                if first is not None:
                    x, y = (ref(v) for v in first.ins)
                    c = a[1] if e.prim == "add" else f"-({a[1]})"
                    expr = f"CADENCE_FMA({x}, {y}, {c})"
                elif second is not None:
                    x, y = (ref(v) for v in second.ins)
                    x = x if e.prim == "add" else f"-({x})"
                    expr = f"CADENCE_FMA({x}, {y}, {a[0]})"
                else:
                    expr = f"{a[0]} {_BINARY[e.prim]} {a[1]}"
            elif e.prim in _BINARY:
                expr = f"{a[0]} {_BINARY[e.prim]} {a[1]}"
            elif e.prim in _COMPARE:
                expr = f"{a[0]} {_COMPARE[e.prim]} {a[1]}"
            elif e.prim in _LOGIC:
                expr = f"{a[0]} {_LOGIC[e.prim]} {a[1]}"
            elif e.prim == "not":
                expr = f"!{a[0]}"
            elif e.prim == "neg":
                expr = f"-{a[0]}"
            elif e.prim == "sqrt":
                expr = f"std::sqrt({a[0]})"
            elif e.prim == "abs":
                expr = f"std::fabs({a[0]})"
            elif e.prim == "sign":
                expr = f"Sign({a[0]})"
            elif e.prim == "max":
                expr = f"Max({a[0]}, {a[1]})"
            elif e.prim == "min":
                expr = f"Min({a[0]}, {a[1]})"
            elif e.prim == "select_n":
                if len(a) != 3:
                    raise _Unsupported("select_n")
                expr = f"{a[0]} ? {a[2]} : {a[1]}"
            else:  # convert_element_type
                src = types[e.ins[0]] if isinstance(e.ins[0], int) else e.ins[0].dtype
                expr = _convert(a[0], src, e.dtype)
            lines.append(f"      const {ctype} v{e.out}_{k} = {expr};")
        return lines, ref(out)

    def kernel(self, buffers: list[str], scalars: list[str]) -> Kernel:
        types = self._types()
        nb = len(buffers)
        p_id, g_id = self.inputs[0][0], self.inputs[1][0]
        buf_ids = [v for v, _ in self.inputs[2 : 2 + nb]]
        scalar_ids = [v for v, _ in self.inputs[2 + nb :]]
        used = {x for e in self.eqns for x in e.ins if isinstance(x, int)}
        used |= {x for x in self.outputs if isinstance(x, int)}
        keep = [(n, v) for n, v in zip(scalars, scalar_ids, strict=True) if v in used]
        param = types[p_id]
        if types[g_id] != param or param not in ("float32", "float64"):
            raise _Unsupported("parameter dtype")
        storage = [types[v] for v in buf_ids]
        for out, dtype in zip(self.outputs, [param, *storage], strict=True):
            if isinstance(out, int) and types[out] != dtype:
                raise _Unsupported("an output changes dtype")
        body = []
        results = []
        for k, out in enumerate(self.outputs):
            lines, ref = self._emit_output(k, out, types)
            body += lines
            results.append(ref)
        source = _render(
            param, storage, [types[v] for _, v in keep], keep, body, results, p_id, g_id, buf_ids
        )
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        symbol = f"CadenceKernel_{digest}"
        source = source.replace("CADENCE_SYMBOL", symbol)
        return Kernel(f"cadence_kernel_{digest}", symbol, source, tuple(n for n, _ in keep))


def _literal(value: Any, aval: Any) -> _Lit:
    if np.shape(value) != ():
        raise _Unsupported("an array constant")
    dtype = _dtype(aval)
    return _Lit(np.asarray(value).astype(dtype if dtype != "bfloat16" else "float32").item(), dtype)


def _c_literal(lit: _Lit) -> str:
    if lit.dtype == "bool":
        return "true" if lit.value else "false"
    value = float(lit.value)
    if value != value:
        text = "std::numeric_limits<double>::quiet_NaN()"
    elif value in (float("inf"), float("-inf")):
        text = ("-" if value < 0 else "") + "std::numeric_limits<double>::infinity()"
    else:
        text = value.hex()
    return f"{_CTYPES[lit.dtype]}({text})"


def _convert(x: str, src: str, dst: str) -> str:
    if dst == "bfloat16":
        return f"RoundBf16(float({x}))" if src != "bfloat16" else x
    if src == "bool":
        return f"{_CTYPES[dst]}({x} ? 1 : 0)"
    return f"{_CTYPES[dst]}({x})"


_PRELUDE = """\
// Generated from an optimizer's Python definition by cadence/optimizers/_codegen.py.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// p + a * b rounded once, as XLA fuses a product into its only consumer
// where the CPU has FMA instructions.
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define CADENCE_FMA(a, b, c) std::fma((a), (b), (c))
#else
#define CADENCE_FMA(a, b, c) ((a) * (b) + (c))
#endif

struct BF16 {
  uint16_t bits;
};

inline float Load(float x) { return x; }
inline double Load(double x) { return x; }
inline float Load(BF16 x) {
  const uint32_t bits = uint32_t{x.bits} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, as XLA converts (NaN stays a quiet NaN).
inline BF16 ToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return BF16{uint16_t((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}
inline float RoundBf16(float x) { return Load(ToBf16(x)); }
inline float Store(float x, float*) { return x; }
inline double Store(double x, double*) { return x; }
inline BF16 Store(float x, BF16*) { return ToBf16(x); }

// XLA's sign: +-1 where v is nonzero, else v itself (+-0, NaN).
template <typename C>
inline C Sign(C v) {
  return (v < C(0) || v > C(0)) ? std::copysign(C(1), v) : v;
}
// XLA's max and min propagate NaN.
template <typename C>
inline C Max(C a, C b) {
  return b != b ? b : (!(a < b) ? a : b);
}
template <typename C>
inline C Min(C a, C b) {
  return b != b ? b : (!(a > b) ? a : b);
}
"""


def _render(
    param: str,
    storage: list[str],
    scalar_types: list[str],
    scalars: list[tuple[str, int]],
    body: list[str],
    results: list[str],
    p_id: int,
    g_id: int,
    buf_ids: list[int],
) -> str:
    ctype = _CTYPES[param]
    stypes = [("BF16" if s == "bfloat16" else _CTYPES[s]) for s in storage]
    nb, ns = len(storage), len(scalars)
    loop_args = [f"{ctype}* __restrict__ p", f"const {ctype}* __restrict__ g"]
    loop_args += [f"{t}* __restrict__ b{k}" for k, t in enumerate(stypes)]
    loop_args += [f"{_CTYPES[t]} in{v}" for t, (_, v) in zip(scalar_types, scalars, strict=True)]
    loop_args.append("size_t n")
    loads = [f"      const {ctype} in{p_id} = p[i];", f"      const {ctype} in{g_id} = g[i];"]
    loads += [f"      const auto in{v} = Load(b{k}[i]);" for k, v in enumerate(buf_ids)]
    stores = [f"      p[i] = {results[0]};"]
    stores += [f"      b{k}[i] = Store({r}, b{k});" for k, r in enumerate(results[1:])]
    scalar_reads = []
    for j, (t, (name, _)) in enumerate(zip(scalar_types, scalars, strict=True)):
        scalar_reads.append(
            f"  const auto* s{j} = static_cast<const {_CTYPES[t]}*>("
            f"args.get<ffi::AnyBuffer>({j})->untyped_data());  // {name}"
        )
    call_scalars = "".join(f", *s{j}" for j in range(ns))
    buffer_args = "".join(f", static_cast<{t}*>(bufs[{k}]) + offset" for k, t in enumerate(stypes))
    lines = [
        _PRELUDE,
        f"__attribute__((noinline)) void Loop({', '.join(loop_args)}) {{",
        "#pragma GCC ivdep",
        "  for (size_t i = 0; i < n; ++i) {",
        *loads,
        *body,
        *stores,
        "  }",
        "}",
        "",
        "void CopyIn(const ffi::AnyBuffer& from, ffi::AnyBuffer& to) {",
        "  // Aliased outputs share their inputs' memory unless XLA could not donate.",
        "  if (from.untyped_data() != to.untyped_data()) {",
        "    std::memcpy(to.untyped_data(), from.untyped_data(), to.size_bytes());",
        "  }",
        "}",
        "",
        "// args: the scalars, G params, G grads, the buffer arrays; rets: G params and the",
        "// buffer arrays, aliased to their inputs. Leaf i's buffers start offsets[i]",
        "// elements into the buffer arrays (its own buffers, or its place in `flatten`'s).",
        "ffi::Error Run(ffi::RemainingArgs args, ffi::RemainingRets rets,",
        "               ffi::Span<const int64_t> offsets) {",
        f"  constexpr size_t kScalars = {ns}, kBuffers = {nb};",
        "  const size_t leaves = offsets.size();",
        "  if (args.size() != kScalars + 2 * leaves + kBuffers ||",
        "      rets.size() != leaves + kBuffers) {",
        '    return ffi::Error::InvalidArgument("cadence: unexpected operand count");',
        "  }",
        *scalar_reads,
        "  void* bufs[kBuffers > 0 ? kBuffers : 1] = {};",
        "  size_t capacity = ~size_t{0};",
        "  for (size_t k = 0; k < kBuffers; ++k) {",
        "    auto in = args.get<ffi::AnyBuffer>(kScalars + 2 * leaves + k);",
        "    auto out = rets.get<ffi::AnyBuffer>(leaves + k);",
        "    if (!in.has_value() || !out.has_value()) {",
        '      return ffi::Error::InvalidArgument("cadence: bad buffer");',
        "    }",
        "    CopyIn(*in, **out);",
        "    bufs[k] = (*out)->untyped_data();",
        "    capacity = std::min(capacity, size_t((*out)->element_count()));",
        "  }",
        "  for (size_t i = 0; i < leaves; ++i) {",
        "    auto p_in = args.get<ffi::AnyBuffer>(kScalars + i);",
        "    auto g = args.get<ffi::AnyBuffer>(kScalars + leaves + i);",
        "    auto p = rets.get<ffi::AnyBuffer>(i);",
        "    if (!p_in.has_value() || !g.has_value() || !p.has_value()) {",
        '      return ffi::Error::InvalidArgument("cadence: bad operands");',
        "    }",
        "    const size_t n = g->element_count();",
        "    const int64_t offset = offsets[i];",
        "    if (offset < 0 || (kBuffers && size_t(offset) + n > capacity)) {",
        '      return ffi::Error::InvalidArgument("cadence: a leaf runs past its buffers");',
        "    }",
        "    CopyIn(*p_in, **p);",
        f"    Loop(static_cast<{ctype}*>((*p)->untyped_data()),",
        f"         static_cast<const {ctype}*>(g->untyped_data()){buffer_args}{call_scalars}, n);",
        "  }",
        "  return ffi::Error::Success();",
        "}",
        "",
        "}  // namespace",
        "",
        "XLA_FFI_DEFINE_HANDLER_SYMBOL(CADENCE_SYMBOL, Run,",
        "                              ffi::Ffi::Bind()",
        "                                  .RemainingArgs()",
        "                                  .RemainingRets()",
        '                                  .Attr<ffi::Span<const int64_t>>("offsets"));',
        "",
    ]
    return "\n".join(lines)
