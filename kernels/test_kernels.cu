// Kernels that exist only to test the emulator itself (and to show that NVRTC accepts the
// same source): a shared-memory tree reduction with and without its barriers, and the warp
// intrinsics.
#include "common.cuh"

// Per-block sums of x[0..n) into out[blockIdx.x], tree reduction in shared memory.
// `racy` != 0 drops the barrier inside the tree: threads then read partial sums that other
// threads have not written yet, which the emulator's schedule orders must expose.
CD_KERNEL cd_test_block_reduce(const float* __restrict__ x, int n, int racy, float* __restrict__ out) {
    __shared__ float s[CD_BLOCK];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        if (!racy) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// Warp intrinsics: for each thread, out[5*i + k] =
//   k=0 __shfl_sync from lane (lane*7+3)%32, k=1 __shfl_down_sync by 5, k=2 __shfl_xor_sync 9,
//   k=3 __ballot_sync(x>0) (as float bits), k=4 __any_sync(x>1000)+2*__all_sync(x>-1e30).
CD_KERNEL cd_test_warp(const float* __restrict__ x, float* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    const float v = x[i];
    out[5 * i + 0] = __shfl_sync(CD_FULL_MASK, v, (lane * 7 + 3) & 31);
    out[5 * i + 1] = __shfl_down_sync(CD_FULL_MASK, v, 5);
    out[5 * i + 2] = __shfl_xor_sync(CD_FULL_MASK, v, 9);
    out[5 * i + 3] = __uint_as_float(__ballot_sync(CD_FULL_MASK, v > 0.0f));
    out[5 * i + 4] = (float)(__any_sync(CD_FULL_MASK, v > 1000.0f) + 2 * __all_sync(CD_FULL_MASK, v > -1e30f));
}

// Atomics across blocks: sum[0] += x[i] (float), cnt[0] += 1, mx[0] = max over bits of x.
CD_KERNEL cd_test_atomics(const float* __restrict__ x, int n, float* sum, int* cnt, int* mx) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(sum, x[i]);
    atomicAdd(cnt, 1);
    atomicMax(mx, (int)(x[i] * 1000.0f));
}
