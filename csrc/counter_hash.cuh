// CUDA twin of fasttda/ops/_counter_hash.py: the same 32-bit words, bit for bit.
#pragma once
#include <cstdint>

namespace fasttda {

__device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ uint32_t row_key(int64_t i, uint32_t k_row) {
  const uint64_t u = static_cast<uint64_t>(i);
  return mix32(mix32(static_cast<uint32_t>(u >> 32) ^ k_row) ^ static_cast<uint32_t>(u));
}

__device__ __forceinline__ uint32_t col_key(uint32_t c, uint32_t k_col) { return mix32(c ^ k_col); }

__device__ __forceinline__ uint32_t hash_word(uint32_t rk, uint32_t ck) { return mix32(rk + ck); }

}  // namespace fasttda
