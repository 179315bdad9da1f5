// Phasing kernels, batched over items = patterns x starts. Every array is item-major and in
// FFT-native order (origin at pixel 0,0: the centring shift is applied once on the host,
// never per iteration). complex64 is float2. One iteration is
//   cuFFT forward (g -> F)  ->  cd_modulus_project (F in place, Fourier-error partials)
//   -> cuFFT inverse, unscaled (F -> G')  ->  cd_support_update (g, with 1/N and the
//   constraint fused, real-space error partials).
// Reductions are two-stage and deterministic: one partial per block, in a fixed order, summed
// by cd_record_errors (in double) only when the program records.
//
// Launch shape of the element-wise kernels: block CD_BLOCK threads, grid (bpi, items);
// block (bx, item) covers pixels bx*CD_BLOCK + k*bpi*CD_BLOCK of its item (grid-stride), so
// any L works. Costs below are per launch with P = items * L pixels.
#include "common.cuh"

// Modulus projection with the mask, fused with the per-item Fourier-error reduction.
// Measured pixels (amp >= 0) get modulus amp, phase kept (|F| floored at CD_TINY); unmeasured
// pixels (amp < 0) keep F, times w for masked pixels damped by --missing-centre (amp in
// [-1.25, -1), see below). With project == 0, F is only measured (final error), not written.
// partial[item * bpi + bx] = sum over the block's measured pixels of (|F| - amp)^2.
// amp is per pattern: item / starts.
// Bytes: 12 P read (F 8, amp 4) + 8 P written (project) ; FLOPs ~12 P (|F|, sqrt, div, 2 mul).
CD_KERNEL cd_modulus_project(float2* __restrict__ f, const float* __restrict__ amp, int L, int starts,
                             int project, float* __restrict__ partial) {
    const int item = blockIdx.y;
    float2* fi = f + (size_t)item * L;
    const float* ai = amp + (size_t)(item / starts) * L;
    float err = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 v = fi[i];
        const float a = ai[i];
        if (a >= 0.0f) {
            const float m = sqrtf(v.x * v.x + v.y * v.y);
            const float d = m - a;
            err += d * d;
            if (project) {
                const float r = a / fmaxf(m, CD_TINY);
                fi[i] = make_float2(v.x * r, v.y * r);
            }
        } else if (project && a > -1.5f) {
            // a masked pixel damped by --missing-centre (phasing::problem::masked_weight):
            // stored as -1 - (1 - w) / 4, F multiplied by w; -1 (w = 1) and held-out pixels
            // (<= -2) are left as they are
            const float wm = fminf(fmaxf(fmaf(4.0f, a, 5.0f), 0.0f), 1.0f);
            if (wm < 1.0f) fi[i] = make_float2(v.x * wm, v.y * wm);
        }
    }
    err = cd_block_sum(err);
    if (threadIdx.x == 0) partial[(size_t)item * gridDim.x + blockIdx.x] = err;
}

// Support update fused with the inverse FFT's 1/N (`scale`) and the constraint:
//   p = scale * G'; where the constraint holds g = p, elsewhere g = a*g + b*p, per component:
//   constraint 0 (none): both components inside the support;
//   constraint 1 (real): the real part inside the support, the imaginary part always outside;
//   constraint 2 (positive): the real part inside the support where Re p >= 0.
// (a, b) = ER (0, 0), HIO (1, -beta), RAAR (beta, 1 - 2 beta) as in the CPU backend.
// partial[2 * (item * bpi + bx) + {0, 1}] = block sums of |p|^2 outside the support and of
// |p|^2 (real-space error = sqrt(outside / total)).
// Bytes: 17 P read (g 8, G' 8, support 1) + 8 P written; FLOPs ~14 P.
CD_KERNEL cd_support_update(float2* __restrict__ g, const float2* __restrict__ gp,
                            const unsigned char* __restrict__ sup, int L, float a, float b,
                            int constraint, float scale, float* __restrict__ partial) {
    const int item = blockIdx.y;
    float2* gi = g + (size_t)item * L;
    const float2* pi = gp + (size_t)item * L;
    const unsigned char* si = sup + (size_t)item * L;
    float out = 0.0f, tot = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 q = pi[i];
        const float pr = q.x * scale, pm = q.y * scale;
        const float e = pr * pr + pm * pm;
        const bool inside = si[i] != 0;
        out += inside ? 0.0f : e;
        tot += e;
        const bool mre = constraint == 2 ? (inside && pr >= 0.0f) : inside;
        const bool mim = constraint == 0 ? inside : false;
        const float2 o = gi[i];
        gi[i] = make_float2(mre ? pr : a * o.x + b * pr, mim ? pm : a * o.y + b * pm);
    }
    out = cd_block_sum(out);
    tot = cd_block_sum(tot);
    if (threadIdx.x == 0) {
        const size_t k = (size_t)item * gridDim.x + blockIdx.x;
        partial[2 * k] = out;
        partial[2 * k + 1] = tot;
    }
}

// Second stage of the error reductions, one thread per item, partials summed in double in
// block order: fourier[item * records + rec] = sqrt(sum_f / sum_a2[pattern]) (0 if sum_a2 is 0)
// and, when pr is not null, real[item * records + rec] = sqrt(max(out, 0) / tot) (0 if tot is 0).
// Bytes: items * (4 bpi_f + 8 bpi_r + 16); FLOPs: items * (bpi_f + 2 bpi_r + 4).
CD_KERNEL cd_record_errors(const float* __restrict__ pf, int bpi_f, const float* __restrict__ pr, int bpi_r,
                           const double* __restrict__ sum_a2, int items, int starts, int records, int rec,
                           float* __restrict__ fourier, float* __restrict__ real) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    double sf = 0.0;
    for (int k = 0; k < bpi_f; ++k) sf += (double)pf[(size_t)item * bpi_f + k];
    const double den = sum_a2[item / starts];
    fourier[(size_t)item * records + rec] = den > 0.0 ? (float)sqrt(sf / den) : 0.0f;
    if (pr != nullptr) {
        double so = 0.0, st = 0.0;
        for (int k = 0; k < bpi_r; ++k) {
            so += (double)pr[2 * ((size_t)item * bpi_r + k)];
            st += (double)pr[2 * ((size_t)item * bpi_r + k) + 1];
        }
        const double o = so > 0.0 ? so : 0.0;
        real[(size_t)item * records + rec] = st > 0.0 ? (float)sqrt(o / st) : 0.0f;
    }
}

// The Poisson log-likelihood terms of F (not modified), for the recorded iterations and the
// final object: per pixel, with Io = amp^2 and Ic = max(|F|^2, CD_LLK_FLOOR),
//   d = Ic - Io - Io ln(Ic / Io)  (d = Ic when Io = 0),
// written as Io (x - ln(1 + x)), x = Ic/Io - 1, with log1pf where |x| < 0.5 (the CPU's
// llk_term). Measured pixels (amp >= 0) and held-out pixels (amp <= -2, amplitude
// -amp - 2) are summed apart: partial[2 * (item * bpi + bx) + {0, 1}].
// Bytes: 12 P read; FLOPs ~10 P + one log per measured pixel.
#define CD_LLK_FLOOR 1e-20f
#define CD_FREE_OFFSET 2.0f
__device__ __forceinline__ float cd_llk_term(float ic, float a) {
    const float io = a * a;
    ic = fmaxf(ic, CD_LLK_FLOOR);
    if (io <= 0.0f) return ic;
    const float r = ic / io;
    const float x = r - 1.0f;
    const float l = fabsf(x) < 0.5f ? log1pf(x) : logf(r);
    return io * (x - l);
}

CD_KERNEL cd_poisson_llk(const float2* __restrict__ f, const float* __restrict__ amp, int L, int starts,
                         float* __restrict__ partial) {
    const int item = blockIdx.y;
    const float2* fi = f + (size_t)item * L;
    const float* ai = amp + (size_t)(item / starts) * L;
    float sm = 0.0f, sf = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float a = ai[i];
        if (a >= 0.0f || a <= -0.5f * (1.0f + CD_FREE_OFFSET)) {
            const float2 v = fi[i];
            const float ic = v.x * v.x + v.y * v.y;
            if (a >= 0.0f)
                sm += cd_llk_term(ic, a);
            else
                sf += cd_llk_term(ic, -a - CD_FREE_OFFSET);
        }
    }
    sm = cd_block_sum(sm);
    sf = cd_block_sum(sf);
    if (threadIdx.x == 0) {
        const size_t k = (size_t)item * gridDim.x + blockIdx.x;
        partial[2 * k] = sm;
        partial[2 * k + 1] = sf;
    }
}

// Second stage of the log-likelihoods, one thread per item, partials summed in double in
// block order and divided by the pixel counts of the item's pattern (counts[2 p] measured,
// counts[2 p + 1] held out; NaN for a count of 0):
//   llk[item * records + rec], free_llk[item * records + rec].
// Bytes: items * (8 bpi + 16); FLOPs: items * (2 bpi + 2).
CD_KERNEL cd_record_llk(const float* __restrict__ pl, int bpi, const int* __restrict__ counts, int items,
                        int starts, int records, int rec, float* __restrict__ llk, float* __restrict__ free_llk) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    double sm = 0.0, sf = 0.0;
    for (int k = 0; k < bpi; ++k) {
        sm += (double)pl[2 * ((size_t)item * bpi + k)];
        sf += (double)pl[2 * ((size_t)item * bpi + k) + 1];
    }
    const int p = item / starts;
    const int cm = counts[2 * p], cf = counts[2 * p + 1];
    llk[(size_t)item * records + rec] = cm > 0 ? (float)(sm / cm) : nanf("");
    free_llk[(size_t)item * records + rec] = cf > 0 ? (float)(sf / cf) : nanf("");
}

// Shrinkwrap pass 1: |g| and the periodic Gaussian blur along rows, one block per (row, item);
// the row of |g| and the kernel sit in dynamic shared memory ((w + klen) floats):
//   tmp[y][x] = sum_j kern[j] |g[y][(x + j - r) mod w]|, r = klen / 2 (any r, also r >= w).
// Bytes: 8 P read + 4 P written (+ kernel, from cache); FLOPs: (2 klen + 3) P.
CD_KERNEL cd_sw_blur_rows(const float2* __restrict__ g, int h, int w, const float* __restrict__ kern, int klen,
                          float* __restrict__ tmp) {
    CD_DYNAMIC_SHARED(float, sm);
    float* row = sm;
    float* k = sm + w;
    const int y = blockIdx.x, item = blockIdx.y;
    const size_t base = ((size_t)item * h + y) * w;
    for (int x = threadIdx.x; x < w; x += blockDim.x) {
        const float2 v = g[base + x];
        row[x] = sqrtf(v.x * v.x + v.y * v.y);
    }
    for (int j = threadIdx.x; j < klen; j += blockDim.x) k[j] = kern[j];
    __syncthreads();
    const int r = klen / 2;
    for (int x = threadIdx.x; x < w; x += blockDim.x) {
        int xx = (x - r) % w;
        if (xx < 0) xx += w;
        float acc = 0.0f;
        for (int j = 0; j < klen; ++j) {
            acc += k[j] * row[xx];
            if (++xx == w) xx = 0;
        }
        tmp[base + x] = acc;
    }
}

// Shrinkwrap pass 2: the periodic blur along columns (coalesced: consecutive threads take
// consecutive x), kernel in dynamic shared memory (klen floats), plus the per-block maximum:
//   mag[y][x] = sum_j kern[j] tmp[(y + j - r) mod h][x];  pmax[item * bpi + bx] = block max.
// Grid (bpi, items). Bytes: 4 P read (each value reused klen times from L1/L2) + 4 P written;
// FLOPs: 2 klen P.
CD_KERNEL cd_sw_blur_cols(const float* __restrict__ tmp, int h, int w, const float* __restrict__ kern, int klen,
                          float* __restrict__ mag, float* __restrict__ pmax) {
    CD_DYNAMIC_SHARED(float, k);
    for (int j = threadIdx.x; j < klen; j += blockDim.x) k[j] = kern[j];
    __syncthreads();
    const int item = blockIdx.y;
    const int L = h * w;
    const float* ti = tmp + (size_t)item * L;
    float* mi = mag + (size_t)item * L;
    const int r = klen / 2;
    float mx = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const int y = i / w, x = i - y * w;
        int yy = (y - r) % h;
        if (yy < 0) yy += h;
        float acc = 0.0f;
        for (int j = 0; j < klen; ++j) {
            acc += k[j] * ti[(size_t)yy * w + x];
            if (++yy == h) yy = 0;
        }
        mi[i] = acc;
        mx = fmaxf(mx, acc);
    }
    mx = cd_block_max(mx);
    if (threadIdx.x == 0) pmax[(size_t)item * gridDim.x + blockIdx.x] = mx;
}

// Shrinkwrap pass 3: every block first reduces its item's block maxima (bpi values), then
// thresholds: sup = mag >= threshold * max. The support is left unchanged when the maximum
// is not positive and finite (zero or non-finite object), as on the CPU.
// Bytes: 4 P read + 1 P written (+ items * bpi * bpi * 4 for the maxima); FLOPs: P.
CD_KERNEL cd_sw_threshold(const float* __restrict__ mag, int L, const float* __restrict__ pmax, int bpi,
                          float threshold, unsigned char* __restrict__ sup) {
    const int item = blockIdx.y;
    float mx = 0.0f;
    for (int k = threadIdx.x; k < bpi; k += blockDim.x) mx = fmaxf(mx, pmax[(size_t)item * bpi + k]);
    mx = cd_block_max(mx);
    __shared__ float s_max;
    if (threadIdx.x == 0) s_max = mx;
    __syncthreads();
    mx = s_max;
    if (!(mx > 0.0f && isfinite(mx))) return;
    const float t = threshold * mx;
    const float* mi = mag + (size_t)item * L;
    unsigned char* si = sup + (size_t)item * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x)
        si[i] = mi[i] >= t ? 1 : 0;
}

// The general shrinkwrap (per-start threshold factors, a reference other than the maximum, a
// support-fraction guard), after cd_sw_blur_rows and cd_sw_blur_cols:
//   cd_sw_stats -> cd_sw_level -> [cd_sw_count -> cd_sw_guard] -> cd_sw_apply.
// The plain shrinkwrap (factor 1, maximum, no guard) keeps cd_sw_threshold.

// Per block, over the item's current support: sum of mag, sum of mag^2 and the pixel count,
// pstat[3 * (item * bpi + bx) + {0, 1, 2}]. Grid (bpi, items).
// Bytes: 5 P read; FLOPs: 3 P.
CD_KERNEL cd_sw_stats(const float* __restrict__ mag, const unsigned char* __restrict__ sup, int L,
                      float* __restrict__ pstat) {
    const int item = blockIdx.y;
    const float* mi = mag + (size_t)item * L;
    const unsigned char* si = sup + (size_t)item * L;
    float s = 0.0f, q = 0.0f, c = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        if (si[i] != 0) {
            const float m = mi[i];
            s += m;
            q += m * m;
            c += 1.0f;
        }
    }
    s = cd_block_sum(s);
    q = cd_block_sum(q);
    c = cd_block_sum(c);
    if (threadIdx.x == 0) {
        const size_t k = (size_t)item * gridDim.x + blockIdx.x;
        pstat[3 * k] = s;
        pstat[3 * k + 1] = q;
        pstat[3 * k + 2] = c;
    }
}

// One thread per item: the reference (reference 0: the maximum, from pmax; 1: the mean and
// 2: the rms over the support, from pstat, in double) and the level
//   level[item] = (threshold * factor[item]) * reference,
// NaN where the maximum is not positive and finite or the support is empty (the support
// stays as it is, as on the CPU). Bytes: items * bpi * 16; FLOPs: items * 4 bpi.
CD_KERNEL cd_sw_level(const float* __restrict__ pmax, const float* __restrict__ pstat, int bpi, int items,
                      float threshold, int reference, const float* __restrict__ factor,
                      float* __restrict__ level) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    float mx = 0.0f;
    double s = 0.0, q = 0.0, c = 0.0;
    for (int k = 0; k < bpi; ++k) {
        const size_t b = (size_t)item * bpi + k;
        mx = fmaxf(mx, pmax[b]);
        s += (double)pstat[3 * b];
        q += (double)pstat[3 * b + 1];
        c += (double)pstat[3 * b + 2];
    }
    float ref = mx;
    bool ok = mx > 0.0f && isfinite(mx);
    if (reference != 0) {
        ok = ok && c > 0.0;
        ref = ok ? (float)(reference == 1 ? s / c : sqrt(q / c)) : 0.0f;
    }
    level[item] = ok ? (threshold * factor[item]) * ref : nanf("");
}

// Per block, the pixels at or above the item's level: pcount[item * bpi + bx] (exact in
// float: at most L < 2^24 per item). Grid (bpi, items). Bytes: 4 P read; FLOPs: P.
CD_KERNEL cd_sw_count(const float* __restrict__ mag, int L, const float* __restrict__ level,
                      float* __restrict__ pcount) {
    const int item = blockIdx.y;
    const float t = level[item];
    const float* mi = mag + (size_t)item * L;
    float c = 0.0f;
    if (!isnan(t))
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x)
            c += mi[i] >= t ? 1.0f : 0.0f;
    c = cd_block_sum(c);
    if (threadIdx.x == 0) pcount[(size_t)item * gridDim.x + blockIdx.x] = c;
}

// One thread per item, the guard: the new support's fraction of the field; below gmin the
// shrinkwrap is refused (level = NaN) and factor /= tune, above gmax refused and
// factor *= tune; events[item] counts the refusals. Bytes: items * (4 bpi + 16).
CD_KERNEL cd_sw_guard(const float* __restrict__ pcount, int bpi, int items, int L, float gmin, float gmax,
                      float tune, float* __restrict__ factor, int* __restrict__ events,
                      float* __restrict__ level) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    if (isnan(level[item])) return;
    double c = 0.0;
    for (int k = 0; k < bpi; ++k) c += (double)pcount[(size_t)item * bpi + k];
    const float frac = (float)c / (float)L;
    if (frac < gmin) {
        factor[item] /= tune;
        events[item] += 1;
        level[item] = nanf("");
    } else if (frac > gmax) {
        factor[item] *= tune;
        events[item] += 1;
        level[item] = nanf("");
    }
}

// The new support where the item's level is a number: sup = mag >= level. Grid (bpi, items).
// Bytes: 4 P read + 1 P written.
CD_KERNEL cd_sw_apply(const float* __restrict__ mag, int L, const float* __restrict__ level,
                      unsigned char* __restrict__ sup) {
    const int item = blockIdx.y;
    const float t = level[item];
    if (isnan(t)) return;
    const float* mi = mag + (size_t)item * L;
    unsigned char* si = sup + (size_t)item * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x)
        si[i] = mi[i] >= t ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Poisson maximum-likelihood refinement (the schedule's ML steps): conjugate gradient on the
// object inside the support, minimising L = sum over measured pixels of (Ic + eps) -
// Io ln(Ic + eps), Ic = |FFT(g)|^2, Io = amp^2, eps per pattern. The CPU engine's
// src/backend/cpu/phasing/ml.rs has the same formulas pass by pass and the same per-item
// rules (cd_ml_beta = beta_rule, cd_ml_newton = newton_rule). One iteration:
//   cuFFT g -> F; cd_ml_weights (F -> W F); cuFFT inverse (W F -> grad); cd_ml_grad (mask,
//   dot partials); cd_ml_beta (one thread per item); cd_ml_direction; cuFFT d -> D;
//   CD_ML_PASSES x (cd_ml_line, cd_ml_newton); cd_ml_step.
// The per-item state is 8 doubles: gprev_norm, beta, t, tbest, dlbest, restart, done, unused.
#define CD_ML_GPREV 0
#define CD_ML_BETA 1
#define CD_ML_T 2
#define CD_ML_TBEST 3
#define CD_ML_DLBEST 4
#define CD_ML_RESTART 5
#define CD_ML_DONE 6
#define CD_ML_STATE 8

// Confine g to the support and the constraint (as ER): zero outside; constraint 1 (real) and
// 2 (positive) drop the imaginary part, 2 clips negative real parts; and reset the item's
// state (restart, no previous gradient). Grid (bpi, items). Bytes: 9 P read + 8 P written.
CD_KERNEL cd_ml_start(float2* __restrict__ g, const unsigned char* __restrict__ sup, int L, int constraint,
                      double* __restrict__ state) {
    const int item = blockIdx.y;
    float2* gi = g + (size_t)item * L;
    const unsigned char* si = sup + (size_t)item * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 v = gi[i];
        float2 o;
        if (si[i] == 0)
            o = make_float2(0.0f, 0.0f);
        else if (constraint == 0)
            o = v;
        else if (constraint == 1)
            o = make_float2(v.x, 0.0f);
        else
            o = make_float2(fmaxf(v.x, 0.0f), 0.0f);
        gi[i] = o;
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        double* st = state + (size_t)item * CD_ML_STATE;
        for (int k = 0; k < CD_ML_STATE; ++k) st[k] = 0.0;
        st[CD_ML_RESTART] = 1.0;
    }
}

// out = 2 (1 - Io / (|F|^2 + eps)) F on measured pixels (amp >= 0), 0 elsewhere (unmeasured
// and held-out pixels do not enter the gradient). eps per pattern (item / starts).
// Bytes: 12 P read + 8 P written; FLOPs ~8 P.
CD_KERNEL cd_ml_weights(const float2* __restrict__ f, const float* __restrict__ amp,
                        const float* __restrict__ eps, int L, int starts, float2* __restrict__ out) {
    const int item = blockIdx.y;
    const float2* fi = f + (size_t)item * L;
    const float* ai = amp + (size_t)(item / starts) * L;
    const float e = eps[item / starts];
    float2* oi = out + (size_t)item * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float a = ai[i];
        const float2 v = fi[i];
        float2 o = make_float2(0.0f, 0.0f);
        if (a >= 0.0f) {
            const float io = a * a;
            const float c = v.x * v.x + v.y * v.y + e;
            const float w = 2.0f * (1.0f - io / c);
            o = make_float2(w * v.x, w * v.y);
        }
        oi[i] = o;
    }
}

// The gradient (the unscaled inverse FFT of cd_ml_weights) restricted to the support and the
// constraint (positivity also holds pixels at zero whose gradient points below zero), with
// the block sums of |grad|^2, <grad, gprev> and <grad, d> (<a, b> = sum Re(conj(a) b); the
// last two only when the item does not restart): partial[3 * (item * bpi + bx) + {0, 1, 2}].
// Bytes: 33 P read + 8 P written; FLOPs ~10 P.
CD_KERNEL cd_ml_grad(float2* __restrict__ grad, const float2* __restrict__ g, const unsigned char* __restrict__ sup,
                     int L, int constraint, const float2* __restrict__ gprev, const float2* __restrict__ d,
                     const double* __restrict__ state, float* __restrict__ partial) {
    const int item = blockIdx.y;
    const size_t base = (size_t)item * L;
    const bool restart = state[(size_t)item * CD_ML_STATE + CD_ML_RESTART] != 0.0;
    float gg = 0.0f, gp = 0.0f, gd = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 q = grad[base + i];
        float2 v = make_float2(0.0f, 0.0f);
        if (sup[base + i] != 0) {
            if (constraint == 0)
                v = q;
            else if (constraint == 1)
                v = make_float2(q.x, 0.0f);
            else {
                const bool hold = g[base + i].x <= 0.0f && q.x > 0.0f;
                v = make_float2(hold ? 0.0f : q.x, 0.0f);
            }
        }
        grad[base + i] = v;
        gg += v.x * v.x + v.y * v.y;
        if (!restart) {
            const float2 p = gprev[base + i], e = d[base + i];
            gp += v.x * p.x + v.y * p.y;
            gd += v.x * e.x + v.y * e.y;
        }
    }
    gg = cd_block_sum(gg);
    gp = cd_block_sum(gp);
    gd = cd_block_sum(gd);
    if (threadIdx.x == 0) {
        const size_t k = (size_t)item * gridDim.x + blockIdx.x;
        partial[3 * k] = gg;
        partial[3 * k + 1] = gp;
        partial[3 * k + 2] = gd;
    }
}

// One thread per item: the Polak-Ribiere factor (PR+) from the partials of cd_ml_grad,
// summed in double in block order; 0 at a restart, where not finite, or where the new
// direction would not descend. Sets beta and gprev_norm (the CPU's beta_rule).
CD_KERNEL cd_ml_beta(const float* __restrict__ partial, int bpi, int items, double* __restrict__ state) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    double gg = 0.0, gp = 0.0, gd = 0.0;
    for (int k = 0; k < bpi; ++k) {
        const size_t b = (size_t)item * bpi + k;
        gg += (double)partial[3 * b];
        gp += (double)partial[3 * b + 1];
        gd += (double)partial[3 * b + 2];
    }
    double* st = state + (size_t)item * CD_ML_STATE;
    double beta = 0.0;
    if (st[CD_ML_RESTART] == 0.0 && st[CD_ML_GPREV] > 0.0) {
        beta = (gg - gp) / st[CD_ML_GPREV];
        if (!(isfinite(beta) && beta > 0.0) || !(-gg + beta * gd < 0.0)) beta = 0.0;
    }
    st[CD_ML_BETA] = beta;
    st[CD_ML_GPREV] = gg;
    st[CD_ML_T] = 0.0;
}

// d = -grad + beta d (d = -grad when beta is 0, never reading the old d); gprev = grad.
// Bytes: 16 P read + 16 P written.
CD_KERNEL cd_ml_direction(const float2* __restrict__ grad, float2* __restrict__ d, float2* __restrict__ gprev,
                          int L, const double* __restrict__ state) {
    const int item = blockIdx.y;
    const size_t base = (size_t)item * L;
    const double beta = state[(size_t)item * CD_ML_STATE + CD_ML_BETA];
    const float b = (float)beta;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 q = grad[base + i];
        if (beta == 0.0) {
            d[base + i] = make_float2(-q.x, -q.y);
        } else {
            const float2 e = d[base + i];
            d[base + i] = make_float2(b * e.x - q.x, b * e.y - q.y);
        }
        gprev[base + i] = q;
    }
}

// One pixel of the 1-D likelihood along the direction at step t (the CPU's line_term): with
// c0 = |F|^2 + eps, p = Re(conj(F) D), dd = |D|^2, delta = t (2p + t dd), c = c0 + delta:
// L(t) - L(0) term delta - Io ln(c / c0) (log1p near 1), L'(t) term (1 - Io/c) q with
// q = 2 (p + t dd), Gauss-Newton curvature Io/c^2 q^2 + max(0, 1 - Io/c) 2 dd.
__device__ __forceinline__ void cd_ml_line_term(float2 v, float2 w, float a, float eps, float t, float& dl,
                                                float& d1, float& d2) {
    const float io = a * a;
    const float c0 = v.x * v.x + v.y * v.y + eps;
    const float p = v.x * w.x + v.y * w.y;
    const float dd = w.x * w.x + w.y * w.y;
    const float delta = t * (2.0f * p + t * dd);
    const float c = fmaxf(c0 + delta, eps);
    const float x = delta / c0;
    const float l = fabsf(x) < 0.5f ? log1pf(x) : logf(c / c0);
    const float r = io / c;
    const float q = 2.0f * (p + t * dd);
    dl += delta - io * l;
    d1 += (1.0f - r) * q;
    d2 += r / c * q * q + fmaxf(1.0f - r, 0.0f) * 2.0f * dd;
}

// Block sums of the line-search terms at the item's current t over measured pixels:
// partial[3 * (item * bpi + bx) + {0, 1, 2}] = (L(t) - L(0), L'(t), curvature).
// Bytes: 20 P read; FLOPs ~25 P + one log per measured pixel.
CD_KERNEL cd_ml_line(const float2* __restrict__ f, const float2* __restrict__ dd, const float* __restrict__ amp,
                     const float* __restrict__ eps, int L, int starts, const double* __restrict__ state,
                     float* __restrict__ partial) {
    const int item = blockIdx.y;
    const size_t base = (size_t)item * L;
    const float* ai = amp + (size_t)(item / starts) * L;
    const float e = eps[item / starts];
    const float t = (float)state[(size_t)item * CD_ML_STATE + CD_ML_T];
    float dl = 0.0f, d1 = 0.0f, d2 = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float a = ai[i];
        if (a >= 0.0f) cd_ml_line_term(f[base + i], dd[base + i], a, e, t, dl, d1, d2);
    }
    dl = cd_block_sum(dl);
    d1 = cd_block_sum(d1);
    d2 = cd_block_sum(d2);
    if (threadIdx.x == 0) {
        const size_t k = (size_t)item * gridDim.x + blockIdx.x;
        partial[3 * k] = dl;
        partial[3 * k + 1] = d1;
        partial[3 * k + 2] = d2;
    }
}

// One thread per item: the line search's next t after pass `pass` (the CPU's newton_rule).
CD_KERNEL cd_ml_newton(const float* __restrict__ partial, int bpi, int items, int pass,
                       double* __restrict__ state) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    double dl = 0.0, g1 = 0.0, g2 = 0.0;
    for (int k = 0; k < bpi; ++k) {
        const size_t b = (size_t)item * bpi + k;
        dl += (double)partial[3 * b];
        g1 += (double)partial[3 * b + 1];
        g2 += (double)partial[3 * b + 2];
    }
    double* st = state + (size_t)item * CD_ML_STATE;
    if (pass == 0) {
        st[CD_ML_TBEST] = 0.0;
        st[CD_ML_DLBEST] = 0.0;
        const double t = -g1 / g2;
        const bool done = !(g1 < 0.0 && g2 > 0.0 && isfinite(t));
        st[CD_ML_DONE] = done ? 1.0 : 0.0;
        st[CD_ML_T] = done ? 0.0 : t;
        return;
    }
    if (st[CD_ML_DONE] != 0.0) return;
    const bool improved = isfinite(dl) && dl < st[CD_ML_DLBEST];
    if (improved) {
        st[CD_ML_DLBEST] = dl;
        st[CD_ML_TBEST] = st[CD_ML_T];
    }
    double next = improved && g2 > 0.0 ? st[CD_ML_T] - g1 / g2 : 0.5 * (st[CD_ML_T] + st[CD_ML_TBEST]);
    if (!(isfinite(next) && next > 0.0)) next = 0.5 * st[CD_ML_T];
    st[CD_ML_T] = next;
}

// g += tbest d where tbest is not 0 (clipped at zero under positivity, constraint 2).
// cd_ml_finish then sets the restart flag (a separate launch: every block reads the state
// here). Bytes: 16 P read + 8 P written.
CD_KERNEL cd_ml_step(float2* __restrict__ g, const float2* __restrict__ d, int L, int constraint,
                     double* __restrict__ state) {
    const int item = blockIdx.y;
    const size_t base = (size_t)item * L;
    const double tb = state[(size_t)item * CD_ML_STATE + CD_ML_TBEST];
    if (tb != 0.0) {
        const float t = (float)tb;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
            const float2 v = g[base + i], e = d[base + i];
            float re = v.x + t * e.x;
            const float im = v.y + t * e.y;
            if (constraint == 2) re = fmaxf(re, 0.0f);
            g[base + i] = make_float2(re, im);
        }
    }
}

// One thread per item, after cd_ml_step: restart = (tbest == 0).
CD_KERNEL cd_ml_finish(int items, double* __restrict__ state) {
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= items) return;
    double* st = state + (size_t)item * CD_ML_STATE;
    st[CD_ML_RESTART] = st[CD_ML_TBEST] == 0.0 ? 1.0 : 0.0;
}

// ---- Populations and merging (issue 19): alignment, recombination, average, Gram ---------
// The GA's breeding and `--merge` on the device (orchestration: src/backend/gpu/population.rs,
// the host reference: src/phasing/merge.rs). They work on a stack X of m images gathered
// from a run's iterates (native order, item-major) and on P pairs (a = X[pa[p]], the
// reference, b = X[pb[p]], the image aligned onto it):
//   cd_pop_gather -> cd_pop_moduli -> FFT -> cd_pop_xpower -> IFFT -> cd_pop_argmax
//   -> cd_pop_overlap -> cd_pop_align_finish -> cd_pop_apply [-> cd_pop_recombine]
// and, for the merge of n images per pattern (the reference first, its n - 1 others aligned):
//   cd_pop_mean, cd_pop_gram -> cd_pop_gram_finish -> (host: n x n eigenproblem)
//   -> cd_pop_modes -> cd_pop_argmax (mode 1) -> cd_pop_rotate.
// Alignment of b onto a: the shift d maximising the circular cross-correlation of |a| and
// |t| for t = b and its twin conj(b(-x)) (FFT|twin b| = conj FFT|b| since |b| is real, so
// one FFT of |b| serves both), then of the two the one with the larger complex overlap
// |sum conj(t(x - d)) a(x)|, then the global phase c / |c|.

// X[j] = g[idx[j]] inside s[idx[j]] with the constraint (0 outside), S[j] = s[idx[j]].
// Grid (bpi, m). Bytes: 17 P read + 9 P written.
CD_KERNEL cd_pop_gather(const float2* __restrict__ g, const unsigned char* __restrict__ s,
                        const int* __restrict__ idx, int L, int constraint, float2* __restrict__ x,
                        unsigned char* __restrict__ xs) {
    const int j = blockIdx.y;
    const size_t src = (size_t)idx[j] * L, dst = (size_t)j * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const unsigned char m = s[src + i];
        const float2 v = g[src + i];
        float2 o = make_float2(0.0f, 0.0f);
        if (m != 0) {
            if (constraint == 0) o = v;
            else if (constraint == 1) o = make_float2(v.x, 0.0f);
            else o = make_float2(fmaxf(v.x, 0.0f), 0.0f);
        }
        x[dst + i] = o;
        xs[dst + i] = m;
    }
}

// M[2p] = |X[pa[p]]|, M[2p + 1] = |X[pb[p]]| (imaginary parts 0). Grid (bpi, P).
CD_KERNEL cd_pop_moduli(const float2* __restrict__ x, const int* __restrict__ pa,
                        const int* __restrict__ pb, int L, float2* __restrict__ m) {
    const int p = blockIdx.y;
    const float2* a = x + (size_t)pa[p] * L;
    const float2* b = x + (size_t)pb[p] * L;
    float2* ma = m + (size_t)(2 * p) * L;
    float2* mb = m + (size_t)(2 * p + 1) * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 u = a[i], v = b[i];
        ma[i] = make_float2(sqrtf(u.x * u.x + u.y * u.y), 0.0f);
        mb[i] = make_float2(sqrtf(v.x * v.x + v.y * v.y), 0.0f);
    }
}

// After the forward FFT of M: FA = M[2p], FB = M[2p + 1] become the cross-power spectra
// M[2p] = FA conj(FB) (b as it is) and M[2p + 1] = FA FB (its twin). Grid (bpi, P).
CD_KERNEL cd_pop_xpower(float2* __restrict__ m, int L) {
    const int p = blockIdx.y;
    float2* fa = m + (size_t)(2 * p) * L;
    float2* fb = m + (size_t)(2 * p + 1) * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 a = fa[i], b = fb[i];
        fa[i] = make_float2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y);
        fb[i] = make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
    }
}

// Per image of M (grid (1, images), block CD_BLOCK, dynamic shared CD_BLOCK * 8 bytes): the
// index of its largest value, best[q]. mode 0: the real part, ties to the lowest index (the
// host's cross-correlation maximum); mode 1: |v|^2, ties to the highest index (Rust's
// max_by, the host's mode phase), and then fac[q] = conj(v) / |v| of that pixel (1 when 0).
// NaN never wins; an image of NaN gives index 0.
CD_KERNEL cd_pop_argmax(const float2* __restrict__ m, int L, int mode, int* __restrict__ best,
                        float2* __restrict__ fac) {
    const int q = blockIdx.y;
    const float2* mi = m + (size_t)q * L;
    CD_DYNAMIC_SHARED(float, sv);
    int* si = reinterpret_cast<int*>(sv + blockDim.x);
    float bv = 0.0f;
    int bi = -1;
    for (int i = threadIdx.x; i < L; i += blockDim.x) {
        const float2 v = mi[i];
        const float e = mode == 0 ? v.x : v.x * v.x + v.y * v.y;
        // i grows: strict > keeps the lowest index, >= the highest; NaN (e != e) never wins
        if (e == e && (bi < 0 || (mode == 0 ? e > bv : e >= bv))) {
            bv = e;
            bi = i;
        }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            const float ov = sv[threadIdx.x + s];
            const int oi = si[threadIdx.x + s];
            const float v = sv[threadIdx.x];
            const int vi = si[threadIdx.x];
            bool take;
            if (oi < 0) take = false;
            else if (vi < 0) take = true;
            else if (ov != v) take = ov > v;
            else take = mode == 0 ? oi < vi : oi > vi;
            if (take) {
                sv[threadIdx.x] = ov;
                si[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const int b = si[0] < 0 ? 0 : si[0];
        best[q] = b;
        if (mode == 1 && fac != nullptr) {
            const float2 v = mi[b];
            const float n = sqrtf(v.x * v.x + v.y * v.y);
            fac[q] = n > 0.0f ? make_float2(v.x / n, -v.y / n) : make_float2(1.0f, 0.0f);
        }
    }
}

// The source pixel of t(y - dy, x - dx) in b, for t = b or (twin) conj(b(-y, -x)).
__device__ __forceinline__ int cd_pop_src(int i, int h, int w, int dy, int dx, int twin) {
    const int y = i / w, x = i - (i / w) * w;
    int sy = y - dy;
    sy += sy < 0 ? h : 0;
    int sx = x - dx;
    sx += sx < 0 ? w : 0;
    if (twin) {
        sy = sy == 0 ? 0 : h - sy;
        sx = sx == 0 ? 0 : w - sx;
    }
    return sy * w + sx;
}

// Candidate q = 2p + twin: partial sums of conj(t(x - d)) a(x), d = best[q] as (d / w, d % w),
// pc[2 (q bpi + bx) + {0, 1}]. Grid (bpi, 2P). Bytes: 16 P read per candidate.
CD_KERNEL cd_pop_overlap(const float2* __restrict__ x, const int* __restrict__ pa,
                         const int* __restrict__ pb, const int* __restrict__ best, int h, int w,
                         float* __restrict__ pc) {
    const int q = blockIdx.y, p = q >> 1, twin = q & 1;
    const int L = h * w;
    const float2* a = x + (size_t)pa[p] * L;
    const float2* b = x + (size_t)pb[p] * L;
    const int d = best[q], dy = d / w, dx = d - (d / w) * w;
    float re = 0.0f, im = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        float2 t = b[cd_pop_src(i, h, w, dy, dx, twin)];
        if (twin) t.y = -t.y;
        const float2 u = a[i];
        // conj(t) u
        re += t.x * u.x + t.y * u.y;
        im += t.x * u.y - t.y * u.x;
    }
    re = cd_block_sum(re);
    im = cd_block_sum(im);
    if (threadIdx.x == 0) {
        const size_t k = (size_t)q * gridDim.x + blockIdx.x;
        pc[2 * k] = re;
        pc[2 * k + 1] = im;
    }
}

// One thread per pair: the overlaps of its two candidates summed in double; the twin is kept
// when its |c| is larger by a relative 1e-12 (ties to b as it is, as the host). al[3p + {0, 1,
// 2}] = (dy, dx, twin), ph[2p + {0, 1}] = c / |c| (1 when c = 0).
CD_KERNEL cd_pop_align_finish(const float* __restrict__ pc, int bpi, const int* __restrict__ best,
                              int pairs, int w, int* __restrict__ al, float* __restrict__ ph) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pairs) return;
    double r0 = 0.0, i0 = 0.0, r1 = 0.0, i1 = 0.0;
    for (int k = 0; k < bpi; ++k) {
        const size_t b0 = (size_t)(2 * p) * bpi + k, b1 = (size_t)(2 * p + 1) * bpi + k;
        r0 += (double)pc[2 * b0];
        i0 += (double)pc[2 * b0 + 1];
        r1 += (double)pc[2 * b1];
        i1 += (double)pc[2 * b1 + 1];
    }
    const double n0 = sqrt(r0 * r0 + i0 * i0);
    const double n1 = sqrt(r1 * r1 + i1 * i1);
    const int t = n1 > n0 * (1.0 + 1e-12) ? 1 : 0;
    const double n = t ? n1 : n0, cr = t ? r1 : r0, ci = t ? i1 : i0;
    const int d = best[2 * p + t];
    al[3 * p] = d / w;
    al[3 * p + 1] = d - (d / w) * w;
    al[3 * p + 2] = t;
    ph[2 * p] = n > 0.0 ? (float)(cr / n) : 1.0f;
    ph[2 * p + 1] = n > 0.0 ? (float)(ci / n) : 0.0f;
}

// Y[p] = ph[p] t(x - d) for t = X[pb[p]] or its twin, and (xs, ys not null) the support
// moved alike (a point reflection for the twin). Grid (bpi, P). Bytes: 9 P read + 9 P written.
CD_KERNEL cd_pop_apply(const float2* __restrict__ x, const unsigned char* __restrict__ xs,
                       const int* __restrict__ pb, const int* __restrict__ al,
                       const float* __restrict__ ph, int h, int w, float2* __restrict__ y,
                       unsigned char* __restrict__ ys) {
    const int p = blockIdx.y;
    const int L = h * w;
    const size_t src = (size_t)pb[p] * L, dst = (size_t)p * L;
    const int dy = al[3 * p], dx = al[3 * p + 1], twin = al[3 * p + 2];
    const float fr = ph[2 * p], fi = ph[2 * p + 1];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const int j = cd_pop_src(i, h, w, dy, dx, twin);
        float2 t = x[src + j];
        if (twin) t.y = -t.y;
        y[dst + i] = make_float2(fr * t.x - fi * t.y, fr * t.y + fi * t.x);
        if (ys != nullptr) ys[dst + i] = xs[src + j];
    }
}

// The GA's child of a = X[pa[p]] and its aligned partner b' = Y[p]: sqrt(|a| |b'|) with a's
// phase (0 where a = 0), C[p]. Grid (bpi, P).
CD_KERNEL cd_pop_recombine(const float2* __restrict__ x, const int* __restrict__ pa,
                           const float2* __restrict__ y, int L, float2* __restrict__ c) {
    const int p = blockIdx.y;
    const float2* a = x + (size_t)pa[p] * L;
    const float2* b = y + (size_t)p * L;
    float2* o = c + (size_t)p * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 u = a[i], v = b[i];
        const float ma = sqrtf(u.x * u.x + u.y * u.y);
        const float mb = sqrtf(v.x * v.x + v.y * v.y);
        if (ma > 0.0f) {
            const float r = sqrtf(ma * mb) / ma;
            o[i] = make_float2(u.x * r, u.y * r);
        } else {
            o[i] = make_float2(0.0f, 0.0f);
        }
    }
}

// Image j of pattern q's aligned stack of n: X[q n] (the reference) for j = 0, else
// Y[q (n - 1) + j - 1].
__device__ __forceinline__ const float2* cd_pop_stack(const float2* x, const float2* y, int q, int n,
                                                      int j, int L) {
    return j == 0 ? x + (size_t)q * n * L : y + ((size_t)q * (n - 1) + j - 1) * L;
}

// The merge of pattern q (grid (bpi, patterns)): O[q] = mean of its aligned stack, U[q] = 1
// where at least half of the aligned supports (xs[q n] and ys[q (n - 1) + ...]) hold the pixel.
CD_KERNEL cd_pop_mean(const float2* __restrict__ x, const unsigned char* __restrict__ xs,
                      const float2* __restrict__ y, const unsigned char* __restrict__ ys, int n,
                      int L, float2* __restrict__ o, unsigned char* __restrict__ u) {
    const int q = blockIdx.y;
    const float inv = 1.0f / (float)n;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        float re = 0.0f, im = 0.0f;
        int votes = 0;
        for (int j = 0; j < n; ++j) {
            const float2 v = cd_pop_stack(x, y, q, n, j, L)[i];
            re += v.x;
            im += v.y;
            const unsigned char m =
                j == 0 ? xs[(size_t)q * n * L + i] : ys[((size_t)q * (n - 1) + j - 1) * L + i];
            votes += m != 0;
        }
        o[(size_t)q * L + i] = make_float2(re * inv, im * inv);
        u[(size_t)q * L + i] = 2 * votes >= n ? 1 : 0;
    }
}

// Gram matrix partials of each pattern's aligned stack: entry e = (j, k), j <= k, of the
// upper triangle (row-major, E = n (n + 1) / 2 per pattern), sum conj(x_j) x_k;
// pg[2 ((q E + e) bpi + bx) + {0, 1}]. Grid (bpi, patterns * E).
CD_KERNEL cd_pop_gram(const float2* __restrict__ x, const float2* __restrict__ y, int n, int L,
                      float* __restrict__ pg) {
    const int E = n * (n + 1) / 2;
    const int q = blockIdx.y / E, e = blockIdx.y - q * E;
    int j = 0, r = e;
    while (r >= n - j) {
        r -= n - j;
        ++j;
    }
    const int k = j + r;
    const float2* a = cd_pop_stack(x, y, q, n, j, L);
    const float2* b = cd_pop_stack(x, y, q, n, k, L);
    float re = 0.0f, im = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 u = a[i], v = b[i];
        re += u.x * v.x + u.y * v.y;
        im += u.x * v.y - u.y * v.x;
    }
    re = cd_block_sum(re);
    im = cd_block_sum(im);
    if (threadIdx.x == 0) {
        const size_t s = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
        pg[2 * s] = re;
        pg[2 * s + 1] = im;
    }
}

// One thread per (pattern, entry): the Gram matrices in double, full and Hermitian,
// G[2 (q n n + j n + k) + {0, 1}].
CD_KERNEL cd_pop_gram_finish(const float* __restrict__ pg, int bpi, int patterns, int n,
                             double* __restrict__ g) {
    const int E = n * (n + 1) / 2;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= patterns * E) return;
    const int q = t / E, e = t - q * E;
    int j = 0, r = e;
    while (r >= n - j) {
        r -= n - j;
        ++j;
    }
    const int k = j + r;
    double re = 0.0, im = 0.0;
    for (int b = 0; b < bpi; ++b) {
        re += (double)pg[2 * ((size_t)t * bpi + b)];
        im += (double)pg[2 * ((size_t)t * bpi + b) + 1];
    }
    double* gq = g + 2 * (size_t)q * n * n;
    gq[2 * (j * n + k)] = re;
    gq[2 * (j * n + k) + 1] = im;
    gq[2 * (k * n + j)] = re;
    gq[2 * (k * n + j) + 1] = -im;
}

// Modes: Mo[q m + i] = sum_j v[(q m + i) n + j] x_j over pattern q's aligned stack (v holds
// the eigenvectors already scaled by 1 / sqrt(n)). Grid (bpi, patterns * m).
CD_KERNEL cd_pop_modes(const float2* __restrict__ x, const float2* __restrict__ y,
                       const float2* __restrict__ v, int n, int m, int L, float2* __restrict__ mo) {
    const int qi = blockIdx.y, q = qi / m;
    const float2* vi = v + (size_t)qi * n;
    float2* out = mo + (size_t)qi * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        float re = 0.0f, im = 0.0f;
        for (int j = 0; j < n; ++j) {
            const float2 s = cd_pop_stack(x, y, q, n, j, L)[i];
            const float2 c = vi[j];
            re += s.x * c.x - s.y * c.y;
            im += s.x * c.y + s.y * c.x;
        }
        out[i] = make_float2(re, im);
    }
}

// Multiply image q by fac[q] (the mode's phase fix from cd_pop_argmax). Grid (bpi, images).
CD_KERNEL cd_pop_rotate(float2* __restrict__ mo, const float2* __restrict__ fac, int L) {
    const int q = blockIdx.y;
    const float2 f = fac[q];
    float2* o = mo + (size_t)q * L;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const float2 v = o[i];
        o[i] = make_float2(v.x * f.x - v.y * f.y, v.x * f.y + v.y * f.x);
    }
}

// ---- Breeding inside a run (issue 19): the device-resident segmented runner --------------
// (src/backend/gpu/segmented.rs). The run's state (iterates g, supports s, items x L) stays
// on the device across the checkpoints of --population / --restart / --cull / the
// missing-centre switch; these two kernels move images inside it and measure it.

// Image copies by index lists: for j in 0..m, with si = src_idx ? src_idx[j] : j and
// di = dst_idx ? dst_idx[j] : j,
//   dst[di] = (mask && src_s[si] == 0) ? 0 : src[si]   (skipped when dst or src is null),
//   dst_s[di] = src_s[si].
// Children into the state (mask 1: the child inside its support), restarted items' uploaded
// objects (mask 0), the compaction of the item axis after --cull (src_idx: the survivors), a
// copy of the parents' supports (dst null). Grid (bpi, m). Bytes: 18 P read + 9 P written.
CD_KERNEL cd_pop_scatter(const float2* __restrict__ src, const unsigned char* __restrict__ src_s,
                         const int* __restrict__ src_idx, const int* __restrict__ dst_idx, int L,
                         int mask, float2* __restrict__ dst, unsigned char* __restrict__ dst_s) {
    const int j = blockIdx.y;
    const size_t si = (size_t)(src_idx != nullptr ? src_idx[j] : j) * L;
    const size_t di = (size_t)(dst_idx != nullptr ? dst_idx[j] : j) * L;
    const bool copy = dst != nullptr && src != nullptr;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < L; i += gridDim.x * blockDim.x) {
        const unsigned char m = src_s[si + i];
        if (copy) dst[di + i] = (mask && m == 0) ? make_float2(0.0f, 0.0f) : src[si + i];
        dst_s[di + i] = m;
    }
}

// The support fraction of each item, one block per item (grid (1, items)): frac[item] =
// (pixels with s != 0) / L, the count exact (float sums of at most L < 2^24 ones), the
// quotient in double as on the host. Bytes: P read.
CD_KERNEL cd_support_fraction(const unsigned char* __restrict__ s, int L, float* __restrict__ frac) {
    const int item = blockIdx.y;
    const unsigned char* si = s + (size_t)item * L;
    float c = 0.0f;
    for (int i = threadIdx.x; i < L; i += blockDim.x) c += si[i] != 0 ? 1.0f : 0.0f;
    c = cd_block_sum(c);
    if (threadIdx.x == 0) frac[item] = (float)((double)c / (double)L);
}
