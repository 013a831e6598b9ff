// cuda_emu shim of <cuda_bf16.h>: __nv_bfloat16 storage and its conversions (RNE, NaN kept).
#pragma once

#include <cstdint>
#include <cstring>

#include "wae_emu.h"

struct __nv_bfloat16 {
  uint16_t x;
};
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) h.x = uint16_t((u >> 16) | 0x40u);  // quiet NaN
  else h.x = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return h;
}
