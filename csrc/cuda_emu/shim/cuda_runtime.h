// cuda_emu shim of <cuda_runtime.h>: the runtime API the wae_fast launchers and binding use,
// on the CPU (csrc/cuda_emu/runtime.cpp).  Streams are synchronous; "device" memory is host memory.
#pragma once

#include "wae_emu.h"

const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t st = nullptr);
cudaError_t cudaDeviceSynchronize();

template <class F>
cudaError_t cudaFuncSetAttribute(F* kern, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize)
    return ::wae_emu::record(cudaErrorInvalidValue, "cudaFuncSetAttribute: attribute not emulated");
  return ::wae_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kern), value);
}
