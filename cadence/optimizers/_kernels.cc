// Single-pass CPU kernels for `Optimizer.step`: one loop per leaf that reads
// the parameter, the gradient and each buffer once and writes the new
// parameter and buffers in place (XLA aliases them to their inputs).
//
// XLA's CPU backend compiles the same update to one loop per output array
// (AdamW: three, 40 bytes per float32 parameter instead of 28), and a custom
// call is the only way to give it a loop with several outputs.
//
// Each kernel repeats, operation for operation, the elementwise program that
// XLA compiles from the optimizer's `_kernel` in Python, so both paths give
// bit-identical results. The per-group scalars (learning rate, bias
// corrections, ...) are computed by XLA and passed in as one vector. Built for
// the host CPU with -ffp-contract=fast: XLA's CPU backend fuses a product into
// a following sum or difference where the CPU has FMA, and so must we.

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Flags, shared with cadence/optimizers/_native.py.
constexpr int64_t kDecay = 1;       // weight decay reads the parameter
constexpr int64_t kBuffer = 2;      // a momentum buffer is kept
constexpr int64_t kNesterov = 4;    // SGD: Nesterov momentum
constexpr int64_t kCentered = 8;    // RMSprop: centered
constexpr int64_t kDecoupled = 16;  // Adam: decoupled decay (AdamW)
constexpr int64_t kScaled = 32;     // the gradient is multiplied by the last scalar first

template <typename T>
struct Leaf {
  const T* s;  // the scalars
  const T* __restrict__ g;  // the gradient
  T* p;        // the parameter, updated in place
  T* b[3];  // the buffers, updated in place
  size_t n;
  T scale;  // clip_by_global_norm's coefficient (kScaled)

  template <bool Scaled>
  T grad(size_t i) const {
    if constexpr (Scaled) {
      return g[i] * scale;
    } else {
      return g[i];
    }
  }
};

template <typename T, bool Scaled>
void Sgd(const Leaf<T>& x, int64_t flags) {
  // s: weight_decay, keep, take, momentum, -lr
  const T wd = x.s[0], keep = x.s[1], take = x.s[2], momentum = x.s[3], nlr = x.s[4];
  const bool decay = flags & kDecay, buffer = flags & kBuffer, nesterov = flags & kNesterov;
  T* __restrict__ p = x.p;
  T* __restrict__ buf = x.b[0];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    T d = x.template grad<Scaled>(i);
    if (decay) d = d + wd * p[i];
    if (buffer) {
      const T b = keep * buf[i] + take * d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] = p[i] + nlr * d;
  }
}

template <typename T, bool Scaled>
void Adam(const Leaf<T>& x, int64_t flags) {
  // s: weight_decay, 1-b1, b2, 1-b2, -step_size, 1/sqrt(1-b2^t), eps, 1-lr*wd
  const T wd = x.s[0], omb1 = x.s[1], b2 = x.s[2], omb2 = x.s[3], nstep = x.s[4],
          rbc2 = x.s[5], eps = x.s[6], factor = x.s[7];
  const bool decay = flags & kDecay, decoupled = flags & kDecoupled;
  T* __restrict__ p = x.p;
  T* __restrict__ mu = x.b[0];
  T* __restrict__ nu = x.b[1];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    const T pi = p[i];
    T gi = x.template grad<Scaled>(i);
    if (decay && !decoupled) gi = gi + wd * pi;
    const T m = mu[i] + omb1 * (gi - mu[i]);
    const T v = b2 * nu[i] + omb2 * (gi * gi);
    mu[i] = m;
    nu[i] = v;
    T u = (nstep * m) / (std::sqrt(v) * rbc2 + eps);
    if (decay && decoupled) u = u + (pi * factor - pi);
    p[i] = pi + u;
  }
}

template <typename T, bool Scaled>
void Rmsprop(const Leaf<T>& x, int64_t flags) {
  // s: weight_decay, alpha, 1-alpha, eps, momentum, -lr
  const T wd = x.s[0], alpha = x.s[1], oma = x.s[2], eps = x.s[3], momentum = x.s[4],
          nlr = x.s[5];
  const bool decay = flags & kDecay, centered = flags & kCentered, buffer = flags & kBuffer;
  T* __restrict__ p = x.p;
  T* __restrict__ sq = x.b[0];
  // Buffers in the state's field order: square_avg, grad_avg, momentum_buffer.
  T* __restrict__ ga = centered ? x.b[1] : nullptr;
  T* __restrict__ buf = buffer ? x.b[centered ? 2 : 1] : nullptr;
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    T gi = x.template grad<Scaled>(i);
    if (decay) gi = gi + wd * p[i];
    const T s2 = alpha * sq[i] + oma * (gi * gi);
    sq[i] = s2;
    T avg;
    if (centered) {
      const T a = ga[i] + oma * (gi - ga[i]);
      ga[i] = a;
      avg = std::sqrt(s2 - a * a);
    } else {
      avg = std::sqrt(s2);
    }
    avg = avg + eps;
    T u;
    if (buffer) {
      const T b = momentum * buf[i] + gi / avg;
      buf[i] = b;
      u = nlr * b;
    } else {
      u = (nlr * gi) / avg;
    }
    p[i] = p[i] + u;
  }
}

template <typename T>
inline T Sign(T v) {
  // XLA's sign: +-1 where v is nonzero, else v itself (+-0, NaN).
  return (v < T(0) || v > T(0)) ? std::copysign(T(1), v) : v;
}

template <typename T, bool Scaled>
void Lion(const Leaf<T>& x, int64_t flags) {
  // s: -lr, b1, 1-b1, b2, 1-b2, 1-lr*wd
  const T nlr = x.s[0], b1 = x.s[1], omb1 = x.s[2], b2 = x.s[3], omb2 = x.s[4],
          factor = x.s[5];
  const bool decay = flags & kDecay;
  T* __restrict__ p = x.p;
  T* __restrict__ mu = x.b[0];
#pragma GCC ivdep
  for (size_t i = 0; i < x.n; ++i) {
    const T pi = p[i], gi = x.template grad<Scaled>(i), mi = mu[i];
    T u = nlr * Sign(b1 * mi + omb1 * gi);
    if (decay) u = u + (pi * factor - pi);
    mu[i] = b2 * mi + omb2 * gi;
    p[i] = pi + u;
  }
}

// args: scalars, param, grad, buffers...; rets: param, buffers... (aliased to
// their inputs, so the kernel reads and writes the result buffers).
template <typename T, void (*K)(const Leaf<T>&, int64_t), void (*KScaled)(const Leaf<T>&, int64_t)>
ffi::Error Run(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t flags) {
  const size_t n_bufs = rets.size() - 1;
  if (n_bufs > 3 || args.size() != rets.size() + 2) {
    return ffi::Error::InvalidArgument("cadence: unexpected operand count");
  }
  auto s = args.get<ffi::AnyBuffer>(0);
  auto g = args.get<ffi::AnyBuffer>(2);
  auto p = rets.get<ffi::AnyBuffer>(0);
  if (!s.has_value() || !g.has_value() || !p.has_value()) {
    return ffi::Error::InvalidArgument("cadence: bad operands");
  }
  Leaf<T> leaf{};
  leaf.s = static_cast<const T*>(s->untyped_data());
  leaf.g = static_cast<const T*>(g->untyped_data());
  leaf.p = static_cast<T*>((*p)->untyped_data());
  leaf.n = g->element_count();
  const bool scaled = flags & kScaled;
  leaf.scale = scaled ? leaf.s[s->element_count() - 1] : T(1);
  // With the outputs aliased to the inputs the buffers are the same memory;
  // XLA copies an input first when it cannot donate it.
  for (size_t k = 0; k < n_bufs; ++k) {
    auto b = rets.get<ffi::AnyBuffer>(1 + k);
    if (!b.has_value()) return ffi::Error::InvalidArgument("cadence: bad buffer");
    leaf.b[k] = static_cast<T*>((*b)->untyped_data());
  }
  auto src = args.get<ffi::AnyBuffer>(1);
  if (src.has_value() && src->untyped_data() != leaf.p) {
    const T* from = static_cast<const T*>(src->untyped_data());
    for (size_t i = 0; i < leaf.n; ++i) leaf.p[i] = from[i];
  }
  for (size_t k = 0; k < n_bufs; ++k) {
    auto in = args.get<ffi::AnyBuffer>(3 + k);
    if (in.has_value() && in->untyped_data() != leaf.b[k]) {
      const T* from = static_cast<const T*>(in->untyped_data());
      for (size_t i = 0; i < leaf.n; ++i) leaf.b[k][i] = from[i];
    }
  }
  // Separate instantiations keep the unscaled loop free of the multiply.
  (scaled ? KScaled : K)(leaf, flags);
  return ffi::Error::Success();
}

template <void (*K32)(const Leaf<float>&, int64_t), void (*K32s)(const Leaf<float>&, int64_t),
          void (*K64)(const Leaf<double>&, int64_t), void (*K64s)(const Leaf<double>&, int64_t)>
ffi::Error Dispatch(ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t flags) {
  auto g = args.get<ffi::AnyBuffer>(2);
  if (!g.has_value()) return ffi::Error::InvalidArgument("cadence: missing gradient");
  switch (g->element_type()) {
    case ffi::DataType::F32:
      return Run<float, K32, K32s>(args, rets, flags);
    case ffi::DataType::F64:
      return Run<double, K64, K64s>(args, rets, flags);
    default:
      return ffi::Error::InvalidArgument("cadence: native kernels take float32 or float64");
  }
}

#define CADENCE_HANDLER(symbol, kernel)                                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol,                                                  \
                                (Dispatch<kernel<float, false>, kernel<float, true>,     \
                                          kernel<double, false>, kernel<double, true>>), \
                                ffi::Ffi::Bind().RemainingArgs().RemainingRets().Attr<int64_t>( \
                                    "flags"))

}  // namespace

CADENCE_HANDLER(CadenceSgd, Sgd);
CADENCE_HANDLER(CadenceAdam, Adam);
CADENCE_HANDLER(CadenceRmsprop, Rmsprop);
CADENCE_HANDLER(CadenceLion, Lion);
