// Integer dot products of int8 queries with int8 or int4 rows: the scan of csrc/cpu/score.cpp
// when the caller quantized the queries (fasttda.ops.score, query_precision="int8").
//
// Every sum is exact: products of int8 by int8 (or int4) accumulate in int32 lanes over
// segments short enough that no lane can overflow, then in int64; the row's total converts
// to float32 once (round to nearest). So the result is bitwise the reference's float64 dot
// product of the same integers rounded to float32, on every instruction set.
//
// Instruction sets (no torch here: tests/csrc/score_int_check.cpp builds it for each):
// * AVX-512 VNNI (Intel Cascade Lake and later, AMD Zen 4): vpdpbusd multiplies unsigned by
//   signed bytes and adds groups of four into int32 lanes, 64 bytes per instruction. int8
//   rows enter as r + 128 (one xor); the sum is corrected by 128 * sum(q).
// * AVX-VNNI (256-bit vpdpbusd, Alder Lake, Zen 5): the same, 32 bytes per instruction.
// * AVX2 (AMD EPYC before Zen 4, Haswell): vpmaddubsw on |r| and q with r's sign (pair sums
//   at most 2 * 128 * 127 < 2^15, so its int16 saturation never triggers), then vpmaddwd.
// * anything else: scalar code with the same arithmetic.
// int4 rows are nibbles 0..15 meaning n - 8: the nibble is the unsigned operand on every
// set, and the sum is corrected by 8 * sum(q). Queries must lie in [-127, 127].
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "score_rows.h"

namespace fasttda_cpu {

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int kIntBytes = 64;
typedef __m512i vq;
inline vq vq_load(const void* p) { return _mm512_loadu_si512(p); }
inline vq vq_zero() { return _mm512_setzero_si512(); }
inline int64_t vq_sum(vq v) { return _mm512_reduce_add_epi32(v); }
inline vq u8_madd(vq acc, vq u, vq q) { return _mm512_dpbusd_epi32(acc, u, q); }
inline vq i8_row(vq r) { return _mm512_xor_si512(r, _mm512_set1_epi8(-128)); }
inline vq i8_madd(vq acc, vq row, vq q) { return _mm512_dpbusd_epi32(acc, row, q); }
constexpr int64_t kI8Bias = 128;
inline vq nibbles_lo(vq b) { return _mm512_and_si512(b, _mm512_set1_epi8(15)); }
inline vq nibbles_hi(vq b) { return _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi8(15)); }
#elif defined(__AVX2__)
constexpr int kIntBytes = 32;
typedef __m256i vq;
inline vq vq_load(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline vq vq_zero() { return _mm256_setzero_si256(); }
inline int64_t vq_sum(vq v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
#if defined(__AVXVNNI__)
inline vq u8_madd(vq acc, vq u, vq q) { return _mm256_dpbusd_avx_epi32(acc, u, q); }
inline vq i8_row(vq r) { return _mm256_xor_si256(r, _mm256_set1_epi8(-128)); }
inline vq i8_madd(vq acc, vq row, vq q) { return _mm256_dpbusd_avx_epi32(acc, row, q); }
constexpr int64_t kI8Bias = 128;
#else
// u <= 15 here (nibbles): pair sums at most 2 * 15 * 127, far from int16 saturation.
inline vq u8_madd(vq acc, vq u, vq q) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1)));
}
inline vq i8_row(vq r) { return r; }
inline vq i8_madd(vq acc, vq r, vq q) {  // |r| * (q with r's sign); |-128| reads as the unsigned 128
  return u8_madd(acc, _mm256_sign_epi8(r, r), _mm256_sign_epi8(q, r));
}
constexpr int64_t kI8Bias = 0;
#endif
inline vq nibbles_lo(vq b) { return _mm256_and_si256(b, _mm256_set1_epi8(15)); }
inline vq nibbles_hi(vq b) { return _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(15)); }
#else
constexpr int kIntBytes = 16;
struct vq {
  int32_t lane[4];
  uint8_t byte[16];
};
inline vq vq_load(const void* p) {
  vq v{};
  std::memcpy(v.byte, p, 16);
  return v;
}
inline vq vq_zero() { return vq{}; }
inline int64_t vq_sum(vq v) { return int64_t{v.lane[0]} + v.lane[1] + v.lane[2] + v.lane[3]; }
inline vq u8_madd(vq acc, vq u, vq q) {
  for (int i = 0; i < 16; ++i) acc.lane[i / 4] += int32_t{u.byte[i]} * static_cast<int8_t>(q.byte[i]);
  return acc;
}
inline vq i8_row(vq r) { return r; }
inline vq i8_madd(vq acc, vq r, vq q) {
  for (int i = 0; i < 16; ++i) acc.lane[i / 4] += int32_t{static_cast<int8_t>(r.byte[i])} * static_cast<int8_t>(q.byte[i]);
  return acc;
}
constexpr int64_t kI8Bias = 0;
inline vq nibbles_lo(vq b) {
  for (uint8_t& x : b.byte) x &= 15;
  return b;
}
inline vq nibbles_hi(vq b) {
  for (uint8_t& x : b.byte) x >>= 4;
  return b;
}
#endif

// Fully unrolled tile loops keep the R x QT accumulators in registers (GCC otherwise
// round-trips some of them through the stack on every step).
#define FASTTDA_UNROLL _Pragma("GCC unroll 32")

// Elements per vector step: int8 one byte each, int4 two per byte (low nibbles, then high).
template <Fmt F>
constexpr int int_step() {
  return F == Fmt::int4 ? 2 * kIntBytes : kIntBytes;
}

// Elements per int32 segment: each lane gains at most 4 * 255 * 127 per step, so 2^14
// elements (256 steps of 64 bytes) stay far below 2^31.
constexpr int64_t kIntSegment = 1 << 14;

// Query q (int8, natural order, length d) in the order the row vectors take: for int4 each
// step's even elements (low nibbles), then its odd ones. Returns the bias correction: the
// row's offset (128 for int8 on VNNI, 8 for int4) times the sum of q over the full steps.
template <Fmt F>
int64_t permute_int(const int8_t* q, int64_t d, int8_t* out) {
  constexpr int step = int_step<F>();
  const int64_t full = d / step * step;
  int64_t sum = 0;
  for (int64_t j = 0; j < full; ++j) sum += q[j];
  if (F == Fmt::int4) {
    for (int64_t j = 0; j < full; j += step)
      for (int i = 0; i < kIntBytes; ++i) out[j + i] = q[j + 2 * i], out[j + kIntBytes + i] = q[j + 2 * i + 1];
  } else {
    std::memcpy(out, q, full);
  }
  std::memcpy(out + full, q + full, d - full);
  return sum * (F == Fmt::int4 ? 8 : kI8Bias);
}

inline int32_t int_value(Fmt f, const uint8_t* row, int64_t j) {
  if (f == Fmt::int4) return ((j % 2 ? row[j / 2] >> 4 : row[j / 2] & 15)) - 8;
  return static_cast<int8_t>(row[j]);
}

// out[q * ldo + r] = <row r, query q> for QT permuted int8 queries (stride ld) and R rows.
// Each step also prefetches (into L2) the line `ahead` bytes further in each row: spread over
// the loop, the prefetches overlap the multiplies (a burst at the tile's start stalled on the
// line fill buffers: 8 queries over 500k x 1024 int8 rows took 34 ms a core instead of 24).
template <Fmt F, int QT, int R>
inline void int_dot_tile(const uint8_t* const* rows, const int8_t* qp, int64_t ld, const int64_t* bias, int64_t d,
                         float* out, int64_t ldo, int64_t ahead) {
  constexpr int step = int_step<F>();
  const int64_t full = d / step * step;
  int64_t total[R][QT] = {};
  for (int64_t s0 = 0; s0 < full; s0 += kIntSegment) {
    const int64_t s1 = std::min(full, s0 + kIntSegment);
    vq acc[R][QT];
    FASTTDA_UNROLL for (int r = 0; r < R; ++r)
      FASTTDA_UNROLL for (int q = 0; q < QT; ++q) acc[r][q] = vq_zero();
    for (int64_t j = s0; j < s1; j += step) {
      FASTTDA_UNROLL for (int r = 0; r < R; ++r) __builtin_prefetch(rows[r] + ahead + (F == Fmt::int4 ? j / 2 : j), 0, 2);
      if (F == Fmt::int4) {
        vq lo[R], hi[R];
        FASTTDA_UNROLL for (int r = 0; r < R; ++r) {
          const vq b = vq_load(rows[r] + j / 2);
          lo[r] = nibbles_lo(b), hi[r] = nibbles_hi(b);
        }
        FASTTDA_UNROLL for (int q = 0; q < QT; ++q) {
          const vq ql = vq_load(qp + q * ld + j), qh = vq_load(qp + q * ld + j + kIntBytes);
          FASTTDA_UNROLL for (int r = 0; r < R; ++r) acc[r][q] = u8_madd(u8_madd(acc[r][q], lo[r], ql), hi[r], qh);
        }
      } else {
        vq x[R];
        FASTTDA_UNROLL for (int r = 0; r < R; ++r) x[r] = i8_row(vq_load(rows[r] + j));
        FASTTDA_UNROLL for (int q = 0; q < QT; ++q) {
          const vq qv = vq_load(qp + q * ld + j);
          FASTTDA_UNROLL for (int r = 0; r < R; ++r) acc[r][q] = i8_madd(acc[r][q], x[r], qv);
        }
      }
    }
    FASTTDA_UNROLL for (int r = 0; r < R; ++r)
      FASTTDA_UNROLL for (int q = 0; q < QT; ++q) total[r][q] += vq_sum(acc[r][q]);
  }
  FASTTDA_UNROLL for (int r = 0; r < R; ++r)
    FASTTDA_UNROLL for (int q = 0; q < QT; ++q) {
      int64_t s = total[r][q] - bias[q];
      for (int64_t j = full; j < d; ++j) s += int_value(F, rows[r], j) * int64_t{qp[q * ld + j]};
      out[q * ldo + r] = static_cast<float>(s);
    }
}

// Rows per tile: R * QT accumulators, R row vectors (two for int4) and a query in registers
// (32 vector registers with AVX-512, 16 otherwise); more rows side by side only add streams.
template <int QT>
constexpr int int_rows_per_tile() {
  return kIntBytes == 64 || QT < 8 ? 2 : 1;
}

template <Fmt F, int QT>
void int_dot_rows_qt(const uint8_t* base, int64_t stride, int64_t n, const int8_t* qp, int64_t ld,
                     const int64_t* bias, int64_t d, float* out, int64_t ldo) {
  constexpr int R = int_rows_per_tile<QT>();
  const int64_t ahead = prefetch_ahead(stride);
  int64_t r = 0;
  for (; r + R <= n; r += R) {
    const uint8_t* rows[R];
    for (int i = 0; i < R; ++i) rows[i] = base + (r + i) * stride;
    int_dot_tile<F, QT, R>(rows, qp, ld, bias, d, out + r, ldo, ahead);
  }
  for (; r < n; ++r) {
    const uint8_t* rows[1] = {base + r * stride};
    int_dot_tile<F, QT, 1>(rows, qp, ld, bias, d, out + r, ldo, ahead);
  }
}

// out[q * ldo + r] = <row r, query q> for n rows from `base` (byte stride) and nq int8
// queries permuted by permute_int (stride ld), bias[q] its return value.
template <Fmt F>
void int_dot_rows(const uint8_t* base, int64_t stride, int64_t n, const int8_t* qp, const int64_t* bias, int64_t nq,
                  int64_t ld, int64_t d, float* out, int64_t ldo) {
  int64_t q = 0;
  for (; q + 8 <= nq; q += 8) int_dot_rows_qt<F, 8>(base, stride, n, qp + q * ld, ld, bias + q, d, out + q * ldo, ldo);
  if (q + 4 <= nq) int_dot_rows_qt<F, 4>(base, stride, n, qp + q * ld, ld, bias + q, d, out + q * ldo, ldo), q += 4;
  if (q + 2 <= nq) int_dot_rows_qt<F, 2>(base, stride, n, qp + q * ld, ld, bias + q, d, out + q * ldo, ldo), q += 2;
  if (q < nq) int_dot_rows_qt<F, 1>(base, stride, n, qp + q * ld, ld, bias + q, d, out + q * ldo, ldo);
}

}  // namespace fasttda_cpu
