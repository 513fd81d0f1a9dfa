// C++ CPU scoring: one pass over the stored rows, scores in cache-sized tiles, fused top-k.
//
// The rows are cut into blocks pulled dynamically by the intra-op threads (one parallel
// region, so a core another process steals delays only its own blocks). Each block's
// scores land in a per-thread [Q, block] tile, two ways:
//
// * few queries (Q <= 16, or 32 for rows narrower than float32): the stored rows are read
//   once and converted to float32 in registers (score_rows.h), each converted vector
//   feeding the FMAs of up to 8 queries: the scan runs at the speed of the stored bytes,
//   not of a float32 copy;
// * many queries: the block is converted to float32 once into a cache-resident buffer and
//   one single-threaded sgemm (at::mm; rows x queries, transposed, up to Q=32) fills the
//   tile: compute-bound, the converted block is reused by every query;
// * int8 queries (query_precision="int8", int8 / int4 rows), any Q: exact integer dot
//   products of the stored bytes (score_int.h: VNNI, AVX2 byte multiplies or scalar).
//
// Then the tile's per-row factors (scale, 1/norm) are applied as in the reference (the dot
// product first, then the factor) and the stores are summed. Top-k: each thread keeps a
// min-heap of packed keys per query (fasttda/topk.py: higher score first, equal scores by
// lower row); a tile entry below the heap's smallest score is skipped after one compare,
// so the N x Q scores are never stored. Non-finite scores are caught by their exponent bits.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "score_int.h"
#include "score_rows.h"

using fasttda_cpu::Fmt;

namespace {

// Above these: convert a block to float32, then sgemm. Narrow rows stay on the dot path up
// to 32 queries (4 passes of 8 over a block that stays in L2, converted in registers): one
// core, 500k x 1024 rows, Q=32: int8 264-276 ms, bf16 277, int4 279 against 292-330 for
// the sgemm path (361-386 before it computed rows x queries). float32 rows need no
// conversion, so the sgemm (339 ms) beats the dot path (353) there.
constexpr int64_t kDotMaxQueries = 16;
constexpr int64_t kDotMaxQueriesNarrow = 32;
constexpr int64_t kRowsFirstMaxQueries = 32;  // the sgemm's operand order, see block_scores
constexpr int64_t kDotBlockRows = 256;   // rows per block on the dot path
constexpr int64_t kGemmBlockBytes = 1 << 20;  // float32 rows per block on the sgemm path: about an L2

Fmt parse_fmt(const std::string& f) {
  Fmt fmt;
  TORCH_CHECK(fasttda_cpu::parse_fmt(f, &fmt), "score: unknown row format ", f);
  return fmt;
}

struct Store {
  Fmt fmt;
  at::Tensor rows, query, permuted;  // query: float32 [Q, d] contiguous; permuted: in Row<fmt>'s lane order
  bool int_query = false;  // int8 queries (int8 / int4 rows): exact integer dot products, score_int.h
  at::Tensor int_permuted;  // int8 [Q, d] in permute_int's order
  std::vector<int64_t> int_bias;  // per query, permute_int's correction
  const uint8_t* base;
  int64_t stride;  // bytes between rows
  int64_t dim;
  const float* factor;  // per-row, or nullptr
  at::Tensor factor_t;
};

template <Fmt F>
void permute_all(const at::Tensor& q, at::Tensor& out) {
  for (int64_t i = 0; i < q.size(0); ++i)
    fasttda_cpu::permute<F>(q.data_ptr<float>() + i * q.size(1), q.size(1), out.data_ptr<float>() + i * q.size(1));
}

// An int8 query tensor into s.int_permuted / s.int_bias (score_int.h's order).
void permute_int_all(const at::Tensor& queries, Store& s) {
  const at::Tensor q = queries.contiguous();
  const int64_t nq = q.size(0), d = q.size(1);
  s.int_permuted = at::empty({nq, d}, at::kChar);
  s.int_bias.resize(nq);
  for (int64_t i = 0; i < nq; ++i) {
    const int8_t* src = q.data_ptr<int8_t>() + i * d;
    int8_t* dst = s.int_permuted.data_ptr<int8_t>() + i * d;
    s.int_bias[i] = s.fmt == Fmt::int4 ? fasttda_cpu::permute_int<Fmt::int4>(src, d, dst)
                                       : fasttda_cpu::permute_int<Fmt::int8>(src, d, dst);
  }
}

struct Terms {
  std::vector<Store> stores;
  int64_t n_rows, n_queries, max_dim;
  bool dot;  // the few-queries path
  int64_t block;
};

Terms make_terms(const std::vector<at::Tensor>& queries, const std::vector<at::Tensor>& rows,
                 const std::vector<c10::optional<at::Tensor>>& factors, const std::vector<std::string>& fmts) {
  TORCH_CHECK(!rows.empty() && queries.size() == rows.size() && factors.size() == rows.size() &&
              fmts.size() == rows.size(), "score: one query tensor, rows tensor, factor and format per store");
  Terms t{{}, rows[0].size(0), queries[0].size(0), 0, false, 0};
  for (size_t c = 0; c < rows.size(); ++c) {
    TORCH_CHECK(rows[c].device().is_cpu() && rows[c].dim() == 2 && (rows[c].size(1) <= 1 || rows[c].stride(1) == 1),
                "score: rows must be 2-D CPU tensors with stride(1) == 1");
    TORCH_CHECK(rows[c].size(0) == t.n_rows && queries[c].size(0) == t.n_queries, "score: stores disagree on N or Q");
    Store s;
    s.fmt = parse_fmt(fmts[c]);
    s.rows = rows[c];
    s.int_query = queries[c].scalar_type() == at::kChar;
    if (s.int_query) {
      TORCH_CHECK(s.fmt == Fmt::int8 || s.fmt == Fmt::int4, "score: int8 queries need int8 or int4 rows, got ",
                  fmts[c]);
      TORCH_CHECK(queries[c].numel() == 0 || queries[c].min().item<int8_t>() > -128,
                  "score: int8 queries must lie in [-127, 127]");
    }
    s.query = queries[c].to(at::kFloat).contiguous();
    s.dim = s.query.size(1);
    const int64_t width = s.fmt == Fmt::int4 ? (s.dim + 1) / 2 : s.dim;
    TORCH_CHECK(rows[c].size(1) == width, "score: rows[", c, "] is ", rows[c].size(1), " wide, expected ", width);
    s.base = static_cast<const uint8_t*>(rows[c].data_ptr());
    s.stride = rows[c].stride(0) * static_cast<int64_t>(rows[c].element_size());
    s.factor = nullptr;
    if (factors[c].has_value()) {
      s.factor_t = factors[c]->to(at::kFloat).contiguous();
      TORCH_CHECK(s.factor_t.numel() == t.n_rows, "score: factors[", c, "] must have one entry per row");
      s.factor = s.factor_t.data_ptr<float>();
    }
    t.max_dim = std::max(t.max_dim, s.dim);
    t.stores.push_back(std::move(s));
  }
  bool any_fp32 = false;
  for (const Store& s : t.stores) any_fp32 = any_fp32 || s.fmt == Fmt::fp32;
  t.dot = t.n_queries <= (any_fp32 ? kDotMaxQueries : kDotMaxQueriesNarrow);
  for (const Store& s : t.stores) t.dot = t.dot || s.int_query;  // integer queries: always the exact dot path
  t.block = t.dot ? kDotBlockRows : std::max<int64_t>(16, kGemmBlockBytes / (4 * std::max<int64_t>(t.max_dim, 1)));
  if (t.dot) {
    for (size_t c = 0; c < t.stores.size(); ++c) {
      Store& s = t.stores[c];
      if (s.int_query) {
        permute_int_all(queries[c], s);
        continue;
      }
      s.permuted = at::empty_like(s.query);
      switch (s.fmt) {
        case Fmt::int4: permute_all<Fmt::int4>(s.query, s.permuted); break;
        default: s.permuted = s.query;  // the other formats keep the natural order
      }
    }
  }
  return t;
}

template <Fmt F>
void dot_block(const Store& s, int64_t r0, int64_t n, int64_t nq, float* out, int64_t ldo) {
  if constexpr (F == Fmt::int8 || F == Fmt::int4) {
    if (s.int_query) {
      fasttda_cpu::int_dot_rows<F>(s.base + r0 * s.stride, s.stride, n, s.int_permuted.data_ptr<int8_t>(),
                                   s.int_bias.data(), nq, s.dim, s.dim, out, ldo);
      return;
    }
  }
  fasttda_cpu::dot_rows<F>(s.base + r0 * s.stride, s.stride, n, s.permuted.data_ptr<float>(), nq, s.dim, s.dim,
                           out, ldo);
}

template <Fmt F>
void convert_block(const Store& s, int64_t r0, int64_t n, float* out) {
  fasttda_cpu::rows_to_float<F>(s.base + r0 * s.stride, s.stride, n, s.dim, out);
}

#define FASTTDA_SWITCH_FMT(fmt, CALL)            \
  switch (fmt) {                                 \
    case Fmt::fp32: CALL(Fmt::fp32); break;      \
    case Fmt::bf16: CALL(Fmt::bf16); break;      \
    case Fmt::fp16: CALL(Fmt::fp16); break;      \
    case Fmt::int8: CALL(Fmt::int8); break;      \
    case Fmt::fp8: CALL(Fmt::fp8); break;        \
    case Fmt::int4: CALL(Fmt::int4); break;      \
  }

// Per-thread scratch: the score tile [Q, block], a second tile for other stores, a float32
// block and the sgemm's [block, Q] result.
struct Scratch {
  std::vector<float> tile, part, rows, gemm;
};

// out[q * n + i] = in[i * nq + q]: [n, nq] to [nq, n], in tiles of 16 x 16 (both stay in L1).
void transpose(const float* in, int64_t n, int64_t nq, float* out) {
  constexpr int64_t T = 16;
  for (int64_t i0 = 0; i0 < n; i0 += T)
    for (int64_t q0 = 0; q0 < nq; q0 += T) {
      const int64_t i1 = std::min(n, i0 + T), q1 = std::min(nq, q0 + T);
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t i = i0; i < i1; ++i) out[q * n + i] = in[i * nq + q];
    }
}

// tile[q * n + i] = score of query q against row r0 + i, for i < n.
void block_scores(const Terms& t, int64_t r0, int64_t n, Scratch& w) {
  const int64_t nq = t.n_queries;
  for (size_t c = 0; c < t.stores.size(); ++c) {
    const Store& s = t.stores[c];
    float* dest = c == 0 ? w.tile.data() : w.part.data();
    if (t.dot) {
#define DOT(F) dot_block<F>(s, r0, n, nq, dest, n)
      FASTTDA_SWITCH_FMT(s.fmt, DOT)
#undef DOT
    } else {
      at::Tensor block;
      if (s.fmt == Fmt::fp32) {
        block = s.rows.narrow(0, r0, n);
      } else {
#define CONVERT(F) convert_block<F>(s, r0, n, w.rows.data())
        FASTTDA_SWITCH_FMT(s.fmt, CONVERT)
#undef CONVERT
        block = at::from_blob(w.rows.data(), {n, s.dim}, at::kFloat);
      }
      if (nq <= kRowsFirstMaxQueries) {
        // rows x queries, then transposed into the tile: MKL's sgemm runs the tall-skinny
        // [n, d] x [d, Q] at about 150 GFLOP/s on one AVX-512 core against about 110 for
        // [Q, d] x [d, n] (Q=32, d=1024, n=256; 500k fp32 rows 339 vs 378 ms). From Q=64
        // on, queries x rows is as fast or faster (Q=256: 1.71 vs 1.94 s).
        at::Tensor out = at::from_blob(w.gemm.data(), {n, nq}, at::kFloat);
        at::mm_out(out, block, s.query.t());
        transpose(w.gemm.data(), n, nq, dest);
      } else {
        at::Tensor out = at::from_blob(dest, {nq, n}, at::kFloat);
        at::mm_out(out, s.query, block.t());
      }
    }
    const float* f = s.factor ? s.factor + r0 : nullptr;
    float* tile = w.tile.data();
    for (int64_t q = 0; q < nq; ++q) {
      float* o = tile + q * n;
      const float* p = dest + q * n;
      if (c == 0) {
        if (f) for (int64_t i = 0; i < n; ++i) o[i] = p[i] * f[i];
      } else if (f) {
        for (int64_t i = 0; i < n; ++i) o[i] += p[i] * f[i];
      } else {
        for (int64_t i = 0; i < n; ++i) o[i] += p[i];
      }
    }
  }
}

bool all_finite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7F800000u) == 0x7F800000u);
  }
  return !bad;
}

// Runs work(worker, block) over all blocks, pulled dynamically inside one parallel region.
template <typename Work>
void for_blocks(int64_t n_blocks, int64_t workers, const Work& work) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w)
      for (int64_t b = next++; b < n_blocks; b = next++) work(w, b);
  });
}

int64_t worker_count(int64_t n_blocks) {
  if (at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(n_blocks, at::get_num_threads()));
}

Scratch make_scratch(const Terms& t) {
  Scratch w;
  w.tile.resize(t.n_queries * t.block);
  if (t.stores.size() > 1) w.part.resize(t.n_queries * t.block);
  if (!t.dot) w.rows.resize(t.block * t.max_dim);
  if (!t.dot && t.n_queries <= kRowsFirstMaxQueries) w.gemm.resize(t.block * t.n_queries);
  return w;
}

// A key sorts as the reference's pack_keys: higher score, then lower row.
inline int64_t pack_key(float s, int64_t row) {
  s += 0.0f;  // -0.0 -> 0.0
  int32_t b;
  std::memcpy(&b, &s, 4);
  const int32_t ordered = b >= 0 ? b : b ^ 0x7FFFFFFF;
  return static_cast<int64_t>(static_cast<uint64_t>(static_cast<int64_t>(ordered)) << 32) |
         (0xFFFFFFFFLL - row);
}

inline float key_score(int64_t key) {
  const int32_t ordered = static_cast<int32_t>(key >> 32);
  const int32_t b = ordered >= 0 ? ordered : ordered ^ 0x7FFFFFFF;
  float s;
  std::memcpy(&s, &b, 4);
  return s;
}

// The k best keys of one query seen by one thread: a min-heap, and the score to beat.
struct Best {
  std::vector<int64_t> heap;
  float floor = -std::numeric_limits<float>::infinity();

  void offer(float s, int64_t row, int64_t k) {
    const int64_t key = pack_key(s, row);
    if (static_cast<int64_t>(heap.size()) < k) {
      heap.push_back(key);
      std::push_heap(heap.begin(), heap.end(), std::greater<int64_t>());
      if (static_cast<int64_t>(heap.size()) == k) floor = key_score(heap.front());
    } else if (key > heap.front()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<int64_t>());
      heap.back() = key;
      std::push_heap(heap.begin(), heap.end(), std::greater<int64_t>());
      floor = key_score(heap.front());
    }
  }
};

void raise_not_finite(int64_t first_row) {
  TORCH_CHECK_VALUE(false, "scores are not finite: the rows or scales hold NaN/inf (a FeatureStore never does), "
                    "or the dot products overflow float32 (rows from ", first_row, "); rescale the features");
}

// Scores every block of rows into a per-worker tile and hands finite tiles to
// on_tile(worker, r0, n, tile); a block with a non-finite score is recorded instead (the
// first such row is named in the error raised after the scan).
template <typename OnTile>
void scan_blocks(const Terms& t, int64_t workers, const OnTile& on_tile) {
  const int64_t n_blocks = (t.n_rows + t.block - 1) / t.block;
  std::vector<Scratch> scratch;
  for (int64_t w = 0; w < workers; ++w) scratch.push_back(make_scratch(t));
  std::atomic<int64_t> bad_row{std::numeric_limits<int64_t>::max()};
  for_blocks(n_blocks, workers, [&](int64_t w, int64_t b) {
    const int64_t r0 = b * t.block, n = std::min(t.block, t.n_rows - r0);
    Scratch& s = scratch[w];
    block_scores(t, r0, n, s);
    if (!all_finite(s.tile.data(), t.n_queries * n)) {
      int64_t seen = bad_row.load();
      while (r0 < seen && !bad_row.compare_exchange_weak(seen, r0)) {}
      return;
    }
    on_tile(w, r0, n, s.tile.data());
  });
  if (bad_row.load() != std::numeric_limits<int64_t>::max()) raise_not_finite(bad_row.load());
}

int64_t block_workers(const Terms& t) { return worker_count((t.n_rows + t.block - 1) / t.block); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> score_topk_cpu(const std::vector<at::Tensor>& queries,
                                                  const std::vector<at::Tensor>& rows,
                                                  const std::vector<c10::optional<at::Tensor>>& factors,
                                                  const std::vector<std::string>& fmts, int64_t k) {
  Terms t = make_terms(queries, rows, factors, fmts);
  const int64_t nq = t.n_queries;
  k = std::min(k, t.n_rows);
  TORCH_CHECK(k >= 1, "score_topk: k must be >= 1 and there must be rows");
  const int64_t workers = block_workers(t);
  std::vector<std::vector<Best>> best(workers, std::vector<Best>(nq));
  scan_blocks(t, workers, [&](int64_t w, int64_t r0, int64_t n, const float* tile) {
    for (int64_t q = 0; q < nq; ++q) {
      Best& h = best[w][q];
      const float* x = tile + q * n;
      for (int64_t i = 0; i < n; ++i)
        if (x[i] >= h.floor) h.offer(x[i], r0 + i, k);
    }
  });
  at::Tensor values = at::empty({nq, k}, at::kFloat), indices = at::empty({nq, k}, at::kLong);
  auto vals = values.accessor<float, 2>();
  auto ids = indices.accessor<int64_t, 2>();
  std::vector<int64_t> keys;
  for (int64_t q = 0; q < nq; ++q) {
    keys.clear();
    for (int64_t w = 0; w < workers; ++w) keys.insert(keys.end(), best[w][q].heap.begin(), best[w][q].heap.end());
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end(), std::greater<int64_t>());
    for (int64_t i = 0; i < k; ++i) {
      vals[q][i] = key_score(keys[i]);
      ids[q][i] = 0xFFFFFFFFLL - (keys[i] & 0xFFFFFFFFLL);
    }
  }
  return {values, indices};
}

at::Tensor score_dense_cpu(const std::vector<at::Tensor>& queries, const std::vector<at::Tensor>& rows,
                           const std::vector<c10::optional<at::Tensor>>& factors,
                           const std::vector<std::string>& fmts, at::Tensor out) {
  Terms t = make_terms(queries, rows, factors, fmts);
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == t.n_queries &&
              out.size(1) == t.n_rows, "score_dense: out must be float32 [Q, N]");
  const int64_t nq = t.n_queries;
  auto acc = out.accessor<float, 2>();
  scan_blocks(t, block_workers(t), [&](int64_t, int64_t r0, int64_t n, const float* tile) {
    for (int64_t q = 0; q < nq; ++q)
      for (int64_t i = 0; i < n; ++i) acc[q][r0 + i] = tile[q * n + i];
  });
  return out;
}
