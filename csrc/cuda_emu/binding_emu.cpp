// cuda_emu build of csrc/cuda/binding.cpp: the same host code, registering wae_fast::*_cuda_emu
// for CPU tensors (extension wae_fast._C_cuda_emu).
#ifndef WAE_CUDA_EMU
#define WAE_CUDA_EMU 1
#endif
#include "binding.cpp"
