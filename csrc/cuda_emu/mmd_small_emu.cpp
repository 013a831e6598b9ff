// cuda_emu build of csrc/cuda/mmd_small.cu: the same source, compiled by g++ (csrc/cuda_emu/wae_emu.h).
#include "prelude.h"
#include "mmd_small.cu"
