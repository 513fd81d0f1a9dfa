// The counter hash of fasttda/ops/_counter_hash.py, the same 32-bit words bit for bit: one
// header for the CUDA kernel (csrc/project.cu) and the C++ CPU kernel (csrc/cpu/project.cpp),
// so the two compiled copies of P cannot drift apart. Plain integer code: host and device.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTTDA_HASH_FN __host__ __device__ __forceinline__
#else
#define FASTTDA_HASH_FN inline
#endif

namespace fasttda_hash {

FASTTDA_HASH_FN uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Row i's key: both halves of the 64-bit index enter.
FASTTDA_HASH_FN uint32_t row_key(uint64_t i, uint32_t k_row) {
  return mix32(mix32(static_cast<uint32_t>(i >> 32) ^ k_row) ^ static_cast<uint32_t>(i));
}

FASTTDA_HASH_FN uint32_t col_key(uint32_t c, uint32_t k_col) { return mix32(c ^ k_col); }

FASTTDA_HASH_FN uint32_t hash_word(uint32_t rk, uint32_t ck) { return mix32(rk + ck); }

}  // namespace fasttda_hash
