// C++ CPU quantize to the scaled store formats (int8, int4, fp8_e4m3): one pass per row.
//
// The reference (fasttda/ops/quantize.py, quantize_reference) is a chain of torch ops over
// the whole batch: a range check, a per-row min/max, a division, round, clamp and cast, each
// a pass over memory (0.8 s for 1 GB of float32 rows on 2 cores, more than writing the
// store). Here each row is read once from memory and once more from L1: its largest |x|
// (and whether it is finite), then x / scale rounded and packed. Every operation is the
// reference's in float32 (IEEE division, round half to even, c10's float -> fp8 e4m3fn
// rounding), so the result is bitwise equal to it; a row holding NaN/inf clears `ok` and the
// caller (fasttda.ops.quantize) names the rows in its error.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace {

enum class Scaled { int8, int4, fp8 };

// float32 -> fp8 e4m3fn bits, as c10::detail::fp8e4m3fn_from_fp32_value (round to nearest
// even; |f| >= 480 gives NaN, which the clamp to ±448 rules out here), written without
// branches so that GCC vectorizes the row loop.
inline uint8_t fp8_from_float(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  // below 2^-6 the fp8 value is subnormal: adding 2^14 in float32 rounds it to the step 2^-9, as c10 does
  const uint32_t denorm_bits = 141u << 23;
  float magnitude, denorm;
  std::memcpy(&magnitude, &bits, 4);
  std::memcpy(&denorm, &denorm_bits, 4);
  const float sum = magnitude + denorm;
  uint32_t sum_bits;
  std::memcpy(&sum_bits, &sum, 4);
  const uint32_t subnormal = sum_bits - denorm_bits;
  const uint32_t normal = (bits + (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + ((bits >> 20) & 1u)) >> 20;
  const uint32_t result = bits >= (1087u << 20) ? 0x7Fu : bits < (121u << 23) ? subnormal : normal;
  return static_cast<uint8_t>(result | (sign >> 24));
}

// y rounded half to even (rint under the default rounding mode) and clamped to ±qmax;
// std::min/max rather than fmin/fmax, which keep GCC from vectorizing (their NaN rules).
inline float on_grid(float y, float qmax) { return std::min(std::max(std::rint(y), -qmax), qmax); }

// One row: its scale, and the row quantized into out. False when it holds NaN/inf.
template <Scaled F>
bool quantize_row(const float* x, int64_t d, float qmax, uint8_t* out, float* scale) {
  float amax = 0.0f;
  uint32_t bad = 0;
#pragma omp simd reduction(max : amax) reduction(| : bad)
  for (int64_t j = 0; j < d; ++j) {
    const float a = std::fabs(x[j]);
    bad |= static_cast<uint32_t>(!(a <= FLT_MAX));
    amax = a > amax ? a : amax;
  }
  if (bad) return false;
  const float s = amax / qmax;
  const float div = s > 0.0f ? s : 1.0f;
  *scale = s;
  if (F == Scaled::int8) {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      const float q = on_grid(x[j] / div, qmax);
      out[j] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  } else if (F == Scaled::int4) {
#pragma omp simd
    for (int64_t j = 0; j < d / 2; ++j) {
      const float lo = on_grid(x[2 * j] / div, qmax);
      const float hi = on_grid(x[2 * j + 1] / div, qmax);
      out[j] = static_cast<uint8_t>(static_cast<int>(lo) + 8) | static_cast<uint8_t>((static_cast<int>(hi) + 8) << 4);
    }
    if (d % 2) {  // the odd last element; its pair is the padding zero (nibble 8)
      const float lo = on_grid(x[d - 1] / div, qmax);
      out[d / 2] = static_cast<uint8_t>(static_cast<int>(lo) + 8) | static_cast<uint8_t>(8 << 4);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) out[j] = fp8_from_float(std::min(std::max(x[j] / div, -qmax), qmax));
  }
  return true;
}

}  // namespace

// (data, scale, ok) of float32 rows x [N, d] in an int8 / int4 / fp8_e4m3 store's layout;
// ok is false when x holds NaN/inf (data and scale are then garbage).
std::tuple<at::Tensor, at::Tensor, bool> quantize_scaled_cpu(const at::Tensor& x, const std::string& fmt) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2,
              "quantize_scaled: x must be a 2-D float32 CPU tensor");
  Scaled kind;
  float qmax;
  if (fmt == "int8") {
    kind = Scaled::int8, qmax = 127.0f;
  } else if (fmt == "int4") {
    kind = Scaled::int4, qmax = 7.0f;
  } else if (fmt == "fp8_e4m3") {
    kind = Scaled::fp8, qmax = 448.0f;
  } else {
    TORCH_CHECK(false, "quantize_scaled: fmt must be int8, int4 or fp8_e4m3, got ", fmt);
  }
  const at::Tensor src = x.contiguous();
  const int64_t n = src.size(0), d = src.size(1);
  const int64_t width = kind == Scaled::int4 ? (d + 1) / 2 : d;
  const auto dtype = kind == Scaled::int8 ? at::kChar : kind == Scaled::int4 ? at::kByte : at::kFloat8_e4m3fn;
  at::Tensor data = at::empty({n, width}, src.options().dtype(dtype));
  at::Tensor scale = at::empty({n}, src.options());
  const float* in = src.data_ptr<float>();
  uint8_t* dst = static_cast<uint8_t*>(data.data_ptr());
  float* sc = scale.data_ptr<float>();
  std::atomic<bool> ok{true};
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(d, 1));
  at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) {
    bool good = true;
    for (int64_t r = lo; r < hi; ++r) {
      const float* row = in + r * d;
      uint8_t* o = dst + r * width;
      switch (kind) {
        case Scaled::int8: good &= quantize_row<Scaled::int8>(row, d, qmax, o, sc + r); break;
        case Scaled::int4: good &= quantize_row<Scaled::int4>(row, d, qmax, o, sc + r); break;
        case Scaled::fp8: good &= quantize_row<Scaled::fp8>(row, d, qmax, o, sc + r); break;
      }
    }
    if (!good) ok = false;
  });
  return {data, scale, ok.load()};
}
