// cuda_emu build of csrc/cuda/reparam_kernels.cu: the same source, compiled by g++ (csrc/cuda_emu/wae_emu.h).
#include "prelude.h"
#include "reparam_kernels.cu"
