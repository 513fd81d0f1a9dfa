// Torch bindings of the CUDA kernels. Kernels live in csrc/*.cu and include no torch
// headers, so CI can compile them with nvcc alone; the caller passes the CUDA stream as
// an integer (torch.cuda.current_stream().cuda_stream), so no ATen CUDA headers are needed.
#include <torch/extension.h>

#include <cstdint>

namespace fasttda {
int launch_rademacher_project(const void* x, int dtype_code, float* partial, int B, int64_t D, int K,
                              int64_t sxb, int64_t sxd, int64_t offset, uint32_t k_row, uint32_t k_col,
                              int splits, int64_t d_per_split, void* stream);
}

namespace {

int dtype_code(const torch::Tensor& x) {
  if (x.scalar_type() == torch::kFloat32) return 0;
  if (x.scalar_type() == torch::kBFloat16) return 1;
  if (x.scalar_type() == torch::kFloat16) return 2;
  TORCH_CHECK(false, "x must be float32, bfloat16 or float16, got ", x.scalar_type());
}

// Unscaled sums; the Python launcher applies 1/sqrt(out_dim).
torch::Tensor rademacher_project(torch::Tensor x, int64_t out_dim, int64_t k_row, int64_t k_col, int64_t offset,
                                 int64_t splits, int64_t stream) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "x must be a 2-D CUDA tensor");
  TORCH_CHECK(out_dim >= 1 && out_dim < (1LL << 31), "out_dim out of range");
  const int64_t B = x.size(0), D = x.size(1);
  TORCH_CHECK(B < (1LL << 31), "batch too large for one launch");
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, (D + 31) / 32));
  const int64_t d_per_split = ((D + splits - 1) / splits + 31) / 32 * 32;
  splits = (D + d_per_split - 1) / d_per_split;
  auto partial = torch::empty({splits, B, out_dim}, x.options().dtype(torch::kFloat32));
  const int err = fasttda::launch_rademacher_project(
      x.data_ptr(), dtype_code(x), partial.data_ptr<float>(), static_cast<int>(B), D, static_cast<int>(out_dim),
      x.stride(0), x.stride(1), offset, static_cast<uint32_t>(k_row), static_cast<uint32_t>(k_col),
      static_cast<int>(splits), d_per_split, reinterpret_cast<void*>(stream));
  TORCH_CHECK(err == 0, "rademacher_project kernel launch failed with CUDA error ", err);
  return splits == 1 ? partial.select(0, 0) : partial.sum(0);  // fixed-order reduction: deterministic
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rademacher_project", &rademacher_project, "Dense Rademacher projection (unscaled sums)");
}
