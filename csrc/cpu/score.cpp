// C++ CPU scoring: the reference's algorithm with the row conversion done by hand.
//
// Same chunks, blocks, keys and merge as fasttda/ops/score.py (score_topk_reference),
// so results are identical up to float32 matmul rounding. What differs: stored rows are
// converted to float32 by vectorizable loops (fp8 through a 256-entry table, int4 nibbles
// unpacked in place, fp16 by F16C) into a per-thread, cache-resident block, and the blocks
// of a chunk are spread over the OpenMP threads, each running a single-threaded sgemm on its
// block. torch's own fp8 -> float and int4 unpacking run tens of times slower than that.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlockBytes = 1 << 20;         // float32 rows per block: about an L2
constexpr int64_t kScoreBufferBytes = 32 << 20;  // one chunk of Q x rows float32 scores

// Order = the codes of python/fasttda/formats.py (tests/test_formats.py checks it).
enum class Fmt { fp32, bf16, fp16, int8, fp8, int4 };

Fmt parse_fmt(const std::string& f) {
  if (f == "fp32") return Fmt::fp32;
  if (f == "bf16") return Fmt::bf16;
  if (f == "fp16") return Fmt::fp16;
  if (f == "int8") return Fmt::int8;
  if (f == "fp8_e4m3") return Fmt::fp8;
  if (f == "int4") return Fmt::int4;
  TORCH_CHECK(false, "unknown row format ", f);
}

const float* fp8_table() {
  static float table[256];
  static bool ready = [] {
    for (int b = 0; b < 256; ++b) {
      c10::Float8_e4m3fn v(static_cast<uint8_t>(b), c10::Float8_e4m3fn::from_bits());
      table[b] = static_cast<float>(v);
    }
    return true;
  }();
  (void)ready;
  return table;
}

// Rows [r0, r1) of `rows` (stored format) as float32 into out [r1 - r0, dim], unscaled.
void to_float(const at::Tensor& rows, Fmt fmt, int64_t dim, int64_t r0, int64_t r1, float* out) {
  const int64_t stride = rows.stride(0);
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + (r - r0) * dim;
    switch (fmt) {
      case Fmt::fp32: {
        std::memcpy(o, rows.data_ptr<float>() + r * stride, dim * sizeof(float));
        break;
      }
      case Fmt::bf16: {
        const uint16_t* s = reinterpret_cast<const uint16_t*>(rows.data_ptr<at::BFloat16>()) + r * stride;
        uint32_t* ob = reinterpret_cast<uint32_t*>(o);
        for (int64_t j = 0; j < dim; ++j) ob[j] = static_cast<uint32_t>(s[j]) << 16;
        break;
      }
      case Fmt::fp16: {
        const uint16_t* s = reinterpret_cast<const uint16_t*>(rows.data_ptr<at::Half>()) + r * stride;
        int64_t j = 0;
#if defined(__F16C__)
        for (; j + 8 <= dim; j += 8) {
          __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j));
          _mm256_storeu_ps(o + j, _mm256_cvtph_ps(h));
        }
#endif
        for (; j < dim; ++j) o[j] = static_cast<float>(c10::Half(s[j], c10::Half::from_bits()));
        break;
      }
      case Fmt::int8: {
        const int8_t* s = rows.data_ptr<int8_t>() + r * stride;
        for (int64_t j = 0; j < dim; ++j) o[j] = static_cast<float>(s[j]);
        break;
      }
      case Fmt::fp8: {
        const uint8_t* s = reinterpret_cast<const uint8_t*>(rows.data_ptr()) + r * stride;
        const float* table = fp8_table();
        for (int64_t j = 0; j < dim; ++j) o[j] = table[s[j]];
        break;
      }
      case Fmt::int4: {
        const uint8_t* s = rows.data_ptr<uint8_t>() + r * stride;
        const int64_t pairs = dim / 2;
        for (int64_t j = 0; j < pairs; ++j) {
          o[2 * j] = static_cast<float>(s[j] & 0xF) - 8.0f;
          o[2 * j + 1] = static_cast<float>(s[j] >> 4) - 8.0f;
        }
        if (dim % 2) o[dim - 1] = static_cast<float>(s[pairs] & 0xF) - 8.0f;
        break;
      }
    }
  }
}

struct Terms {
  std::vector<at::Tensor> queries;  // float32 [Q, d_c], contiguous
  std::vector<at::Tensor> rows;
  std::vector<c10::optional<at::Tensor>> factors;
  std::vector<Fmt> fmts;
  int64_t n_rows, n_queries, max_dim;
};

Terms make_terms(const std::vector<at::Tensor>& queries, const std::vector<at::Tensor>& rows,
                 const std::vector<c10::optional<at::Tensor>>& factors, const std::vector<std::string>& fmts) {
  TORCH_CHECK(!rows.empty() && queries.size() == rows.size() && factors.size() == rows.size() &&
              fmts.size() == rows.size(), "score: one query tensor, rows tensor, factor and format per store");
  Terms t{{}, {}, {}, {}, rows[0].size(0), queries[0].size(0), 0};
  for (size_t c = 0; c < rows.size(); ++c) {
    TORCH_CHECK(rows[c].device().is_cpu() && rows[c].stride(1) == 1, "score: rows must be CPU tensors with stride(1) == 1");
    t.queries.push_back(queries[c].to(at::kFloat).contiguous());
    t.rows.push_back(rows[c]);
    t.factors.push_back(factors[c]);
    t.fmts.push_back(parse_fmt(fmts[c]));
    t.max_dim = std::max(t.max_dim, queries[c].size(1));
  }
  return t;
}

int64_t block_rows(int64_t dim) { return std::max<int64_t>(16, kBlockBytes / (4 * std::max<int64_t>(dim, 1))); }

int64_t chunk_rows(int64_t n_queries, int64_t dim) {
  const int64_t step = block_rows(dim);
  return std::max(step, kScoreBufferBytes / (4 * n_queries) / step * step);
}

// Scores of rows [lo, hi) into out [Q, hi - lo]: blocks spread over the threads.
void chunk_scores(const Terms& t, int64_t lo, int64_t hi, at::Tensor out) {
  const int64_t step = block_rows(t.max_dim);
  const int64_t blocks = (hi - lo + step - 1) / step;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> buffer(step * t.max_dim);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = lo + b * step, r1 = std::min(hi, r0 + step);
      at::Tensor dest = out.narrow(1, r0 - lo, r1 - r0);
      for (size_t c = 0; c < t.rows.size(); ++c) {
        const int64_t dim = t.queries[c].size(1);
        at::Tensor block;
        if (t.fmts[c] == Fmt::fp32) {  // already float32: no copy
          block = t.rows[c].narrow(0, r0, r1 - r0);
        } else {
          to_float(t.rows[c], t.fmts[c], dim, r0, r1, buffer.data());
          block = at::from_blob(buffer.data(), {r1 - r0, dim}, at::kFloat);
        }
        at::Tensor part = at::mm(t.queries[c], block.t());
        if (t.factors[c].has_value()) part.mul_(t.factors[c]->narrow(0, r0, r1 - r0));
        if (c == 0) dest.copy_(part); else dest.add_(part);
      }
    }
  });
}

void check_finite(const at::Tensor& scores, int64_t first_row) {
  if (scores.numel() && !std::isfinite(scores.sum().item<double>()) && !at::isfinite(scores).all().item<bool>())
    TORCH_CHECK_VALUE(false, "scores are not finite: the rows or scales hold NaN/inf (a FeatureStore never does), "
                      "or the dot products overflow float32 (rows from ", first_row, "); rescale the features");
}

at::Tensor pack_keys_at(const at::Tensor& scores, const at::Tensor& rows) {
  at::Tensor bits = (scores + 0.0).view(at::kInt);  // + 0.0 turns -0.0 into 0.0
  at::Tensor ordered = at::where(bits >= 0, bits, at::bitwise_xor(bits, 0x7FFFFFFF)).to(at::kLong);
  return at::bitwise_or(at::bitwise_left_shift(ordered, 32), at::rsub(rows, 0xFFFFFFFFLL));
}

// Same as fasttda.ops.score.chunk_topk_keys.
at::Tensor chunk_topk_keys(const at::Tensor& scores, int64_t first_row, int64_t k) {
  k = std::min(k, scores.size(1));
  auto [values, indices] = at::topk(scores, k, 1);
  at::Tensor at_least_kth = (scores >= values.narrow(1, k - 1, 1)).sum(1);
  at::Tensor keys = pack_keys_at(values, indices + first_row);
  at::Tensor tied = (at_least_kth > k).nonzero().flatten();
  if (tied.numel()) {
    at::Tensor sub = scores.index_select(0, tied);
    at::Tensor all_rows = at::arange(first_row, first_row + scores.size(1), scores.options().dtype(at::kLong));
    keys.index_copy_(0, tied, std::get<0>(at::topk(pack_keys_at(sub, all_rows), k, 1)));
  }
  return std::get<0>(at::sort(keys, 1, /*descending=*/true));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> score_topk_cpu(const std::vector<at::Tensor>& queries,
                                                  const std::vector<at::Tensor>& rows,
                                                  const std::vector<c10::optional<at::Tensor>>& factors,
                                                  const std::vector<std::string>& fmts, int64_t k) {
  Terms t = make_terms(queries, rows, factors, fmts);
  const int64_t step = chunk_rows(t.n_queries, t.max_dim);
  at::Tensor buffer = at::empty({t.n_queries, std::min(step, t.n_rows)}, at::kFloat);
  at::Tensor best;
  for (int64_t lo = 0; lo < t.n_rows; lo += step) {
    const int64_t hi = std::min(t.n_rows, lo + step);
    at::Tensor scores = buffer.narrow(1, 0, hi - lo);
    chunk_scores(t, lo, hi, scores);
    check_finite(scores, lo);
    at::Tensor keys = chunk_topk_keys(scores, lo, k);
    if (best.defined()) keys = at::cat({best, keys}, 1);
    best = std::get<0>(at::topk(keys, std::min<int64_t>(k, keys.size(1)), 1));
  }
  at::Tensor ordered = at::bitwise_right_shift(best, 32).to(at::kInt);
  at::Tensor bits = at::where(ordered >= 0, ordered, at::bitwise_xor(ordered, 0x7FFFFFFF));
  return {bits.view(at::kFloat), at::rsub(at::bitwise_and(best, 0xFFFFFFFFLL), 0xFFFFFFFFLL)};
}

at::Tensor score_dense_cpu(const std::vector<at::Tensor>& queries, const std::vector<at::Tensor>& rows,
                           const std::vector<c10::optional<at::Tensor>>& factors,
                           const std::vector<std::string>& fmts, at::Tensor out) {
  Terms t = make_terms(queries, rows, factors, fmts);
  const int64_t step = chunk_rows(t.n_queries, t.max_dim);
  for (int64_t lo = 0; lo < t.n_rows; lo += step) {
    const int64_t hi = std::min(t.n_rows, lo + step);
    at::Tensor dest = out.narrow(1, lo, hi - lo);
    chunk_scores(t, lo, hi, dest);
    check_finite(dest, lo);
  }
  return out;
}
