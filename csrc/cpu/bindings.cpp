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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("score_topk", &score_topk_cpu,
        "Top-k scores of queries against stored rows, fused dequantization (see fasttda.ops.score)");
  m.def("score_dense", &score_dense_cpu, "Dense scores of queries against stored rows into out");
}
