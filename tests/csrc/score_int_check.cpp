// csrc/cpu/score_int.h on its own, compiled for one instruction set by tests/ops/test_score_int_isa.py
// (AVX-512 VNNI, AVX-VNNI, AVX2 without VNNI as on AMD EPYC before Zen 4, plain SSE2):
// int_dot_rows of int8 and int4 rows with int8 queries, odd widths and 1..13 queries, must
// equal the exact int64 sum rounded to float32, bit for bit (every sum is exact by
// construction). The rows hold every byte value, -128 included (a crafted int8 store).
#include "score_int.h"  // csrc/cpu, on the include path
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>
using namespace fasttda_cpu;
template <Fmt F> int check(std::mt19937& g, int64_t n, int64_t d, int64_t nq, bool extreme) {
  const int64_t width = F == Fmt::int4 ? (d + 1) / 2 : d;
  const int64_t stride = width + 5;
  std::vector<uint8_t> rows(n * stride);
  for (auto& b : rows) b = extreme ? (g() % 2 ? 0x80 : 0x7F) : g() & 0xFF;  // extreme: |r| at its largest
  std::vector<int8_t> q(nq * d), qp(nq * d);
  std::vector<int64_t> bias(nq);
  for (auto& x : q) x = extreme ? (g() % 2 ? 127 : -127) : static_cast<int8_t>(static_cast<int>(g() % 255) - 127);
  for (int64_t i = 0; i < nq; ++i) bias[i] = permute_int<F>(q.data() + i * d, d, qp.data() + i * d);
  std::vector<float> out(nq * n);
  int_dot_rows<F>(rows.data(), stride, n, qp.data(), bias.data(), nq, d, d, out.data(), n);
  int64_t bad = 0;
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t r = 0; r < n; ++r) {
      int64_t s = 0;
      for (int64_t j = 0; j < d; ++j) s += int64_t{int_value(F, rows.data() + r * stride, j)} * q[i * d + j];
      const float want = static_cast<float>(s), got = out[i * n + r];
      bad += std::memcmp(&want, &got, 4) != 0;
    }
  printf("fmt %d n %ld d %ld nq %ld extreme %d mismatches %ld\n", (int)F, n, d, nq, (int)extreme, bad);
  return bad == 0;
}
int main() {
  std::mt19937 g(11);
  int ok = 1;
  printf("kIntBytes=%d bias=%ld\n", kIntBytes, (long)kI8Bias);
  for (int64_t d : {1, 7, 64, 129, 300, 1031})
    for (int64_t nq : {1, 2, 3, 5, 8, 13}) {
      ok &= check<Fmt::int8>(g, 23, d, nq, false);
      ok &= check<Fmt::int4>(g, 23, d, nq, false);
    }
  // sums past 2^24 (float32 rounds them) and int32 segments: 40000 elements of 127 * 128
  ok &= check<Fmt::int8>(g, 5, 40000, 3, true);
  ok &= check<Fmt::int4>(g, 5, 40001, 3, true);
  printf(ok ? "ALL OK\n" : "FAILED\n");
  return !ok;
}
