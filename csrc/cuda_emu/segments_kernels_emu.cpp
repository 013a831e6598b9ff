// cuda_emu build of csrc/cuda/segments_kernels.cu: the same source, compiled by g++ (csrc/cuda_emu/wae_emu.h).
#include "prelude.h"
#include "segments_kernels.cu"
