// Dense Rademacher projection on tensor cores: out[B, K] = x[B, D] @ P[D, K], with P
// generated tile by tile in shared memory from the counter hash (one hash word gives 32
// signs) and never stored in global memory.
//
// STATUS: compiled for sm_80 and sm_90a, NOT YET RUN ON A GPU. The Triton kernel
// (kernels/project.py) and the reference stay the tested paths until it has.
//
// Layout: block (bx, by, bz) owns output tile [BM, BN] at (by*BM, bx*BN) and the bz-th slice
// of D (split-K, so a few rows still fill every SM); it writes a partial sum that the
// binding reduces over bz in a fixed order (deterministic). ±1 is exact in bf16/fp16;
// float32 x is split into bf16 hi + lo parts (two MMAs, ~16 mantissa bits).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "counter_hash.h"

namespace fasttda {
namespace {

using namespace nvcuda;

constexpr int BM = 32, BN = 128, BK = 32, THREADS = 128, PAD = 8;

template <typename T> struct SignBits;  // bit patterns of +1 in the MMA element type
template <> struct SignBits<__nv_bfloat16> { static constexpr uint32_t one = 0x3F80u; };
template <> struct SignBits<__half> { static constexpr uint32_t one = 0x3C00u; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_float(float v) { return __float2half(v); }

// In: input element type; T: MMA element type; SPLIT: also multiply the bf16 residual.
template <typename In, typename T, bool SPLIT>
__global__ void __launch_bounds__(THREADS) rademacher_project_kernel(
    const In* __restrict__ x, float* __restrict__ partial, int B, int64_t D, int K, int64_t sxb, int64_t sxd,
    int64_t offset, uint32_t k_row, uint32_t k_col, int64_t d_per_split) {
  __shared__ __align__(32) T xs_hi[BM][BK + PAD];
  __shared__ __align__(32) T xs_lo[SPLIT ? BM : 1][BK + PAD];
  __shared__ __align__(32) T ps[BK][BN + PAD];
  __shared__ __align__(32) float stage[BM][BN + 4];

  const int tid = threadIdx.x, warp = tid / 32;
  const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
  const int64_t d_begin = static_cast<int64_t>(blockIdx.z) * d_per_split;
  const int64_t d_end = min(D, d_begin + d_per_split);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t d0 = d_begin; d0 < d_end; d0 += BK) {
    for (int e = tid; e < BM * BK; e += THREADS) {
      const int r = e / BK, c = e % BK;
      float v = 0.0f;
      if (row0 + r < B && d0 + c < d_end) v = to_float(x[(row0 + r) * sxb + (d0 + c) * sxd]);
      const T hi = from_float<T>(v);
      xs_hi[r][c] = hi;
      if constexpr (SPLIT) xs_lo[r][c] = from_float<T>(v - to_float(hi));
    }
    {  // one hash word per thread: row r of the tile, 32 consecutive columns
      const int r = tid / (BN / 32), w = tid % (BN / 32);
      const uint32_t h = fasttda_hash::hash_word(fasttda_hash::row_key(offset + d0 + r, k_row),
                                                  fasttda_hash::col_key(col0 / 32 + w, k_col));
      uint32_t* dst = reinterpret_cast<uint32_t*>(&ps[r][w * 32]);
#pragma unroll
      for (int b = 0; b < 32; b += 2) {
        const uint32_t lo = SignBits<T>::one | (((h >> b) & 1u) << 15);
        const uint32_t hi = SignBits<T>::one | (((h >> (b + 1)) & 1u) << 15);
        dst[b / 2] = lo | (hi << 16);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b_frag[2];
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b_frag[j], &ps[kk][warp * 32 + j * 16], BN + PAD);
      for (int i = 0; i < 2; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::load_matrix_sync(a_frag, &xs_hi[i * 16][kk], BK + PAD);
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a_frag, b_frag[j], acc[i][j]);
        if constexpr (SPLIT) {
          wmma::load_matrix_sync(a_frag, &xs_lo[i * 16][kk], BK + PAD);
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a_frag, b_frag[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&stage[i * 16][warp * 32 + j * 16], acc[i][j], BN + 4, wmma::mem_row_major);
  __syncthreads();
  float* dst = partial + static_cast<int64_t>(blockIdx.z) * B * K;
  for (int e = tid; e < BM * BN; e += THREADS) {
    const int r = e / BN, c = e % BN;
    if (row0 + r < B && col0 + c < K) dst[static_cast<int64_t>(row0 + r) * K + col0 + c] = stage[r][c];
  }
}

}  // namespace

// dtype_code: 0 float32, 1 bfloat16, 2 float16. partial: [splits, B, K] float32.
int launch_rademacher_project(const void* x, int dtype_code, float* partial, int B, int64_t D, int K,
                              int64_t sxb, int64_t sxd, int64_t offset, uint32_t k_row, uint32_t k_col,
                              int splits, int64_t d_per_split, void* stream) {
  const dim3 grid((K + BN - 1) / BN, (B + BM - 1) / BM, splits);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype_code) {
    case 0:
      rademacher_project_kernel<float, __nv_bfloat16, true><<<grid, THREADS, 0, s>>>(
          static_cast<const float*>(x), partial, B, D, K, sxb, sxd, offset, k_row, k_col, d_per_split);
      break;
    case 1:
      rademacher_project_kernel<__nv_bfloat16, __nv_bfloat16, false><<<grid, THREADS, 0, s>>>(
          static_cast<const __nv_bfloat16*>(x), partial, B, D, K, sxb, sxd, offset, k_row, k_col, d_per_split);
      break;
    case 2:
      rademacher_project_kernel<__half, __half, false><<<grid, THREADS, 0, s>>>(
          static_cast<const __half*>(x), partial, B, D, K, sxb, sxd, offset, k_row, k_col, d_per_split);
      break;
    default:
      return -1;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace fasttda
