// Included first by every emulated kernel translation unit: the emulator and the CUDA header
// shims, then __CUDA_ARCH__ = 900 so the device branches of the sources are what runs.
#pragma once

#ifndef WAE_CUDA_EMU
#define WAE_CUDA_EMU 1
#endif
#include "wae_emu.h"
#include "cuda_runtime.h"
#include "cuda_fp16.h"
#include "cuda_bf16.h"
#include "mma.h"

#define __CUDA_ARCH__ 900
