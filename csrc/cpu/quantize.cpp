// C++ CPU quantize to the float store formats: the range check fused into the cast.
//
// fasttda.ops.quantize rejects NaN/inf and values past the format's range before casting.
// Done as torch ops that is a min/max pass over x and then the cast: two reads of x, and
// the reduction alone costs more than the cast. Here one pass over x (in parallel blocks)
// casts and checks, with one compare per element: |x| <= limit is false for NaN, ±inf and
// out-of-range values alike. Roundings are those of torch's own casts (round to nearest
// even; bf16 by the same integer rounding as c10::BFloat16, fp16 by F16C or c10::Half), so
// the result is bitwise equal to x.to(dtype). On a failed check the output is garbage and
// the caller (fasttda/ops/quantize.py) finds the offending rows for its error message.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kGrain = 1 << 16;  // elements per parallel task

constexpr float kFp16Max = 65504.0f;
constexpr float kBf16Max = 3.3895313892515355e38f;  // larger float32 values round to inf in bfloat16

bool cast_bf16(const float* x, uint16_t* out, int64_t n) {
  uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    bad |= static_cast<uint32_t>(!(std::fabs(x[i]) <= kBf16Max));
    out[i] = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  return !bad;
}

bool cast_fp16(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
  uint32_t bad = 0;
#if defined(__AVX512F__)
  const __m512 limit = _mm512_set1_ps(kFp16Max);
  __mmask16 ok = 0xFFFF;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    ok &= _mm512_cmp_ps_mask(_mm512_abs_ps(v), limit, _CMP_LE_OQ);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  bad |= ok != 0xFFFF;
#elif defined(__F16C__) && defined(__AVX__)
  const __m256 limit = _mm256_set1_ps(kFp16Max);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_andnot_ps(sign, v), limit, _CMP_LE_OQ));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  bad |= _mm256_movemask_ps(ok) != 0xFF;
#endif
  for (; i < n; ++i) {
    bad |= static_cast<uint32_t>(!(std::fabs(x[i]) <= kFp16Max));
    out[i] = c10::Half(x[i]).x;
  }
  return !bad;
}

}  // namespace

// (x cast to bf16/fp16, ok): ok is false when x holds NaN/inf or values past the format's range.
std::tuple<at::Tensor, bool> cast_checked_cpu(const at::Tensor& x, const std::string& fmt) {
  TORCH_CHECK(fmt == "bf16" || fmt == "fp16", "cast_checked: fmt must be 'bf16' or 'fp16', got ", fmt);
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "cast_checked: x must be a float32 CPU tensor");
  const at::Tensor src = x.contiguous();
  at::Tensor out = at::empty(src.sizes(), src.options().dtype(fmt == "bf16" ? at::kBFloat16 : at::kHalf));
  const float* in = src.data_ptr<float>();
  uint16_t* dst = static_cast<uint16_t*>(out.data_ptr());
  const int64_t n = src.numel();
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    const bool good = fmt == "bf16" ? cast_bf16(in + lo, dst + lo, hi - lo) : cast_fp16(in + lo, dst + lo, hi - lo);
    if (!good) ok = false;
  });
  return {out, ok.load()};
}
