// C++ CPU dequantize: stored rows to float32 in one pass, the per-row scale applied while
// the converted row is still in L1 (fasttda.ops.quantize.dequantize; bitwise equal to the
// reference, since float(q) * scale is one rounding either way and every stored value
// converts to float32 exactly). A store's full read (`FeatureStore.read`) writes each chunk
// straight into its slice of the caller's buffer (`out`): no per-chunk temporary, and no
// separate int8 -> float32 and multiply passes over the output as composed torch ops make.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <string>

#include "score_rows.h"

using fasttda_cpu::Fmt;

namespace {

constexpr int64_t kGrainBytes = 1 << 16;  // stored bytes per parallel task

Fmt dequantize_fmt(const std::string& f) {
  Fmt fmt;
  TORCH_CHECK(fasttda_cpu::parse_fmt(f, &fmt), "dequantize: unknown row format ", f);
  return fmt;
}

template <Fmt F>
void convert(const uint8_t* base, int64_t stride, int64_t lo, int64_t hi, int64_t dim, const float* scale, float* out,
             int64_t ldo) {
  for (int64_t r = lo; r < hi; ++r) {
    float* o = out + r * ldo;
    fasttda_cpu::rows_to_float<F>(base + r * stride, stride, 1, dim, o);
    if (scale) {
      const float s = scale[r];
      for (int64_t j = 0; j < dim; ++j) o[j] *= s;
    }
  }
}

}  // namespace

// data [N, stored width] (stride(1) == 1) -> float32 [N, dim]; into `out` (float32 [N, dim],
// stride(1) == 1) when given, which is returned.
at::Tensor dequantize_cpu(const at::Tensor& data, const c10::optional<at::Tensor>& scale, const std::string& fmt,
                          int64_t dim, const c10::optional<at::Tensor>& out_opt) {
  const Fmt f = dequantize_fmt(fmt);
  TORCH_CHECK(data.device().is_cpu() && data.dim() == 2 && (data.size(1) <= 1 || data.stride(1) == 1),
              "dequantize: data must be a 2-D CPU tensor with stride(1) == 1");
  const int64_t n = data.size(0);
  TORCH_CHECK(data.size(1) == (f == Fmt::int4 ? (dim + 1) / 2 : dim), "dequantize: data width ", data.size(1),
              " does not match dim ", dim);
  at::Tensor s;
  const float* sp = nullptr;
  if (scale.has_value() && scale->numel()) {
    s = scale->to(at::kFloat).contiguous();
    TORCH_CHECK(s.numel() == n, "dequantize: scale must have one entry per row");
    sp = s.data_ptr<float>();
  }
  at::Tensor out = out_opt.has_value() ? *out_opt : at::empty({n, dim}, data.options().dtype(at::kFloat));
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == n &&
              out.size(1) == dim && (dim <= 1 || out.stride(1) == 1),
              "dequantize: out must be a float32 CPU tensor [", n, ", ", dim, "] with stride(1) == 1");
  if (n == 0 || dim == 0) return out;
  const auto* base = static_cast<const uint8_t*>(data.data_ptr());
  const int64_t stride = data.stride(0) * static_cast<int64_t>(data.element_size());
  float* o = out.data_ptr<float>();
  const int64_t ldo = out.stride(0);
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, data.size(1) * data.element_size()));
  at::parallel_for(0, n, grain, [&](int64_t lo, int64_t hi) {
#define CONVERT(F) convert<F>(base, stride, lo, hi, dim, sp, o, ldo)
    switch (f) {
      case Fmt::fp32: CONVERT(Fmt::fp32); break;
      case Fmt::bf16: CONVERT(Fmt::bf16); break;
      case Fmt::fp16: CONVERT(Fmt::fp16); break;
      case Fmt::int8: CONVERT(Fmt::int8); break;
      case Fmt::fp8: CONVERT(Fmt::fp8); break;
      case Fmt::int4: CONVERT(Fmt::int4); break;
    }
#undef CONVERT
  });
  return out;
}
