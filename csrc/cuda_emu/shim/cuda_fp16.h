// cuda_emu shim of <cuda_fp16.h>: __half storage and its round-to-nearest-even conversions.
#pragma once

#include <cstdint>
#include <cstring>

#include "wae_emu.h"

struct __half {
  uint16_t x;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // one IEEE rounding, to nearest even
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
