// cdiphase CUDA emulator: the host shim that lets the kernels in kernels/*.cu compile as
// plain C++20 and run on the CPU with the CUDA execution model.
//
// - gridDim / blockDim / blockIdx are thread-locals of the OS worker thread running a block;
//   threadIdx is the current fiber's (every CUDA thread of a block is a fiber on that OS
//   thread, see runtime.cpp).
// - __syncthreads(), __syncwarp(), warp shuffles, ballots and votes are fiber yields with
//   block / warp barrier semantics. The order in which the fibers of a block resume after a
//   barrier is the schedule order: in-order, reverse, or seeded random (per launch).
// - __shared__ is `static thread_local`: all fibers of a block share it, blocks on other
//   OS threads have their own copy. Dynamic shared memory comes from CD_DYNAMIC_SHARED
//   (kernels/common.cuh), which maps to a per-worker buffer of the launch's size.
// - atomics use std::atomic_ref (blocks run concurrently on several OS threads).
//
// Only what is needed to emulate CUDA lives here: the kernels themselves are untouched
// CUDA C++ that NVRTC compiles too.
#pragma once
#ifndef CDIPHASE_EMU
#error "cuda_emu.h is only for the host emulator build (define CDIPHASE_EMU)"
#endif

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// ---- qualifiers ----------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __constant__ static

// ---- vector types ----------------------------------------------------------------------
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }

static constexpr int warpSize = 32;

// ---- execution model -----------------------------------------------------------------
namespace cdemu {
const uint3& current_thread_idx();
void block_barrier();
void warp_barrier();
// Lane exchange buffer of the current warp: each lane writes its slot, then warp_barrier().
uint64_t* warp_slots();
int lane_id();
int warp_live_mask_bits(unsigned int* live);  // returns the warp's first linear thread index
void* dynamic_shared();
}  // namespace cdemu

extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
#define threadIdx (::cdemu::current_thread_idx())

inline void __syncthreads() { ::cdemu::block_barrier(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { ::cdemu::warp_barrier(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace cdemu {
// A shuffle: every lane publishes `v`, the warp meets, each lane reads lane `src(lane)` (or
// keeps its own value when `src` is out of its segment or names a lane that does not
// exist), and the warp meets again before the slots can be reused.
template <class T, class F>
inline T shuffle(T v, F src_of) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a value > 8 bytes");
    uint64_t* slots = warp_slots();
    unsigned int live = 0;
    warp_live_mask_bits(&live);
    const int lane = lane_id();
    uint64_t raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    slots[lane] = raw;
    warp_barrier();
    const int s = src_of(lane);
    T out = v;
    if (s >= 0 && s < 32 && ((live >> s) & 1u)) {
        uint64_t r = slots[s];
        std::memcpy(&out, &r, sizeof(T));
    }
    warp_barrier();
    return out;
}
// A vote: returns the bits of the live lanes whose predicate holds; *live_out gets the live
// lanes (taken on entry, when every lane of a converged warp is at or before this vote).
inline unsigned int vote(bool p, unsigned int* live_out = nullptr) {
    uint64_t* slots = warp_slots();
    unsigned int live = 0;
    warp_live_mask_bits(&live);
    if (live_out) *live_out = live;
    slots[lane_id()] = p ? 1u : 0u;
    warp_barrier();
    unsigned int bits = 0;
    for (int l = 0; l < 32; ++l)
        if (((live >> l) & 1u) && slots[l]) bits |= 1u << l;
    warp_barrier();
    return bits;
}
}  // namespace cdemu

template <class T>
inline T __shfl_sync(unsigned int, T v, int src, int width = 32) {
    return ::cdemu::shuffle(v, [=](int lane) { return (lane & ~(width - 1)) + (src & (width - 1)); });
}
template <class T>
inline T __shfl_down_sync(unsigned int, T v, unsigned int d, int width = 32) {
    return ::cdemu::shuffle(v, [=](int lane) {
        int t = (lane & (width - 1)) + (int)d;
        return t < width ? lane + (int)d : -1;
    });
}
template <class T>
inline T __shfl_up_sync(unsigned int, T v, unsigned int d, int width = 32) {
    return ::cdemu::shuffle(v, [=](int lane) {
        int t = (lane & (width - 1)) - (int)d;
        return t >= 0 ? lane - (int)d : -1;
    });
}
template <class T>
inline T __shfl_xor_sync(unsigned int, T v, int m, int width = 32) {
    return ::cdemu::shuffle(v, [=](int lane) {
        int t = lane ^ m;
        return (t & ~(width - 1)) == (lane & ~(width - 1)) ? t : -1;
    });
}
inline unsigned int __ballot_sync(unsigned int, int p) { return ::cdemu::vote(p != 0); }
inline int __any_sync(unsigned int, int p) { return ::cdemu::vote(p != 0) != 0; }
inline int __all_sync(unsigned int, int p) {
    unsigned int live = 0;
    const unsigned int bits = ::cdemu::vote(p != 0, &live);
    return bits == live;
}
// The lanes that are still running (a vote of `true`, so it meets the warp like CUDA's
// converged warps do).
inline unsigned int __activemask() { return ::cdemu::vote(true); }

// ---- atomics -----------------------------------------------------------------------------
template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <class T>
inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v); }
template <class T>
inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T>
inline T atomicCAS(T* p, T cmp, T v) {
    std::atomic_ref<T>(*p).compare_exchange_strong(cmp, v);
    return cmp;
}
template <class T>
inline T atomicMax(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {}
    return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (old > v && !a.compare_exchange_weak(old, v)) {}
    return old;
}

// ---- math ----------------------------------------------------------------------------------
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline unsigned int __float_as_uint(float x) { unsigned int i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
using std::isfinite;
using std::isnan;
using std::isinf;

// ---- launching -----------------------------------------------------------------------------
// The launch configuration the Rust side passes (repr(C) twin in src/backend/emu.rs).
struct cdemu_launch_cfg {
    unsigned int grid[3];
    unsigned int block[3];
    unsigned int shmem_bytes;
    unsigned int order;  // 0 in-order, 1 reverse, 2 random
    unsigned long long seed;
};
// Launch status codes (twins in src/backend/emu.rs).
#define CDEMU_OK 0
#define CDEMU_DEADLOCK 1
#define CDEMU_BAD_CONFIG 2
#define CDEMU_NO_KERNEL 3

namespace cdemu {
using BodyFn = void (*)(void* ctx);
// Runs body(ctx) once per CUDA thread of every block. Returns a CDEMU_* status.
int run_grid(const cdemu_launch_cfg* cfg, BodyFn body, void* ctx);

template <class... A, std::size_t... I>
inline void call_unpacked(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
// Launch kernel `f` with cuLaunchKernel's parameter array: params[i] points at argument i.
template <class... A>
inline int launch(void (*f)(A...), const cdemu_launch_cfg* cfg, void** params) {
    struct Ctx { void (*f)(A...); void** p; } ctx{f, params};
    return run_grid(cfg, [](void* c) {
        Ctx* k = static_cast<Ctx*>(c);
        call_unpacked(k->f, k->p, std::index_sequence_for<A...>{});
    }, &ctx);
}
}  // namespace cdemu

// One exported launcher per kernel family: `extern "C" int cdemu_launch_<family>(name, cfg,
// params)`; LIST is an X-macro naming the family's kernels.
#define CDEMU_FAMILY(family, LIST)                                                          \
    extern "C" int cdemu_launch_##family(const char* name, const cdemu_launch_cfg* cfg,     \
                                         void** params) {                                   \
        LIST(CDEMU_TRY_KERNEL_)                                                             \
        return CDEMU_NO_KERNEL;                                                             \
    }
#define CDEMU_TRY_KERNEL_(k) \
    if (std::strcmp(name, #k) == 0) return ::cdemu::launch(&k, cfg, params);
