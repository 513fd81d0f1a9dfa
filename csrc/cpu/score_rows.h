// Stored rows to float32 vectors, and the register-blocked dot products of a few queries
// against a few rows (the scan of csrc/cpu/score.cpp for small Q).
//
// No torch here (a standalone harness can include it). Vectors are GCC vector extensions
// of the machine's width W (16 floats with AVX-512, 8 with AVX/AVX2, 4 otherwise), so one
// source serves Intel AVX-512 and AMD AVX2; FMA and half-precision conversion use the
// intrinsics when the compiler targets them (-march=native), and plain code otherwise.
//
// Every product is float32 times float32 with float32 accumulation: the stored value
// converts to float32 exactly (int8, int4, fp8, fp16 and bf16 are all subsets of float32),
// so a score differs from the reference's matmul only in the order of its float32 sums
// (the error bound is the sum length's γ_n, as for any float32 dot product). One exception
// in form, not in value: the dot path reads fp8 as fp16 bits, which is the fp8 value times
// 2^-8 exactly (DotRow<fp8>); the sum is scaled back by 2^8, a power of two, so every
// rounding is the same (products below 2^-118 aside, far under any score's resolution).
//
// The scan is bound by memory latency, not arithmetic: each row tile prefetches the rows
// kPrefetchBytes ahead (the hardware streamer loses track of several rows read side by side),
// which took int8 at Q=1 from 47 to 32 ms on 500k x 1024 rows (2 cores, AVX-512), a line at
// a time inside the dot loop (dot_tile).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#if defined(__AVX__) || defined(__AVX512F__) || defined(__F16C__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace fasttda_cpu {

// Order = the codes of python/fasttda/formats.py (tests/test_formats.py checks it).
enum class Fmt { fp32, bf16, fp16, int8, fp8, int4 };

// A store format's name (fasttda.formats.FORMATS) to its Fmt; false for any other name.
inline bool parse_fmt(const std::string& f, Fmt* out) {
  if (f == "fp32") return *out = Fmt::fp32, true;
  if (f == "bf16") return *out = Fmt::bf16, true;
  if (f == "fp16") return *out = Fmt::fp16, true;
  if (f == "int8") return *out = Fmt::int8, true;
  if (f == "fp8_e4m3") return *out = Fmt::fp8, true;
  if (f == "int4") return *out = Fmt::int4, true;
  return false;
}

#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif

typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
typedef uint32_t vu __attribute__((vector_size(W * 4)));
typedef int8_t vb __attribute__((vector_size(W)));
typedef uint8_t vub __attribute__((vector_size(W)));
typedef uint16_t vh __attribute__((vector_size(W * 2)));

template <class V>
inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// W bytes / halves at p widened to W int32 lanes (GCC scalarizes __builtin_convertvector here).
inline vi widen_i8(const uint8_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(load<vb>(p), vi);
#endif
}

inline vi widen_u8(const uint8_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(load<vub>(p), vi);
#endif
}

inline vi widen_u16(const uint8_t* p) {
#if defined(__AVX512F__)
  return (vi)_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__AVX2__)
  return (vi)_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  return __builtin_convertvector(load<vh>(p), vi);
#endif
}

inline vf fma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

inline float hsum(vf v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
#endif
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else if (exp) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else {  // zero or subnormal: mant * 2^-24
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// fp8 e4m3fn bits -> float32 bits: exponent bias 7 -> 127, subnormals m * 2^-9, 0x7F/0xFF NaN.
inline vu fp8_bits(vi x) {
  const vi mag = x & 0x7F;
  const vu normal = (vu)((mag << 20) + (120 << 23));
  const vu sub = (vu)(__builtin_convertvector(mag & 7, vf) * 0.001953125f);  // m * 2^-9
  vu v = ((mag & 0x78) == 0) ? sub : normal;
  v = (mag == 0x7F) ? (vu)(vi{} + 0x7FC00000) : v;
  return v | (vu)((x & 0x80) << 24);
}

inline float fp8_to_float(uint8_t b) {
  vi x{};
  x[0] = b;
  vu bits = fp8_bits(x);
  float f;
  uint32_t u = bits[0];
  std::memcpy(&f, &u, 4);
  return f;
}

// A row format as float32 vectors. `step` elements per call of `vec` (kVecs vectors:
// element order given by `lane`, which the queries are permuted into); `one` converts a
// single element in natural order (the tail past the last full step).
template <Fmt F>
struct Row;

template <>
struct Row<Fmt::fp32> {
  static constexpr int kVecs = 1;
  static void vec(const uint8_t* row, int64_t j, vf* out) { out[0] = load<vf>(row + 4 * j); }
  static float one(const uint8_t* row, int64_t j) { return load<float>(row + 4 * j); }
};

template <>
struct Row<Fmt::bf16> {
  static constexpr int kVecs = 1;
  static void vec(const uint8_t* row, int64_t j, vf* out) {
    out[0] = (vf)(widen_u16(row + 2 * j) << 16);
  }
  static float one(const uint8_t* row, int64_t j) {
    uint32_t u = static_cast<uint32_t>(load<uint16_t>(row + 2 * j)) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

template <>
struct Row<Fmt::fp16> {
  static constexpr int kVecs = 1;
  static void vec(const uint8_t* row, int64_t j, vf* out) {
#if defined(__AVX512F__)
    out[0] = (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * j)));
#elif defined(__F16C__) && defined(__AVX__)
    out[0] = (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * j)));
#else
    for (int i = 0; i < W; ++i) out[0][i] = one(row, j + i);
#endif
  }
  static float one(const uint8_t* row, int64_t j) { return half_to_float(load<uint16_t>(row + 2 * j)); }
};

template <>
struct Row<Fmt::int8> {
  static constexpr int kVecs = 1;
  static void vec(const uint8_t* row, int64_t j, vf* out) {
    out[0] = __builtin_convertvector(widen_i8(row + j), vf);
  }
  static float one(const uint8_t* row, int64_t j) { return static_cast<float>(static_cast<int8_t>(row[j])); }
};

template <>
struct Row<Fmt::fp8> {
  static constexpr int kVecs = 1;
  static void vec(const uint8_t* row, int64_t j, vf* out) {
    out[0] = (vf)fp8_bits(widen_u8(row + j));
  }
  static float one(const uint8_t* row, int64_t j) { return fp8_to_float(row[j]); }
};

// int4: W bytes hold 2W elements; the low nibbles (even elements) form the first vector,
// the high nibbles (odd elements) the second: queries are permuted to match (`permute`).
template <>
struct Row<Fmt::int4> {
  static constexpr int kVecs = 2;
  static void vec(const uint8_t* row, int64_t j, vf* out) {
    const vi x = widen_u8(row + j / 2);
#if defined(__AVX512F__)
    // a 16-entry table lookup per nibble (vpermps reads the index's low 4 bits only): two
    // shuffles where masking, subtracting and converting took six ops
    const __m512 codes = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    out[0] = (vf)_mm512_permutexvar_ps((__m512i)x, codes);
    out[1] = (vf)_mm512_permutexvar_ps(_mm512_srli_epi32((__m512i)x, 4), codes);
#else
    out[0] = __builtin_convertvector((x & 15) - 8, vf);
    out[1] = __builtin_convertvector((x >> 4) - 8, vf);
#endif
  }
  static float one(const uint8_t* row, int64_t j) {
    const uint8_t b = row[j / 2];
    return static_cast<float>((j % 2 ? b >> 4 : b & 15)) - 8.0f;
  }
};

// The conversion the dot path uses: Row<F> itself, except where a cheaper exact form exists.
// kScale: each converted value is the stored value divided by kScale (a power of two), so a
// dot product is multiplied by kScale at the end. kNanBytes: the conversion cannot see NaN
// codes, so rows are checked for them separately (see has_fp8_nan).
template <Fmt F>
struct DotRow : Row<F> {
  static constexpr float kScale = 1.0f;
  static constexpr bool kNanBytes = false;
};

#if defined(__F16C__) && defined(__AVX__)
// fp8 e4m3fn as fp16 bits: sign to bit 15, exponent and mantissa to bits 13..7 (the byte
// sign-extended to 16 bits, shifted left by 7, masked with 0xBF80: bit 14 held the sign). The fp16
// exponent bias is 15 against e4m3's 7, so the fp16 value is the fp8 value times 2^-8,
// subnormals included (fp8 subnormals land on fp16 subnormals, which F16C converts exactly).
// The NaN codes 0x7F/0xFF would read as finite: has_fp8_nan catches them per row.
template <>
struct DotRow<Fmt::fp8> : Row<Fmt::fp8> {
  static constexpr float kScale = 256.0f;
  static constexpr bool kNanBytes = true;
#if defined(__AVX512F__)
  static void vec(const uint8_t* row, int64_t j, vf* out) {
    const __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j)));
    out[0] = (vf)_mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(x, 7), _mm256_set1_epi16(-0x4080)));
  }
#else
  static void vec(const uint8_t* row, int64_t j, vf* out) {
    const __m128i x = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j)));
    out[0] = (vf)_mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(x, 7), _mm_set1_epi16(-0x4080)));
  }
#endif
  static float one(const uint8_t* row, int64_t j) { return Row<Fmt::fp8>::one(row, j) * (1.0f / 256.0f); }
};
#endif

// True when any of the n fp8 bytes is a NaN code (0x7F or 0xFF): (b & 0x7F) + 1 has its top
// bit set exactly for those; three vector ops per 4W bytes, on a row the dot product just
// brought into L1.
inline bool has_fp8_nan(const uint8_t* p, int64_t n) {
  typedef uint8_t vrow __attribute__((vector_size(W * 4)));
  vrow any{};
  int64_t j = 0;
  for (; j + W * 4 <= n; j += W * 4) any |= (load<vrow>(p + j) & 0x7F) + 1;
  uint64_t lanes[W / 2], bad = 0;
  std::memcpy(lanes, &any, sizeof(any));
  for (int i = 0; i < W / 2; ++i) bad |= lanes[i];
  bad &= 0x8080808080808080ull;
  for (; j < n; ++j) bad |= (p[j] & 0x7F) == 0x7F;
  return bad != 0;
}

// Each row tile prefetches, into L2, the rows kPrefetchBytes (rounded up to whole rows)
// ahead: one line per 64 bytes of row, spread over the tile's loop (see dot_tile).
constexpr int64_t kPrefetchBytes = 16384;

inline int64_t prefetch_ahead(int64_t stride) { return (kPrefetchBytes + stride - 1) / stride * stride; }

// Query q (natural order, length d) in the element order of Row<F>::vec over full steps.
template <Fmt F>
void permute(const float* q, int64_t d, float* out) {
  constexpr int step = W * Row<F>::kVecs;
  const int64_t full = d / step * step;
  for (int64_t j = 0; j < full; j += step)
    for (int v = 0; v < Row<F>::kVecs; ++v)
      for (int i = 0; i < W; ++i) out[j + v * W + i] = q[j + i * Row<F>::kVecs + v];
  for (int64_t j = full; j < d; ++j) out[j] = q[j];
}

// acc[r][q] = <row r, query q> for QT queries (rows of `qp`, stride ld) and R rows. Each
// step that starts a 64-byte line of the rows also prefetches that line `ahead` bytes further:
// spread like this the prefetches overlap the arithmetic, where a burst of a tile's lines at
// its start stalled on the line fill buffers (500k x 1024 rows, 8 queries, one core: bf16
// 84 -> 62 ms, int8 55 -> 48 ms; one query: fp8 34 -> 29 ms, int8 35 -> 27 ms).
template <Fmt F, int QT, int R>
inline void dot_tile(const uint8_t* const* rows, const float* qp, int64_t ld, int64_t d, float* out,
                     int64_t ldo, int64_t ahead) {
  using Conv = DotRow<F>;
  constexpr int P = Conv::kVecs, step = W * P;
  constexpr int kBits = F == Fmt::fp32 ? 32 : F == Fmt::bf16 || F == Fmt::fp16 ? 16 : F == Fmt::int4 ? 4 : 8;
  const int64_t full = d / step * step;
  vf acc[R][QT];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < QT; ++q) acc[r][q] = vf{};
  for (int64_t j = 0; j < full; j += step) {
    const int64_t byte = j * kBits / 8;
    if ((byte & 63) < step * kBits / 8)
      for (int r = 0; r < R; ++r) __builtin_prefetch(rows[r] + ahead + (byte & ~int64_t{63}), 0, 2);
    vf x[R][P];
    for (int r = 0; r < R; ++r) Conv::vec(rows[r], j, x[r]);
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < QT; ++q) {
        const vf qv = load<vf>(qp + q * ld + j + p * W);
        for (int r = 0; r < R; ++r) acc[r][q] = fma(x[r][p], qv, acc[r][q]);
      }
  }
  for (int r = 0; r < R; ++r) {
    const bool nan_row = Conv::kNanBytes && has_fp8_nan(rows[r], d);
    for (int q = 0; q < QT; ++q) {
      float s = hsum(acc[r][q]);
      for (int64_t j = full; j < d; ++j) s += Conv::one(rows[r], j) * qp[q * ld + j];
      out[q * ldo + r] = nan_row ? __builtin_nanf("") : s * Conv::kScale;
    }
  }
}

// Rows per register tile for QT queries: keep R*QT accumulators plus the row vectors in registers.
// With AVX-512 and one query, two rows side by side beat four (fewer streams in flight), and
// fp8, whose conversion is the bottleneck there, runs best one row at a time (measured on
// 500k x 1024 rows, 2 cores: int8 37 -> 31 ms, fp8 57 -> 38 ms).
template <Fmt F, int QT>
constexpr int rows_per_tile() {
  return W == 16 ? (QT >= 8 ? 2 : QT >= 4 ? 3 : QT >= 2 ? 4 : F == Fmt::fp8 ? 1 : 2)
                 : (QT >= 8 ? 1 : QT >= 4 ? 2 : 4);
}

template <Fmt F, int QT>
void dot_rows_qt(const uint8_t* base, int64_t stride, int64_t n, const float* qp, int64_t ld, int64_t d,
                 float* out, int64_t ldo) {
  constexpr int R = rows_per_tile<F, QT>();
  const int64_t ahead = prefetch_ahead(stride);
  int64_t r = 0;
  for (; r + R <= n; r += R) {
    const uint8_t* rows[R];
    for (int i = 0; i < R; ++i) rows[i] = base + (r + i) * stride;
    dot_tile<F, QT, R>(rows, qp, ld, d, out + r, ldo, ahead);
  }
  for (; r < n; ++r) {
    const uint8_t* rows[1] = {base + r * stride};
    dot_tile<F, QT, 1>(rows, qp, ld, d, out + r, ldo, ahead);
  }
}

// out[q * ldo + r] = <row r, query q> for n rows from `base` (byte stride) and Q permuted queries.
template <Fmt F>
void dot_rows(const uint8_t* base, int64_t stride, int64_t n, const float* qp, int64_t nq, int64_t ld, int64_t d,
              float* out, int64_t ldo) {
  int64_t q = 0;
  for (; q + 8 <= nq; q += 8) dot_rows_qt<F, 8>(base, stride, n, qp + q * ld, ld, d, out + q * ldo, ldo);
  if (q + 4 <= nq) dot_rows_qt<F, 4>(base, stride, n, qp + q * ld, ld, d, out + q * ldo, ldo), q += 4;
  if (q + 2 <= nq) dot_rows_qt<F, 2>(base, stride, n, qp + q * ld, ld, d, out + q * ldo, ldo), q += 2;
  if (q < nq) dot_rows_qt<F, 1>(base, stride, n, qp + q * ld, ld, d, out + q * ldo, ldo);
}

// Rows as float32 (unscaled) into out [n, d]: the block a GEMM then reads.
template <Fmt F>
void rows_to_float(const uint8_t* base, int64_t stride, int64_t n, int64_t d, float* out) {
  constexpr int P = Row<F>::kVecs, step = W * P;
  const int64_t full = d / step * step;
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = base + r * stride;
    float* o = out + r * d;
    for (int64_t j = 0; j < full; j += step) {
      vf x[P];
      Row<F>::vec(row, j, x);
      if (P == 1) {
        std::memcpy(o + j, &x[0], sizeof(vf));
      } else {  // int4: interleave the even and odd elements back
        for (int i = 0; i < W; ++i) o[j + 2 * i] = x[0][i], o[j + 2 * i + 1] = x[P - 1][i];
      }
    }
    for (int64_t j = full; j < d; ++j) o[j] = Row<F>::one(row, j);
  }
}

}  // namespace fasttda_cpu
