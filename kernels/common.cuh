// Shared definitions of the cdiphase CUDA kernels. Compiles under NVRTC (no host headers)
// and, with CDIPHASE_EMU defined, as host C++ through the emulator shim.
#pragma once

#ifdef CDIPHASE_EMU
#include "emu/cuda_emu.h"
#endif

// Every kernel is extern "C" so that cuModuleGetFunction finds it by its plain name and the
// emulator's launch table can take its address.
#define CD_KERNEL extern "C" __global__ void

// Dynamic shared memory of the launch as an array of T (`extern __shared__` in CUDA; one
// untyped buffer shared by every kernel of a module, so kernels may use different types).
#ifdef CDIPHASE_EMU
#define CD_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::cdemu::dynamic_shared())
#else
extern __shared__ __align__(16) unsigned char cd_dynamic_smem[];
#define CD_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(cd_dynamic_smem)
#endif

#define CD_FULL_MASK 0xffffffffu

// Threads per block of the element-wise and reduction kernels (a multiple of 32: the block
// reductions below assume whole warps).
#define CD_BLOCK 256

// Smallest modulus divided by in the modulus projection (as the CPU backend's TINY).
#define CD_TINY 1e-30f

__device__ __forceinline__ float cd_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(CD_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float cd_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(CD_FULL_MASK, v, o));
    return v;
}

// Sum over a 1-D block whose size is a multiple of 32; the result is valid in thread 0.
// Ends with a barrier, so it may be called again right away.
__device__ __forceinline__ float cd_block_sum(float v) {
    __shared__ float cd_ws[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    v = cd_warp_sum(v);
    if (lane == 0) cd_ws[wid] = v;
    __syncthreads();
    const int nw = (blockDim.x + 31) >> 5;
    v = (int)threadIdx.x < nw ? cd_ws[lane] : 0.0f;
    if (wid == 0) v = cd_warp_sum(v);
    __syncthreads();
    return v;
}

// Maximum over a 1-D block (fmaxf: NaN inputs are ignored); valid in thread 0.
__device__ __forceinline__ float cd_block_max(float v) {
    __shared__ float cd_wm[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    v = cd_warp_max(v);
    if (lane == 0) cd_wm[wid] = v;
    __syncthreads();
    const int nw = (blockDim.x + 31) >> 5;
    v = (int)threadIdx.x < nw ? cd_wm[lane] : 0.0f;
    if (wid == 0) v = cd_warp_max(v);
    __syncthreads();
    return v;
}
