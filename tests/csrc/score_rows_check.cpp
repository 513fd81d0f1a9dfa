// csrc/cpu/score_rows.h on its own, compiled for one instruction set by tests/ops/test_score_rows_isa.py
// (AVX-512, AVX2/F16C as on AMD EPYC, plain SSE2): dot_rows of every format, odd widths and
// 1..13 queries, against a float64 sum of the scalar decoders (Row<F>::one), within the float32
// bound 1.1·d·2^-24·Σ|x·q|; an fp8 NaN code in a row gives NaN for that row only.
#include "score_rows.h"  // csrc/cpu, on the include path
#include <cstdio>
#include <vector>
#include <random>
#include <cmath>
using namespace fasttda_cpu;
template <Fmt F> int check(std::mt19937& g, int64_t n, int64_t d, int64_t nq, int bytes_per) {
  const int64_t width = F == Fmt::int4 ? (d + 1) / 2 : d * bytes_per;
  const int64_t stride = width + 7;
  std::vector<uint8_t> rows(n * stride);
  std::normal_distribution<float> nd;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < d; ++j) {
      float f = nd(g); uint8_t* p = rows.data() + r * stride;
      if (F == Fmt::fp32) memcpy(p + 4 * j, &f, 4);
      else if (F == Fmt::bf16) { uint32_t u; memcpy(&u, &f, 4); uint16_t h = u >> 16; memcpy(p + 2 * j, &h, 2); }
      else if (F == Fmt::fp16) { uint16_t h = (uint16_t)((int)std::lround(f * 100) & 0x3FF) | 0x3C00; memcpy(p + 2 * j, &h, 2); }
      else if (F == Fmt::int8) p[j] = (uint8_t)(int8_t)std::max(-127, std::min(127, (int)std::lround(f * 40)));
      else if (F == Fmt::fp8) { uint8_t b = g() & 0xFF; if ((b & 0x7F) == 0x7F) b = 0x7E; p[j] = b; }
      else { uint8_t v = g() & 15; p[j / 2] = j % 2 ? (p[j / 2] & 15) | (v << 4) : (p[j / 2] & 0xF0) | v; }
    }
  std::vector<float> q(nq * d), qp(nq * d), out(nq * n);
  for (auto& x : q) x = nd(g);
  for (int64_t i = 0; i < nq; ++i) permute<F>(q.data() + i * d, d, qp.data() + i * d);
  dot_rows<F>(rows.data(), stride, n, qp.data(), nq, d, d, out.data(), n);
  double worst = 0;
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t r = 0; r < n; ++r) {
      double s = 0, a = 0;
      for (int64_t j = 0; j < d; ++j) { double x = Row<F>::one(rows.data() + r * stride, j); s += x * q[i * d + j]; a += std::fabs(x * q[i * d + j]); }
      double bound = 1.1 * d * 5.96e-8 * a + 1e-30;
      worst = std::max(worst, std::fabs(out[i * n + r] - s) / bound);
    }
  // a NaN code in one fp8 row must give NaN scores for that row only
  int nan_ok = 1;
  if (F == Fmt::fp8) {
    rows[3 * stride + d - 1] = 0xFF; rows[5 * stride] = 0x7F;
    dot_rows<F>(rows.data(), stride, n, qp.data(), nq, d, d, out.data(), n);
    for (int64_t i = 0; i < nq; ++i) for (int64_t r = 0; r < n; ++r) nan_ok &= std::isnan(out[i * n + r]) == (r == 3 || r == 5);
  }
  printf("fmt %d n %ld d %ld nq %ld worst/bound %.3f nan_ok %d\n", (int)F, n, d, nq, worst, nan_ok);
  return worst <= 1.0 && nan_ok;
}
int main() {
  std::mt19937 g(7); int ok = 1;
  printf("W=%d\n", W);
  for (int64_t d : {5, 33, 64, 127, 300})
    for (int64_t nq : {1, 2, 3, 5, 8, 13}) {
      ok &= check<Fmt::fp32>(g, 37, d, nq, 4); ok &= check<Fmt::bf16>(g, 37, d, nq, 2); ok &= check<Fmt::fp16>(g, 37, d, nq, 2);
      ok &= check<Fmt::int8>(g, 37, d, nq, 1); ok &= check<Fmt::fp8>(g, 37, d, nq, 1); ok &= check<Fmt::int4>(g, 37, d, nq, 1);
    }
  printf(ok ? "ALL OK\n" : "FAILED\n");
  return !ok;
}
