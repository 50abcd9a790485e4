// clip_by_global_norm's per-leaf reductions for `Optimizer.step` and `flatten`
// on CPU: one call sums up to 16 leaves. (The optimizers' own single-pass
// kernels are generated from their Python definitions: see _codegen.py.)

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

XLA_FFI_DEFINE_HANDLER_SYMBOL(CadenceNormPartials, NormPartials,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind"));
