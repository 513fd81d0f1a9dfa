// Python bindings of the C++ CPU kernels (fasttda._extension.load("cpu")).
#include <torch/extension.h>

#include <string>
#include <vector>

std::tuple<at::Tensor, at::Tensor> score_topk_cpu(const std::vector<at::Tensor>& queries,
                                                  const std::vector<at::Tensor>& rows,
                                                  const std::vector<c10::optional<at::Tensor>>& factors,
                                                  const std::vector<std::string>& fmts, int64_t k);
at::Tensor score_dense_cpu(const std::vector<at::Tensor>& queries, const std::vector<at::Tensor>& rows,
                           const std::vector<c10::optional<at::Tensor>>& factors,
                           const std::vector<std::string>& fmts, at::Tensor out);
at::Tensor dequantize_cpu(const at::Tensor& data, const c10::optional<at::Tensor>& scale, const std::string& fmt,
                          int64_t dim, const c10::optional<at::Tensor>& out);
std::tuple<at::Tensor, bool> cast_checked_cpu(const at::Tensor& x, const std::string& fmt);
std::tuple<at::Tensor, at::Tensor, bool> quantize_scaled_cpu(const at::Tensor& x, const std::string& fmt);
at::Tensor project_cpu(const at::Tensor& x, int64_t out_dim, const std::string& kind, int64_t k_row, int64_t k_col,
                       int64_t offset, int64_t s);
at::Tensor projection_matrix_cpu(int64_t in_dim, int64_t out_dim, const std::string& kind, int64_t k_row,
                                 int64_t k_col, int64_t offset, int64_t s);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("score_topk", &score_topk_cpu,
        "Top-k scores of queries against stored rows, fused dequantization (see fasttda.ops.score)");
  m.def("project", &project_cpu, "x @ P with the counter-hash P generated on the fly (see fasttda.ops.project)");
  m.def("projection_matrix",
        [](int64_t in_dim, int64_t out_dim, const std::string& kind, int64_t k_row, int64_t k_col, int64_t offset,
           int64_t s, pybind11::object /*device: always the CPU here*/) {
          return projection_matrix_cpu(in_dim, out_dim, kind, k_row, k_col, offset, s);
        },
        "Rows of the unscaled counter-hash P as float32 (see fasttda.ops.project.projection_matrix)");
  m.def("score_dense", &score_dense_cpu, "Dense scores of queries against stored rows into out");
  m.def("dequantize", &dequantize_cpu, pybind11::arg("data"), pybind11::arg("scale"), pybind11::arg("fmt"),
        pybind11::arg("dim"), pybind11::arg("out") = pybind11::none(),
        "Stored rows to float32 with per-row scales, into out when given (see fasttda.ops.quantize.dequantize)");
  m.def("cast_checked", &cast_checked_cpu,
        "(x cast to bf16/fp16, ok): the range check fused into the cast (see fasttda.ops.quantize)");
  m.def("quantize_scaled", &quantize_scaled_cpu,
        "(data, scale, ok) of float32 rows in int8 / int4 / fp8_e4m3, one pass per row (see fasttda.ops.quantize)");
}
