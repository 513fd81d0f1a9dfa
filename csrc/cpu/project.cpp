// C++ CPU kernel of fasttda.ops.project: x [B, D] @ P [D, k], P generated on the fly.
//
// P is the counter-hash matrix of fasttda/ops/_counter_hash.py (entry (i, j) a pure
// function of (seed, i, j) through lowbias32, 64-bit row index i). Everything here runs
// in 32-bit integer lanes (AVX2 has no 64-bit multiply; lowbias32 needs none): the compiler
// vectorizes the plain loops below for whatever -march=native offers.
//
// Dense kinds: the work is cut into tasks (D segment x column block). A task generates
// small blocks of P (cache-resident, about 512 KiB) and multiplies them in with one
// single-threaded sgemm each, accumulating into its segment's partial output. Tasks are
// pulled from an atomic counter inside ONE parallel region, so a core stolen by another
// process slows one worker, not every barrier. The segment count depends only on the
// shape, and partials are summed in segment order, so which worker runs a task never
// matters. Thread-count independence holds for SJLT and for exact sums (Rademacher on
// integer-valued x) only: a dense task's float32 sum is one sgemm, whose blocking (and so
// its rounding) may depend on the BLAS and on whether it runs inside the parallel region
// (small problems run in the calling thread, where the BLAS may itself use threads).
//
// Rademacher entries are exact (+-1 as float bits). Gaussian entries are Box-Muller in
// float32 with the reference's exact u1, u2, theta and sqrt; log and sin/cos are Cephes
// polynomials (a few 1e-8 relative), so entries agree with the reference to ~1e-6.
// SJLT: per-segment scatter-add, the same buckets and signs as the reference.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "counter_hash.h"

namespace {

constexpr int64_t kBlockEntries = 1 << 17;         // floats of P per generated block (512 KiB)
constexpr int64_t kTargetTasks = 32;               // enough tasks to balance 2..16 threads under load
constexpr int64_t kPartialBytes = int64_t(256) << 20;  // cap on the per-segment partial outputs

using fasttda_hash::col_key;
using fasttda_hash::hash_word;
using fasttda_hash::row_key;

inline float as_float(uint32_t u) { return __builtin_bit_cast(float, u); }
inline uint32_t as_uint(float f) { return __builtin_bit_cast(uint32_t, f); }

// row_key(i) for i in [i0, i0 + n).
void row_keys(uint64_t i0, int64_t n, uint32_t k_row, uint32_t* out) {
#pragma omp simd
  for (int64_t r = 0; r < n; ++r) {
    out[r] = row_key(i0 + uint64_t(r), k_row);
  }
}

std::vector<uint32_t> col_keys(int64_t count, uint32_t k_col) {
  std::vector<uint32_t> ck(count);
  for (int64_t c = 0; c < count; ++c) ck[c] = col_key(uint32_t(c), k_col);
  return ck;
}

// Natural log on (0, 1] (Cephes logf: relative error below 1e-7).
inline float log_unit(float x) {
  const uint32_t bits = as_uint(x);
  float e = float(int32_t(bits >> 23) - 126);
  float m = as_float((bits & 0x007FFFFFu) | 0x3F000000u);  // [0.5, 1)
  const bool small = m < 0.70710678118654752440f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// sin and cos of t in [0, 2 pi) (Cephes sinf/cosf: octant reduction, Cody-Waite, minimax).
inline void sincos_turn(float t, float& s, float& c) {
  int32_t j = int32_t(t * 1.27323954473516f);
  j = (j + 1) & ~1;
  const float y = float(j);
  const float x = ((t - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const float z = x * x;
  const float ps = ((-1.9515295891E-4f * z + 8.3321608736E-3f) * z - 1.6666654611E-1f) * z * x + x;
  const float pc = ((2.443315711809948E-5f * z - 1.388731625493765E-3f) * z + 4.166664568298827E-2f) * z * z
                   - 0.5f * z + 1.0f;
  const int32_t oct = j & 7;  // even: 0, 2, 4, 6 (t within pi/4 of oct * pi/4)
  const bool swap = (oct & 2) != 0;
  const float sv = swap ? pc : ps, cv = swap ? ps : pc;
  const uint32_t s_neg = (oct >= 4) ? 0x80000000u : 0u;
  const uint32_t c_neg = (oct == 2 || oct == 4) ? 0x80000000u : 0u;
  s = as_float(as_uint(sv) ^ s_neg);
  c = as_float(as_uint(cv) ^ c_neg);
}

struct Keys {
  std::string kind;
  uint32_t k_row, k_col;
  uint64_t offset;
  int64_t out_dim;
  std::vector<uint32_t> ck_a, ck_b;  // rademacher: word keys; gaussian: even / odd column keys
};

Keys make_keys(const std::string& kind, int64_t k_row, int64_t k_col, int64_t offset, int64_t out_dim, int64_t s) {
  Keys k{kind, uint32_t(k_row), uint32_t(k_col), uint64_t(offset), out_dim, {}, {}};
  if (kind == "rademacher") {
    k.ck_a = col_keys((out_dim + 31) / 32, k.k_col);
  } else if (kind == "gaussian") {
    const int64_t pairs = (out_dim + 1) / 2;
    std::vector<uint32_t> all = col_keys(2 * pairs, k.k_col);
    for (int64_t p = 0; p < pairs; ++p) {
      k.ck_a.push_back(all[2 * p]);
      k.ck_b.push_back(all[2 * p + 1]);
    }
  } else {
    k.ck_a = col_keys(s, k.k_col);
  }
  return k;
}

// One Box-Muller pair from its two hash words (the reference's float32 u1, u2 and theta).
inline void box_muller(uint32_t w1, uint32_t w2, float& even, float& odd) {
  const float u1 = float(int32_t((w1 >> 8) + 1u)) * 5.9604644775390625e-8f;  // exact: (0, 1]
  const float u2 = float(int32_t(w2 >> 8)) * 5.9604644775390625e-8f;
  const float radius = std::sqrt(-2.0f * log_unit(u1));  // vectorizes with -fno-math-errno
  float sn, cs;
  sincos_turn(u2 * 6.28318548202514648f, sn, cs);  // float32(2 pi), as the reference rounds it
  even = radius * cs;
  odd = radius * sn;
}

// Narrow Gaussian blocks (small k) are generated column by column, vectorized over rows.
inline bool narrow_gaussian(int64_t width) { return width < 32; }

// Unscaled P[d0 : d0 + rows, j0 : j0 + width) into buf, d local to x. j0 is a multiple of 32
// (rademacher) or 2 (gaussian); width is padded to that multiple. The block is row-major
// (row stride ld >= width), except narrow Gaussian blocks: column-major, column stride ld >= rows.
// Narrow Rademacher blocks hash across rows too (a few words per row).
void fill_dense(const Keys& k, int64_t d0, int64_t rows, int64_t j0, int64_t width, float* buf, int64_t ld,
                uint32_t* scratch /* 10 * rows + width */) {
  uint32_t* rk = scratch;
  uint32_t* w = scratch + rows;
  row_keys(k.offset + uint64_t(d0), rows, k.k_row, rk);
  if (k.kind == "rademacher") {
    const int64_t c0 = j0 / 32, nw = width / 32;
    const uint32_t* ck = k.ck_a.data() + c0;
    const bool narrow = nw < 8;
    for (int64_t c = 0; narrow && c < nw; ++c) {  // w[r * nw + c], vectorized over rows
      const uint32_t key = ck[c];
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r) w[r * nw + c] = hash_word(rk[r], key);
    }
    for (int64_t r = 0; r < rows; ++r) {
      uint32_t* wr = narrow ? w + r * nw : w;
      if (!narrow) {
        const uint32_t key = rk[r];
#pragma omp simd
        for (int64_t c = 0; c < nw; ++c) wr[c] = hash_word(key, ck[c]);
      }
      uint32_t* out = reinterpret_cast<uint32_t*>(buf + r * ld);
      for (int64_t c = 0; c < nw; ++c) {
        const uint32_t word = wr[c];
#pragma omp simd
        for (uint32_t t = 0; t < 32; ++t) out[32 * c + t] = 0x3F800000u | (((word >> t) & 1u) << 31);
      }
    }
    return;
  }
  const int64_t p0 = j0 / 2, np = width / 2;
  const uint32_t* cke = k.ck_a.data() + p0;
  const uint32_t* cko = k.ck_b.data() + p0;
  if (narrow_gaussian(width)) {  // vectorized over rows, one pair at a time, column-major block
    for (int64_t p = 0; p < np; ++p) {
      const uint32_t ke = cke[p], ko = cko[p];
      float* ev = buf + 2 * p * ld;
      float* od = ev + ld;
#pragma omp simd simdlen(16)
      for (int64_t r = 0; r < rows; ++r) box_muller(hash_word(rk[r], ke), hash_word(rk[r], ko), ev[r], od[r]);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t key = rk[r];
    float* out = buf + r * ld;
#pragma omp simd simdlen(16)
    for (int64_t p = 0; p < np; ++p) box_muller(hash_word(key, cke[p]), hash_word(key, cko[p]), out[2 * p], out[2 * p + 1]);
  }
}

// Runs task(t) for t in [0, n) on the intra-op threads, pulled dynamically (one region);
// in this thread when the work is too small to pay for waking the others.
template <typename F>
void run_tasks(int64_t n, const F& task, bool parallel = true) {
  if (!parallel || n == 1 || at::get_num_threads() == 1 || at::in_parallel_region()) {
    for (int64_t t = 0; t < n; ++t) task(t);
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t t = next++; t < n; t = next++) task(t);
  });
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Segments of D (each with its own partial output, summed in order at the end).
int64_t segment_count(int64_t D, int64_t min_rows, int64_t col_blocks, int64_t B, int64_t out_dim) {
  int64_t segs = ceil_div(kTargetTasks, col_blocks);
  segs = std::min(segs, std::max<int64_t>(1, D / min_rows));
  segs = std::min(segs, std::max<int64_t>(1, kPartialBytes / (4 * B * out_dim)));
  return std::max<int64_t>(segs, 1);
}

at::Tensor sum_partials(at::Tensor partial) {
  at::Tensor out = partial[0].clone();
  for (int64_t s = 1; s < partial.size(0); ++s) out.add_(partial[s]);
  return out;
}

constexpr double kParallelWork = double(1 << 22);  // multiply-adds below which one thread is faster

at::Tensor project_dense(const at::Tensor& x, const Keys& k) {
  const int64_t B = x.size(0), D = x.size(1), K = k.out_dim;
  const int64_t unit = k.kind == "rademacher" ? 32 : 2;
  const int64_t padded = ceil_div(K, unit) * unit;
  const int64_t width = std::min<int64_t>(padded, 512);  // columns per block
  const int64_t col_blocks = ceil_div(padded, width);
  const int64_t rows = std::max<int64_t>(16, kBlockEntries / width);  // rows of P per block
  const int64_t segs = segment_count(D, rows, col_blocks, B, K);
  const int64_t seg_rows = ceil_div(ceil_div(D, segs), rows) * rows;
  const int64_t n_seg = ceil_div(D, seg_rows);
  at::Tensor partial = at::zeros({n_seg, B, K}, x.options());
  run_tasks(n_seg * col_blocks, [&](int64_t t) {
    const int64_t seg = t / col_blocks, cb = t % col_blocks;
    const int64_t j0 = cb * width, wj = std::min(width, padded - j0), nj = std::min(wj, K - j0);
    std::vector<float> buf(rows * wj);
    std::vector<uint32_t> scratch(10 * rows + wj);
    at::Tensor dest = partial[seg].narrow(1, j0, nj);
    const int64_t lo = seg * seg_rows, hi = std::min(D, lo + seg_rows);
    for (int64_t d0 = lo; d0 < hi; d0 += rows) {
      const int64_t nr = std::min(rows, hi - d0);
      at::Tensor block;
      if (k.kind == "gaussian" && narrow_gaussian(wj)) {
        fill_dense(k, d0, nr, j0, wj, buf.data(), rows, scratch.data());
        block = at::from_blob(buf.data(), {nr, nj}, {1, rows}, x.options());
      } else {
        fill_dense(k, d0, nr, j0, wj, buf.data(), wj, scratch.data());
        block = at::from_blob(buf.data(), {nr, nj}, {wj, 1}, x.options());
      }
      dest.addmm_(x.narrow(1, d0, nr), block);
    }
  }, double(B) * double(D) * double(K) >= kParallelWork);
  return n_seg == 1 ? partial[0] : sum_partials(partial);
}

at::Tensor project_sjlt(const at::Tensor& x, const Keys& k) {
  const int64_t B = x.size(0), D = x.size(1), K = k.out_dim, s = int64_t(k.ck_a.size());
  constexpr int64_t rows = 1024;
  const int64_t segs = segment_count(D, 4 * rows, 1, B, K);
  const int64_t seg_rows = ceil_div(ceil_div(D, segs), rows) * rows;
  const int64_t n_seg = ceil_div(D, seg_rows);
  at::Tensor partial = at::zeros({n_seg, B, K}, x.options());
  const float* xp = x.data_ptr<float>();
  const int64_t sx0 = x.stride(0), sx1 = x.stride(1);
  run_tasks(n_seg, [&](int64_t seg) {
    std::vector<uint32_t> rk(rows), bucket(rows * s), sign(rows * s);
    float* acc = partial[seg].data_ptr<float>();
    const int64_t lo = seg * seg_rows, hi = std::min(D, lo + seg_rows);
    for (int64_t d0 = lo; d0 < hi; d0 += rows) {
      const int64_t nr = std::min(rows, hi - d0);
      row_keys(k.offset + uint64_t(d0), nr, k.k_row, rk.data());
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t q = 0; q < s; ++q) {
          const uint32_t h = hash_word(rk[r], k.ck_a[q]);
          bucket[r * s + q] = (h >> 1) % uint32_t(K);
          sign[r * s + q] = (h & 1u) << 31;
        }
      for (int64_t b = 0; b < B; ++b) {
        float* o = acc + b * K;
        const float* xr = xp + b * sx0 + d0 * sx1;
        for (int64_t r = 0; r < nr; ++r) {
          const uint32_t v = as_uint(xr[r * sx1]);
          for (int64_t q = 0; q < s; ++q) o[bucket[r * s + q]] += as_float(v ^ sign[r * s + q]);
        }
      }
    }
  }, double(B) * double(D) * double(s) >= kParallelWork / 16);
  return n_seg == 1 ? partial[0] : sum_partials(partial);
}

double scale_of(const std::string& kind, int64_t out_dim, int64_t s) {
  return 1.0 / std::sqrt(double(kind == "sjlt" ? s : out_dim));
}

void check_kind(const std::string& kind) {
  TORCH_CHECK_VALUE(kind == "rademacher" || kind == "gaussian" || kind == "sjlt",
                    "kind must be rademacher, gaussian or sjlt, got ", kind);
}

}  // namespace

at::Tensor project_cpu(const at::Tensor& x_in, int64_t out_dim, const std::string& kind, int64_t k_row,
                       int64_t k_col, int64_t offset, int64_t s) {
  check_kind(kind);
  TORCH_CHECK_VALUE(x_in.dim() == 2 && x_in.device().is_cpu(), "x must be a 2-D CPU tensor");
  TORCH_CHECK_VALUE(out_dim >= 1 && s >= 1 && offset >= 0, "out_dim and s must be >= 1, offset >= 0");
  at::Tensor x = x_in.to(at::kFloat);  // exact for bf16/fp16; no copy for float32
  if (x.stride(0) != 1 && x.stride(1) != 1) x = x.contiguous();
  const Keys k = make_keys(kind, k_row, k_col, offset, out_dim, s);
  at::Tensor out = kind == "sjlt" ? project_sjlt(x, k) : project_dense(x, k);
  return out.mul_(scale_of(kind, out_dim, s));
}

at::Tensor projection_matrix_cpu(int64_t in_dim, int64_t out_dim, const std::string& kind, int64_t k_row,
                                 int64_t k_col, int64_t offset, int64_t s) {
  check_kind(kind);
  TORCH_CHECK_VALUE(in_dim >= 1 && out_dim >= 1 && s >= 1 && offset >= 0, "bad projection_matrix arguments");
  const Keys k = make_keys(kind, k_row, k_col, offset, out_dim, s);
  at::Tensor P = at::zeros({in_dim, out_dim}, at::kFloat);
  float* p = P.data_ptr<float>();
  if (kind == "sjlt") {
    std::vector<uint32_t> rk(in_dim);
    row_keys(k.offset, in_dim, k.k_row, rk.data());
    for (int64_t r = 0; r < in_dim; ++r)
      for (int64_t q = 0; q < s; ++q) {
        const uint32_t h = hash_word(rk[r], k.ck_a[q]);
        p[r * out_dim + (h >> 1) % uint32_t(out_dim)] += (h & 1u) ? -1.0f : 1.0f;
      }
    return P;
  }
  const int64_t unit = kind == "rademacher" ? 32 : 2;
  const int64_t padded = ceil_div(out_dim, unit) * unit;
  const int64_t rows = std::max<int64_t>(1, kBlockEntries / padded);
  run_tasks(ceil_div(in_dim, rows), [&](int64_t t) {
    const int64_t d0 = t * rows, nr = std::min(rows, in_dim - d0);
    std::vector<float> buf(nr * padded);
    std::vector<uint32_t> scratch(10 * nr + padded);
    if (kind == "gaussian" && narrow_gaussian(padded)) {
      fill_dense(k, d0, nr, 0, padded, buf.data(), nr, scratch.data());
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t j = 0; j < out_dim; ++j) p[(d0 + r) * out_dim + j] = buf[j * nr + r];
      return;
    }
    fill_dense(k, d0, nr, 0, padded, buf.data(), padded, scratch.data());
    for (int64_t r = 0; r < nr; ++r) std::memcpy(p + (d0 + r) * out_dim, buf.data() + r * padded, 4 * out_dim);
  });
  return P;
}
