// Single-pass CPU kernels for `Optimizer.step` and `flatten`: one loop per
// leaf that reads the parameter, the gradient and each buffer once and writes
// the new parameter and buffers in place (XLA aliases them to their inputs).
// A call updates one leaf (`step`) or up to 16 whose buffers live at offsets
// in shared vectors (`flatten`); `CadenceNormPartials` sums leaves for
// clip_by_global_norm.
//
// XLA's CPU backend compiles the same update to one loop per output array
// (AdamW: three, 40 bytes per float32 parameter instead of 28), and a custom
// call is the only way to give it a loop with several outputs.
//
// Each kernel repeats, operation for operation, the elementwise program that
// XLA compiles from the optimizer's `_kernel` in Python, so both paths give
// bit-identical results (tests/optimizers/test_step.py; a chain's clipping
// coefficient is the one exception, see the README). The per-group scalars
// (learning rate, bias corrections, ...) are computed by XLA and passed in as
// one vector. Built for the host CPU with -ffp-contract=fast: XLA's CPU
// backend fuses a product into a following sum or difference where the CPU
// has FMA, and so must we.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Flags, shared with cadence/optimizers/_native.py.
constexpr int64_t kDecay = 1;       // weight decay reads the parameter
constexpr int64_t kBuffer = 2;      // RMSprop: a momentum buffer is kept
constexpr int64_t kNesterov = 4;    // SGD: Nesterov momentum
constexpr int64_t kCentered = 8;    // RMSprop: centered
constexpr int64_t kDecoupled = 16;  // Adam: decoupled decay (AdamW)
constexpr int64_t kScaled = 32;     // the gradient is multiplied by the last scalar first

// bfloat16 state (`state_dtype=jnp.bfloat16`); the math runs in float32, as
// in XLA. (bfloat16 parameters stay with XLA, whose loops convert with this
// CPU's bf16 instructions and were faster than these kernels.)
struct BF16 {
  uint16_t bits;
};

// Forced inline: a call in a loop stops GCC from vectorizing it.
#define CADENCE_INLINE inline __attribute__((always_inline))

CADENCE_INLINE float Load(float x) { return x; }
CADENCE_INLINE double Load(double x) { return x; }
CADENCE_INLINE float Load(BF16 x) {
  const uint32_t bits = uint32_t{x.bits} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// A value in storage type S; for bfloat16, rounded to nearest even as XLA
// converts (NaN stays a quiet NaN).
template <typename S, typename C>
CADENCE_INLINE S Store(C x) {
  if constexpr (std::is_same_v<S, BF16>) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (bits >> 16) | 0x40u;
    return BF16{uint16_t((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
  } else {
    return x;
  }
}

// A new buffer as it will be stored (`keep` in _optimizer.py): identity
// unless the buffer is narrower than the math.
template <typename S, typename C>
CADENCE_INLINE C Keep(C x) {
  return Load(Store<S>(x));
}

// p + a * b as XLA's CPU backend computes it: one fused multiply-add where the
// CPU has them (GCC does not always contract this one by itself).
template <typename C>
CADENCE_INLINE C MulAdd(C a, C b, C p) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(a, b, p);
#else
  return p + a * b;
#endif
}

// C: the parameter's, gradient's and math's dtype; S: the buffers'.
template <typename C, typename S>
struct Leaf {
  const C* s;               // the scalars
  const C* __restrict__ g;  // the gradient
  C* p;                     // the parameter, updated in place
  S* b[3];                  // the buffers, updated in place
  size_t n;
  C scale;  // clip_by_global_norm's coefficient (kScaled)

  template <bool Scaled>
  CADENCE_INLINE C grad(size_t i) const {
    if constexpr (Scaled) {
      return g[i] * scale;
    } else {
      return g[i];
    }
  }
};

// Each kernel is compiled on its own (noinline): inlined into Run, the loops
// were left unvectorized by GCC.
template <typename C, typename S, bool Scaled>
__attribute__((noinline)) void Sgd(const Leaf<C, S>& x, int64_t flags) {
  // s: weight_decay, keep, take, momentum, -lr
  const C wd = x.s[0], keep = x.s[1], take = x.s[2], momentum = x.s[3], nlr = x.s[4];
  // Always with a momentum buffer: without one, XLA's loop is one pass already.
  const bool decay = flags & kDecay, nesterov = flags & kNesterov;
  C* __restrict__ p = x.p;
  S* __restrict__ buf = x.b[0];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    const C pi = p[i];
    C d = x.template grad<Scaled>(i);
    if (decay) d = d + wd * pi;
    const C b = Keep<S>(keep * Load(buf[i]) + take * d);
    buf[i] = Store<S>(b);
    p[i] = MulAdd(nlr, nesterov ? d + momentum * b : b, pi);
  }
}

template <typename C, typename S, bool Scaled>
__attribute__((noinline)) void Adam(const Leaf<C, S>& x, int64_t flags) {
  // s: weight_decay, 1-b1, b2, 1-b2, -step_size, 1/sqrt(1-b2^t), eps, 1-lr*wd
  const C wd = x.s[0], omb1 = x.s[1], b2 = x.s[2], omb2 = x.s[3], nstep = x.s[4],
          rbc2 = x.s[5], eps = x.s[6], factor = x.s[7];
  const bool decay = flags & kDecay, decoupled = flags & kDecoupled;
  C* __restrict__ p = x.p;
  S* __restrict__ mu = x.b[0];
  S* __restrict__ nu = x.b[1];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    const C pi = p[i];
    C gi = x.template grad<Scaled>(i);
    if (decay && !decoupled) gi = gi + wd * pi;
    const C mo = Load(mu[i]);
    const C m = Keep<S>(mo + omb1 * (gi - mo));
    // torch's addcmul_ order: (1 - b2) * g first, so g * g cannot overflow alone.
    const C v = Keep<S>(b2 * Load(nu[i]) + (omb2 * gi) * gi);
    mu[i] = Store<S>(m);
    nu[i] = Store<S>(v);
    C u = (nstep * m) / (std::sqrt(v) * rbc2 + eps);
    if (decay && decoupled) u = u + (pi * factor - pi);
    p[i] = pi + u;
  }
}

// One loop per (centered, momentum) pair: with both tested inside the loop,
// GCC left some combinations unvectorized.
template <bool Centered, bool Buffer, typename C, typename S, bool Scaled>
__attribute__((noinline)) void RmspropLoop(const Leaf<C, S>& x, bool decay) {
  // s: weight_decay, alpha, 1-alpha, eps, momentum, -lr
  const C wd = x.s[0], alpha = x.s[1], oma = x.s[2], eps = x.s[3], momentum = x.s[4],
          nlr = x.s[5];
  C* __restrict__ p = x.p;
  // Buffers in the state's field order: square_avg, grad_avg, momentum_buffer.
  S* __restrict__ sq = x.b[0];
  S* __restrict__ ga = x.b[1];
  S* __restrict__ buf = x.b[Centered ? 2 : 1];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    const C pi = p[i];
    C gi = x.template grad<Scaled>(i);
    if (decay) gi = gi + wd * pi;
    const C s2 = Keep<S>(alpha * Load(sq[i]) + (oma * gi) * gi);
    sq[i] = Store<S>(s2);
    C avg;
    if constexpr (Centered) {
      const C go = Load(ga[i]);
      const C a = Keep<S>(go + oma * (gi - go));
      ga[i] = Store<S>(a);
      avg = std::sqrt(s2 - a * a);
    } else {
      avg = std::sqrt(s2);
    }
    avg = avg + eps;
    if constexpr (Buffer) {
      const C b = Keep<S>(momentum * Load(buf[i]) + gi / avg);
      buf[i] = Store<S>(b);
      p[i] = MulAdd(nlr, b, pi);
    } else {
      p[i] = pi + (nlr * gi) / avg;
    }
  }
}

template <typename C, typename S, bool Scaled>
void Rmsprop(const Leaf<C, S>& x, int64_t flags) {
  const bool decay = flags & kDecay;
  const bool centered = flags & kCentered, buffer = flags & kBuffer;
  if (centered && buffer) return RmspropLoop<true, true, C, S, Scaled>(x, decay);
  if (centered) return RmspropLoop<true, false, C, S, Scaled>(x, decay);
  if (buffer) return RmspropLoop<false, true, C, S, Scaled>(x, decay);
  return RmspropLoop<false, false, C, S, Scaled>(x, decay);
}

template <typename C>
CADENCE_INLINE C Sign(C v) {
  // XLA's sign: +-1 where v is nonzero, else v itself (+-0, NaN).
  return (v < C(0) || v > C(0)) ? std::copysign(C(1), v) : v;
}

template <typename C, typename S, bool Scaled>
__attribute__((noinline)) void Lion(const Leaf<C, S>& x, int64_t flags) {
  // s: -lr, b1, 1-b1, b2, 1-b2, 1-lr*wd
  const C nlr = x.s[0], b1 = x.s[1], omb1 = x.s[2], b2 = x.s[3], omb2 = x.s[4],
          factor = x.s[5];
  const bool decay = flags & kDecay;
  C* __restrict__ p = x.p;
  S* __restrict__ mu = x.b[0];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    const C pi = p[i], gi = x.template grad<Scaled>(i), mi = Load(mu[i]);
    C u = nlr * Sign(b1 * mi + omb1 * gi);
    if (decay) u = u + (pi * factor - pi);
    mu[i] = Store<S>(b2 * mi + omb2 * gi);
    p[i] = pi + u;
  }
}

void CopyIn(const ffi::AnyBuffer& from, ffi::AnyBuffer& to) {
  // With the outputs aliased to the inputs these are the same memory; XLA
  // gives an input that it cannot donate a copy first.
  if (from.untyped_data() != to.untyped_data()) {
    std::memcpy(to.untyped_data(), from.untyped_data(), to.size_bytes());
  }
}

// One call updates G leaves that share their scalars and flags.
// args: scalars, G params, G grads, K buffer arrays; rets: G params, K buffer
// arrays, each aliased to its input, so the kernel reads and writes the
// result buffers. Leaf i's buffers start offsets[i] elements into the buffer
// arrays: a leaf's own buffers (G = 1, offset 0), or its place in the vectors
// that `flatten` keeps.
template <typename C, typename S, template <typename, typename, bool> class K>
ffi::Error Run(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t flags,
               ffi::Span<const int64_t> offsets) {
  const size_t n_leaves = offsets.size(), n_bufs = rets.size() - n_leaves;
  auto s = args.get<ffi::AnyBuffer>(0);
  if (!s.has_value()) return ffi::Error::InvalidArgument("cadence: bad scalars");
  const C* scalars = static_cast<const C*>(s->untyped_data());
  const bool scaled = flags & kScaled;
  const C scale = scaled ? scalars[s->element_count() - 1] : C(1);
  S* bufs[3];
  size_t capacity = ~size_t{0};
  for (size_t k = 0; k < n_bufs; ++k) {
    auto b = rets.get<ffi::AnyBuffer>(n_leaves + k);
    auto in = args.get<ffi::AnyBuffer>(1 + 2 * n_leaves + k);
    if (!b.has_value() || !in.has_value()) {
      return ffi::Error::InvalidArgument("cadence: bad buffer");
    }
    CopyIn(*in, **b);
    bufs[k] = static_cast<S*>((*b)->untyped_data());
    capacity = std::min(capacity, size_t((*b)->element_count()));
  }
  for (size_t i = 0; i < n_leaves; ++i) {
    auto p_in = args.get<ffi::AnyBuffer>(1 + i);
    auto g = args.get<ffi::AnyBuffer>(1 + n_leaves + i);
    auto p = rets.get<ffi::AnyBuffer>(i);
    if (!p_in.has_value() || !g.has_value() || !p.has_value()) {
      return ffi::Error::InvalidArgument("cadence: bad operands");
    }
    Leaf<C, S> leaf{};
    leaf.s = scalars;
    leaf.scale = scale;
    leaf.g = static_cast<const C*>(g->untyped_data());
    leaf.p = static_cast<C*>((*p)->untyped_data());
    leaf.n = g->element_count();
    const int64_t offset = offsets[i];
    if (offset < 0 || (n_bufs && size_t(offset) + leaf.n > capacity)) {
      return ffi::Error::InvalidArgument("cadence: a leaf runs past its buffers");
    }
    CopyIn(*p_in, **p);
    for (size_t k = 0; k < n_bufs; ++k) leaf.b[k] = bufs[k] + offset;
    // Separate instantiations keep the unscaled loop free of the multiply.
    if (scaled) {
      K<C, S, true>(leaf, flags);
    } else {
      K<C, S, false>(leaf, flags);
    }
  }
  return ffi::Error::Success();
}

template <template <typename, typename, bool> class K>
ffi::Error Dispatch(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t flags,
                    ffi::Span<const int64_t> offsets) {
  const size_t n_leaves = offsets.size();
  if (n_leaves < 1 || rets.size() < n_leaves || rets.size() - n_leaves > 3 ||
      args.size() != 1 + n_leaves + rets.size()) {
    return ffi::Error::InvalidArgument("cadence: unexpected operand count");
  }
  auto g = args.get<ffi::AnyBuffer>(1 + n_leaves);
  auto b = rets.get<ffi::AnyBuffer>(rets.size() > n_leaves ? n_leaves : 0);
  if (!g.has_value() || !b.has_value()) {
    return ffi::Error::InvalidArgument("cadence: bad operands");
  }
  using ffi::DataType;
  const DataType param = g->element_type(), state = (*b)->element_type();
  if (param == DataType::F64 && state == DataType::F64) {
    return Run<double, double, K>(args, rets, flags, offsets);
  }
  if (param == DataType::F32 && state == DataType::F32) {
    return Run<float, float, K>(args, rets, flags, offsets);
  }
  if (param == DataType::F32 && state == DataType::BF16) {
    return Run<float, BF16, K>(args, rets, flags, offsets);
  }
  return ffi::Error::InvalidArgument("cadence: unsupported parameter and state dtypes");
}

// Function templates cannot be template template arguments: wrap each kernel.
#define CADENCE_KERNEL(name)                                            \
  template <typename C, typename S, bool Scaled>                        \
  struct name##K {                                                      \
    name##K(const Leaf<C, S>& x, int64_t f) { name<C, S, Scaled>(x, f); } \
  };

CADENCE_KERNEL(Sgd)
CADENCE_KERNEL(Adam)
CADENCE_KERNEL(Rmsprop)
CADENCE_KERNEL(Lion)

// clip_by_global_norm's per-leaf reductions, G leaves per call: out[i] is
// max |x| (kind 0), sum |x| (1) or sum x^2 (2) over leaf i. XLA compiles one
// reduction loop per leaf, which at thousands of leaves is most of a clipped
// step's compile time. The sums accumulate in double (8 partial sums, so the
// loop vectorizes): a different rounding from XLA's float32 tree, never a
// coarser one. NaN propagates through the max as in XLA.
template <int Kind, typename T>
__attribute__((noinline)) double Reduce(const T* __restrict__ x, size_t n) {
  if constexpr (Kind == 0) {
    double m = 0.0;
    bool nan = false;
    for (size_t i = 0; i < n; ++i) {
      const double a = std::fabs(double(x[i]));
      nan |= a != a;
      m = a > m ? a : m;
    }
    return nan ? std::nan("") : m;
  } else {
    constexpr size_t kLanes = 8;
    double acc[kLanes] = {};
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (size_t k = 0; k < kLanes; ++k) {
        const double v = double(x[i + k]);
        acc[k] += Kind == 1 ? std::fabs(v) : v * v;
      }
    }
    double total = 0.0;
    for (; i < n; ++i) {
      const double v = double(x[i]);
      total += Kind == 1 ? std::fabs(v) : v * v;
    }
    for (size_t k = 0; k < kLanes; ++k) total += acc[k];
    return total;
  }
}

template <typename T, typename R>
void Partials(ffi::RemainingArgs args, R* out, int64_t kind) {
  for (size_t i = 0; i < args.size(); ++i) {
    auto x = args.get<ffi::AnyBuffer>(i);
    const T* data = static_cast<const T*>(x->untyped_data());
    const size_t n = x->element_count();
    const double r = kind == 0 ? Reduce<0>(data, n) : kind == 1 ? Reduce<1>(data, n) : Reduce<2>(data, n);
    out[i] = R(r);
  }
}

ffi::Error NormPartials(ffi::RemainingArgs args, ffi::Result<ffi::AnyBuffer> out, int64_t kind) {
  using ffi::DataType;
  if (kind < 0 || kind > 2 || out->element_count() != args.size()) {
    return ffi::Error::InvalidArgument("cadence: bad norm partials call");
  }
  DataType in = DataType::INVALID;
  for (size_t i = 0; i < args.size(); ++i) {
    auto x = args.get<ffi::AnyBuffer>(i);
    if (!x.has_value() || (i > 0 && x->element_type() != in)) {
      return ffi::Error::InvalidArgument("cadence: norm partials take leaves of one dtype");
    }
    in = x->element_type();
  }
  const DataType r = out->element_type();
  void* o = out->untyped_data();
  if (in == DataType::F32 && r == DataType::F32) {
    Partials<float>(args, static_cast<float*>(o), kind);
  } else if (in == DataType::F32 && r == DataType::F64) {
    Partials<float>(args, static_cast<double*>(o), kind);
  } else if (in == DataType::F64 && r == DataType::F64) {
    Partials<double>(args, static_cast<double*>(o), kind);
  } else {
    return ffi::Error::InvalidArgument("cadence: unsupported norm partials dtypes");
  }
  return ffi::Error::Success();
}

}  // namespace

#define CADENCE_HANDLER(symbol, name)                                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                              \
      symbol, Dispatch<name##K>,                                              \
      ffi::Ffi::Bind()                                                        \
          .RemainingArgs()                                                    \
          .RemainingRets()                                                    \
          .Attr<int64_t>("flags")                                             \
          .Attr<ffi::Span<const int64_t>>("offsets"))

CADENCE_HANDLER(CadenceSgd, Sgd);
CADENCE_HANDLER(CadenceAdam, Adam);
CADENCE_HANDLER(CadenceRmsprop, Rmsprop);
CADENCE_HANDLER(CadenceLion, Lion);

XLA_FFI_DEFINE_HANDLER_SYMBOL(CadenceNormPartials, NormPartials,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind"));
