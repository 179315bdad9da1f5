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

// Conv2D, the general case (what cd_nn_conv2d does not take: strides, 'valid', even or
// non-square kernels): kernel KH x KW, strides (sy, sx), leading padding (pt, pl) (TF 'same':
// pad_before = pad_total / 2, the extra row/column after; 'valid': 0), output Ho x Wo, fused
// bias (may be null) and activation, direct gather (taps outside the input are zero):
//   y[n,oy,ox,co] = act(bias[co] + sum_{i,j,ci} x[n, oy*sy+i-pt, ox*sx+j-pl, ci] w[i,j,ci,co]).
// One thread per output pixel and 8 output channels; the 8 weights of a tap and input channel
// are contiguous (Keras layout (KH, KW, Cin, Cout)) and the same for every thread of the block
// (broadcast through the cache). Block 256; grid (ceil(N*Ho*Wo / 256), ceil(Cout / 8)).
// FLOPs: 2 P KH KW Cin Cout, P = N Ho Wo. Bytes: 4 P KH KW Cin ceil(Cout/8) input reads
// (cache; neighbouring pixels share taps) + 4 KH KW Cin Cout weights (cache) + 4 P Cout
// written.
CD_KERNEL cd_nn_conv2d_general(const float* __restrict__ x, const float* __restrict__ w,
                               const float* __restrict__ bias, float* __restrict__ y, int N, int H, int W,
                               int Cin, int Ho, int Wo, int Cout, int KH, int KW, int sy, int sx, int pt,
                               int pl, int act) {
    const long long pix = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= (long long)N * Ho * Wo) return;
    const int ox = (int)(pix % Wo), oy = (int)((pix / Wo) % Ho), n = (int)(pix / ((long long)Wo * Ho));
    const int co0 = blockIdx.y * CD_CONV_COT;
    const int nco = Cout - co0 < CD_CONV_COT ? Cout - co0 : CD_CONV_COT;
    float acc[CD_CONV_COT];
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) acc[o] = 0.0f;
    for (int i = 0; i < KH; ++i) {
        const int iy = oy * sy + i - pt;
        if (iy < 0 || iy >= H) continue;
        for (int j = 0; j < KW; ++j) {
            const int ix = ox * sx + j - pl;
            if (ix < 0 || ix >= W) continue;
            const float* xp = x + (((size_t)n * H + iy) * W + ix) * Cin;
            const float* wp = w + ((size_t)i * KW + j) * Cin * Cout + co0;
            for (int ci = 0; ci < Cin; ++ci) {
                const float v = xp[ci];
                const float* wr = wp + (size_t)ci * Cout;
#pragma unroll
                for (int o = 0; o < CD_CONV_COT; ++o) {
                    if (o < nco) acc[o] += v * wr[o];
                }
            }
        }
    }
    float* yo = y + (size_t)pix * Cout + co0;
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) {
        if (o < nco) yo[o] = cd_act(acc[o] + (bias ? bias[co0 + o] : 0.0f), act);
    }
}

// Conv2DTranspose, any kernel KH x KW, strides (sy, sx), output Ho x Wo with the leading
// padding (pt, pl) removed at the start (Keras/TF: 'same' Ho = H*sy, pt = max(KH - sy, 0) / 2;
// 'valid' Ho = H*sy + max(KH - sy, 0), pt = 0; the same per column), fused bias and
// activation, direct gather: one thread per output pixel and 8 output channels, weights
// wt (KH, KW, Cout, Cin) read through the cache:
//   y[n,oy,ox,co] = act(bias[co] + sum x[n,iy,ix,ci] wt[i,j,co,ci]) over iy*sy + i - pt = oy,
//   ix*sx + j - pl = ox. Block 256; grid (ceil(N*Ho*Wo / 256), ceil(Cout / 8)).
// FLOPs: 2 N H W KH KW Cin Cout (the multiply-adds that exist). Bytes: 4 N H W Cin
// (KH/sy)(KW/sx) ceil(Cout/8) reads (cache) + 4 N Ho Wo Cout written.
CD_KERNEL cd_nn_conv_transpose2d(const float* __restrict__ x, const float* __restrict__ wt,
                                 const float* __restrict__ bias, float* __restrict__ y, int N, int H, int W,
                                 int Cin, int Ho, int Wo, int Cout, int KH, int KW, int sy, int sx, int pt,
                                 int pl, int act) {
    const long long pix = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (pix >= (long long)N * Ho * Wo) return;
    const int ox = (int)(pix % Wo), oy = (int)((pix / Wo) % Ho), n = (int)(pix / ((long long)Wo * Ho));
    const int co0 = blockIdx.y * CD_CONV_COT;
    const int nco = Cout - co0 < CD_CONV_COT ? Cout - co0 : CD_CONV_COT;
    float acc[CD_CONV_COT];
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) acc[o] = 0.0f;
    for (int i = 0; i < KH; ++i) {
        const int ty = oy + pt - i;
        if (ty < 0 || ty % sy != 0 || ty / sy >= H) continue;
        const int iy = ty / sy;
        for (int j = 0; j < KW; ++j) {
            const int tx = ox + pl - j;
            if (tx < 0 || tx % sx != 0 || tx / sx >= W) continue;
            const int ix = tx / sx;
            const float* xp = x + (((size_t)n * H + iy) * W + ix) * Cin;
            const float* wp = wt + (((size_t)i * KW + j) * Cout + co0) * Cin;
            for (int ci = 0; ci < Cin; ++ci) {
                const float v = xp[ci];
#pragma unroll
                for (int o = 0; o < CD_CONV_COT; ++o) {
                    if (o < nco) acc[o] += v * wp[(size_t)o * Cin + ci];
                }
            }
        }
    }
    float* yo = y + (size_t)pix * Cout + co0;
#pragma unroll
    for (int o = 0; o < CD_CONV_COT; ++o) {
        if (o < nco) yo[o] = cd_act(acc[o] + (bias ? bias[co0 + o] : 0.0f), act);
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

// Max-pooling, the general case: pool PH x PW, strides (sy, sx), leading padding (pt, pl)
// (TF 'same': pad_before = pad_total / 2; 'valid': 0), output Ho x Wo, NHWC; padding taps are
// ignored (never a whole window with these rules). One thread per output value, consecutive
// threads on consecutive channels (coalesced). Bytes: 4 Q PH PW read (cache) + 4 Q written,
// Q = N Ho Wo C; FLOPs: Q PH PW.
CD_KERNEL cd_nn_maxpool(const float* __restrict__ x, float* __restrict__ y, int N, int H, int W, int C, int Ho,
                        int Wo, int PH, int PW, int sy, int sx, int pt, int pl) {
    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (long long)N * Ho * Wo * C) return;
    const int c = (int)(q % C);
    const long long r = q / C;
    const int ox = (int)(r % Wo), oy = (int)((r / Wo) % Ho), n = (int)(r / ((long long)Wo * Ho));
    float m = __uint_as_float(0xff800000u);  // -inf
    for (int i = 0; i < PH; ++i) {
        const int iy = oy * sy + i - pt;
        if (iy < 0 || iy >= H) continue;
        for (int j = 0; j < PW; ++j) {
            const int ix = ox * sx + j - pl;
            if (ix < 0 || ix >= W) continue;
            m = fmaxf(m, x[(((size_t)n * H + iy) * W + ix) * C + c]);
        }
    }
    y[q] = m;
}

// Nearest-neighbour upsampling by integer factors (fy, fx) (UpSampling2D): y[n,oy,ox,c] =
// x[n, oy/fy, ox/fx, c]. Bytes: 4 Q / (fy fx) read (cache) + 4 Q written, Q = N H fy W fx C.
CD_KERNEL cd_nn_upsample(const float* __restrict__ x, float* __restrict__ y, int N, int H, int W, int C, int fy,
                         int fx) {
    const int Ho = H * fy, Wo = W * fx;
    const long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (long long)N * Ho * Wo * C) return;
    const int c = (int)(q % C);
    const long long r = q / C;
    const int ox = (int)(r % Wo), oy = (int)((r / Wo) % Ho), n = (int)(r / ((long long)Wo * Ho));
    y[q] = x[(((size_t)n * H + oy / fy) * W + ox / fx) * C + c];
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

// Channel copy with an activation, out of place: y[r*ct + offset + c] = act(x[r*ci + c]) for
// r < rows, c < ci. Concatenate on the channel axis is one launch per input (ct = the total
// channels, offset = the channels of the inputs before it, linear); a stand-alone Activation
// layer is ct = ci, offset 0. One thread per copied value (coalesced reads; writes in runs of
// ci). Block 256; grid ceil(rows*ci / 256). Bytes: 8 rows ci; FLOPs ~rows ci.
CD_KERNEL cd_nn_copy_channels(const float* __restrict__ x, float* __restrict__ y, long long rows, int ci, int ct,
                              int offset, int act) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * ci) return;
    const long long r = i / ci;
    const int c = (int)(i % ci);
    y[r * ct + offset + c] = cd_act(x[i], act);
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
