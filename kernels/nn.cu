// Network kernels: the paper's encoder-decoder (DESIGN.md section 4) as NHWC float32 layers,
// batched over patterns. Weights are in Keras layouts: Conv2D (kh, kw, in, out), cross-
// correlation; Conv2DTranspose (kh, kw, out, in); Dense (in, out). Activation codes:
// 0 linear, 1 relu, 2 tanh, 3 sigmoid. Costs are per launch; P = N*H*W output pixels.
#include "common.cuh"

#define CD_CONV_TS 16   // output tile: 16 x 16 pixels, one thread each
#define CD_CONV_CIT 8   // input channels staged in shared memory per step
#define CD_CONV_COT 8   // output channels per thread (registers)
#define CD_GEMM_T 16    // dense: 16 x 16 output tile, 16-deep k steps

__device__ __forceinline__ float cd_act(float v, int act) {
    switch (act) {
        case 1: return fmaxf(v, 0.0f);
        case 2: return tanhf(v);
        case 3: return 1.0f / (1.0f + expf(-v));
        default: return v;
    }
}

// 'same' convolution, stride 1, any kernel size K (Keras pads (K-1)/2 before, K-1-(K-1)/2
// after), fused bias (may be null) and activation:
//   y[n,oy,ox,co] = act(bias[co] + sum_{i,j,ci} x[n, oy+i-p, ox+j-p, ci] * w[i,j,ci,co]).
// Block (16, 16); grid (ceil(W/16), ceil(H/16), N * ceil(Cout/8)). Each step stages a
// (16+K-1)^2 x 8-channel input tile and the K x K x 8 x 8 weights in dynamic shared memory
// (((16+K-1)^2 * 8 + K*K*64) floats: 12.4 KiB at K = 3) and every thread accumulates 8 output
// channels of its pixel in registers (CD_CONV_CIT and CD_CONV_COT are 8: the inner loop is
// written for 2 x float4 of each).
// FLOPs: 2 P K^2 Cin Cout. Bytes from DRAM/L2: 4 N H W Cin ((16+K-1)/16)^2 ceil(Cout/8)
// (input tiles, re-read per group of 8 output channels, mostly L2 hits) + 4 K^2 Cin Cout
// ceil(H/16) ceil(W/16) N / ... (weights, L2) + 4 P Cout written.
CD_KERNEL cd_nn_conv2d(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                       float* __restrict__ y, int N, int H, int W, int Cin, int Cout, int K, int act) {
    CD_DYNAMIC_SHARED(float, sm);
    const int T = CD_CONV_TS + K - 1;
    float* sx = sm;
    float* sw = sm + T * T * CD_CONV_CIT;
    const int groups = (Cout + CD_CONV_COT - 1) / CD_CONV_COT;
    const int n = blockIdx.z / groups;
    const int co0 = (blockIdx.z % groups) * CD_CONV_COT;
    const int ox0 = blockIdx.x * CD_CONV_TS, oy0 = blockIdx.y * CD_CONV_TS;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * CD_CONV_TS + tx;
    const int nthreads = CD_CONV_TS * CD_CONV_TS;
    const int p = (K - 1) / 2;
    float acc[CD_CONV_COT];
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) acc[o] = 0.0f;
    for (int ci0 = 0; ci0 < Cin; ci0 += CD_CONV_CIT) {
        for (int idx = tid; idx < T * T * CD_CONV_CIT; idx += nthreads) {
            const int c = idx % CD_CONV_CIT, q = idx / CD_CONV_CIT;
            const int iy = oy0 + q / T - p, ix = ox0 + q % T - p, ci = ci0 + c;
            sx[idx] = (iy >= 0 && iy < H && ix >= 0 && ix < W && ci < Cin)
                          ? x[(((size_t)n * H + iy) * W + ix) * Cin + ci]
                          : 0.0f;
        }
        for (int idx = tid; idx < K * K * CD_CONV_CIT * CD_CONV_COT; idx += nthreads) {
            const int o = idx % CD_CONV_COT, c = (idx / CD_CONV_COT) % CD_CONV_CIT, ij = idx / (CD_CONV_COT * CD_CONV_CIT);
            const int ci = ci0 + c, co = co0 + o;
            sw[idx] = (ci < Cin && co < Cout) ? w[((size_t)ij * Cin + ci) * Cout + co] : 0.0f;
        }
        __syncthreads();
        for (int i = 0; i < K; ++i) {
            for (int j = 0; j < K; ++j) {
                // 128-bit shared loads: the 8 input channels in 2, each weight row of 8 output
                // channels in 2 (a broadcast: every thread reads the same weights), so the
                // 64 multiply-adds of a tap need 18 loads instead of 72.
                const float4* xs = reinterpret_cast<const float4*>(sx + ((ty + i) * T + (tx + j)) * CD_CONV_CIT);
                const float4* ws = reinterpret_cast<const float4*>(sw + (i * K + j) * CD_CONV_CIT * CD_CONV_COT);
                const float4 x0 = xs[0], x1 = xs[1];
                const float xv[CD_CONV_CIT] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
                for (int c = 0; c < CD_CONV_CIT; ++c) {
                    const float4 wa = ws[2 * c], wb = ws[2 * c + 1];
                    const float v = xv[c];
                    acc[0] += v * wa.x;
                    acc[1] += v * wa.y;
                    acc[2] += v * wa.z;
                    acc[3] += v * wa.w;
                    acc[4] += v * wb.x;
                    acc[5] += v * wb.y;
                    acc[6] += v * wb.z;
                    acc[7] += v * wb.w;
                }
            }
        }
        __syncthreads();
    }
    const int ox = ox0 + tx, oy = oy0 + ty;
    if (ox >= W || oy >= H) return;
    float* yo = y + (((size_t)n * H + oy) * W + ox) * Cout;
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) {
        const int co = co0 + o;
        if (co < Cout) yo[co] = cd_act(acc[o] + (bias ? bias[co] : 0.0f), act);
    }
}

// Conv2DTranspose at stride 1 'same' (odd K) is the convolution above with the kernel flipped
// in space and its channel axes swapped: w[i,j,ci,co] = wt[K-1-i, K-1-j, co, ci], wt in Keras
// layout (K, K, out = Cout, in = Cin). One thread per weight. Bytes: 8 K^2 Cin Cout.
CD_KERNEL cd_nn_convT_weights(const float* __restrict__ wt, int K, int Cin, int Cout, float* __restrict__ w) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    const int total = K * K * Cin * Cout;
    if (idx >= total) return;
    const int co = idx % Cout, ci = (idx / Cout) % Cin, ij = idx / (Cout * Cin);
    const int i = ij / K, j = ij % K;
    w[idx] = wt[(((size_t)(K - 1 - i) * K + (K - 1 - j)) * Cout + co) * Cin + ci];
}

// Conv2DTranspose, any stride s, 'same' (output H*s x W*s; padding before p = max(K - s, 0) / 2,
// as TensorFlow), fused bias and activation, direct gather: one thread per output pixel and
// 8 output channels, weights wt (K, K, Cout, Cin) read through the cache:
//   y[n,oy,ox,co] = act(bias[co] + sum x[n,iy,ix,ci] wt[i,j,co,ci]) over iy*s + i - p = oy,
//   ix*s + j - p = ox. Block 256; grid (ceil(N*Ho*Wo / 256), ceil(Cout / 8)).
// FLOPs: 2 N H W K^2 Cin Cout (the multiply-adds that exist). Bytes: 4 N H W Cin (K/s)^2
// ceil(Cout/8) reads (cache) + 4 N Ho Wo Cout written.
CD_KERNEL cd_nn_conv_transpose2d(const float* __restrict__ x, const float* __restrict__ wt,
                                 const float* __restrict__ bias, float* __restrict__ y, int N, int H, int W,
                                 int Cin, int Cout, int K, int s, int act) {
    const int Ho = H * s, Wo = W * s;
    const long long pix = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= (long long)N * Ho * Wo) return;
    const int ox = (int)(pix % Wo), oy = (int)((pix / Wo) % Ho), n = (int)(pix / ((long long)Wo * Ho));
    const int co0 = blockIdx.y * CD_CONV_COT;
    const int pad = (K - s > 0 ? K - s : 0) / 2;
    float acc[CD_CONV_COT];
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) acc[o] = 0.0f;
    for (int i = 0; i < K; ++i) {
        const int ty = oy + pad - i;
        if (ty < 0 || ty % s != 0 || ty / s >= H) continue;
        const int iy = ty / s;
        for (int j = 0; j < K; ++j) {
            const int tx = ox + pad - j;
            if (tx < 0 || tx % s != 0 || tx / s >= W) continue;
            const int ix = tx / s;
            const float* xp = x + (((size_t)n * H + iy) * W + ix) * Cin;
            const float* wp = wt + ((size_t)i * K + j) * Cout * Cin;
            for (int ci = 0; ci < Cin; ++ci) {
                const float v = xp[ci];
#pragma unroll
                for (int o = 0; o < CD_CONV_COT; ++o) {
                    const int co = co0 + o;
                    if (co < Cout) acc[o] += v * wp[(size_t)co * Cin + ci];
                }
            }
        }
    }
    float* yo = y + (((size_t)n * Ho + oy) * Wo + ox) * Cout;
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) {
        const int co = co0 + o;
        if (co < Cout) yo[co] = cd_act(acc[o] + (bias ? bias[co] : 0.0f), act);
    }
}

// 2x2 max-pooling, stride 2, 'valid' (output floor(H/2) x floor(W/2)), NHWC. One thread per
// output value; consecutive threads take consecutive channels (coalesced).
// Bytes: 16 Q read + 4 Q written, Q = N (H/2) (W/2) C; FLOPs: 3 Q.
CD_KERNEL cd_nn_maxpool2(const float* __restrict__ x, float* __restrict__ y, int N, int H, int W, int C) {
    const int Ho = H / 2, Wo = W / 2;
    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (long long)N * Ho * Wo * C) return;
    const int c = (int)(q % C);
    const long long r = q / C;
    const int ox = (int)(r % Wo), oy = (int)((r / Wo) % Ho), n = (int)(r / ((long long)Wo * Ho));
    const float* p = x + (((size_t)n * H + 2 * oy) * W + 2 * ox) * C + c;
    const size_t row = (size_t)W * C;
    y[q] = fmaxf(fmaxf(p[0], p[C]), fmaxf(p[row], p[row + C]));
}

// Nearest-neighbour upsampling by an integer factor f (UpSampling2D): y[n,oy,ox,c] =
// x[n, oy/f, ox/f, c]. Bytes: 4 Q / f^2 read (cache) + 4 Q written, Q = N H f W f C.
CD_KERNEL cd_nn_upsample(const float* __restrict__ x, float* __restrict__ y, int N, int H, int W, int C, int f) {
    const int Ho = H * f, Wo = W * f;
    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (long long)N * Ho * Wo * C) return;
    const int c = (int)(q % C);
    const long long r = q / C;
    const int ox = (int)(r % Wo), oy = (int)((r / Wo) % Ho), n = (int)(r / ((long long)Wo * Ho));
    y[q] = x[(((size_t)n * H + oy / f) * W + ox / f) * C + c];
}

// Dense layer as a tiled GEMM over the batch: y[m, n] = act(bias[n] + sum_k x[m, k] w[k, n]),
// x (M, K) row-major (M = patterns), w (K, N) Keras layout. Block (16, 16), grid
// (ceil(N/16), ceil(M/16)); 16 x 16 tiles of x and w through shared memory.
// FLOPs: 2 M K N. Bytes: 4 M K ceil(N/16) + 4 K N ceil(M/16) (tile re-reads, L2) + 4 M N.
CD_KERNEL cd_nn_dense(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                      float* __restrict__ y, int M, int K, int N, int act) {
    __shared__ float sa[CD_GEMM_T][CD_GEMM_T + 1];
    __shared__ float sb[CD_GEMM_T][CD_GEMM_T + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * CD_GEMM_T + ty, col = blockIdx.x * CD_GEMM_T + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += CD_GEMM_T) {
        sa[ty][tx] = (row < M && k0 + tx < K) ? x[(size_t)row * K + k0 + tx] : 0.0f;
        sb[ty][tx] = (k0 + ty < K && col < N) ? w[(size_t)(k0 + ty) * N + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < CD_GEMM_T; ++kk) acc += sa[ty][kk] * sb[kk][tx];
        __syncthreads();
    }
    if (row < M && col < N) y[(size_t)row * N + col] = cd_act(acc + (bias ? bias[col] : 0.0f), act);
}

// Element-wise activation in place (for layers without a fused one). Bytes: 8 n; FLOPs ~n.
CD_KERNEL cd_nn_activate(float* __restrict__ x, long long n, int act) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = cd_act(x[i], act);
}

// Input normalisation: every pattern (`per` values) divided by its maximum, in place (left as
// is when the maximum is not positive and finite). One block of CD_BLOCK threads per pattern:
// block maximum, then the scaling. Bytes: 12 per (2 reads, 1 write) per pattern; FLOPs: 2 per.
CD_KERNEL cd_nn_normalize_max(float* __restrict__ x, int per) {
    float* xi = x + (size_t)blockIdx.x * per;
    float mx = 0.0f;
    for (int i = threadIdx.x; i < per; i += blockDim.x) mx = fmaxf(mx, xi[i]);
    mx = cd_block_max(mx);
    __shared__ float s_max;
    if (threadIdx.x == 0) s_max = mx;
    __syncthreads();
    mx = s_max;
    if (!(mx > 0.0f && isfinite(mx))) return;
    const float inv = 1.0f / mx;
    for (int i = threadIdx.x; i < per; i += blockDim.x) xi[i] *= inv;
}

// Support from a network output: out = x >= frac * max(x) per pattern (all zero when the
// maximum is not positive and finite). One block per pattern. Bytes: 9 per; FLOPs: 2 per.
CD_KERNEL cd_nn_support_threshold(const float* __restrict__ x, int per, float frac, unsigned char* __restrict__ out) {
    const float* xi = x + (size_t)blockIdx.x * per;
    unsigned char* oi = out + (size_t)blockIdx.x * per;
    float mx = 0.0f;
    for (int i = threadIdx.x; i < per; i += blockDim.x) mx = fmaxf(mx, xi[i]);
    mx = cd_block_max(mx);
    __shared__ float s_max;
    if (threadIdx.x == 0) s_max = mx;
    __syncthreads();
    mx = s_max;
    const bool ok = mx > 0.0f && isfinite(mx);
    const float t = frac * mx;
    for (int i = threadIdx.x; i < per; i += blockDim.x) oi[i] = (ok && xi[i] >= t) ? 1 : 0;
}
