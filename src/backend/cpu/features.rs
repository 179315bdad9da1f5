//! The instruction sets the CPU kernels may use, detected once per process.
//!
//! A [`CpuFeatures`] value is built by [`CpuFeatures::detect`] (at start-up, by
//! [`super::CpuBackend::new`] or [`super::nn::Network::new`]) and passed down to whatever
//! picks a kernel: the network compiler chooses each layer's kernel from it, so no kernel
//! checks the CPU per call or per tile. Its fields are private and it can only be built by
//! detection (or narrowed from a detected value), so a kernel chosen from it never runs on
//! a CPU without its instructions.

use std::sync::OnceLock;

/// What this CPU (and, for AMX, the operating system) lets the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    avx2_fma: bool,
    avx512f: bool,
    avx512bf16: bool,
    amx_bf16: bool,
}

impl CpuFeatures {
    /// The features of this machine: CPUID once per process (later calls return the same
    /// value). AMX also asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XTILEDATA)`), once.
    pub fn detect() -> CpuFeatures {
        static DETECTED: OnceLock<CpuFeatures> = OnceLock::new();
        *DETECTED.get_or_init(detect_now)
    }

    /// No SIMD kernels at all: the portable paths (for comparisons and tests).
    pub fn portable() -> CpuFeatures {
        CpuFeatures {
            avx2_fma: false,
            avx512f: false,
            avx512bf16: false,
            amx_bf16: false,
        }
    }

    /// AVX2 with FMA (the phasing engine's element-wise kernels).
    pub fn avx2_fma(&self) -> bool {
        self.avx2_fma
    }

    /// AVX-512F (the direct f32 network kernels, the AVX-512 builds of the GEMM copies,
    /// epilogues and Winograd transforms).
    pub fn avx512f(&self) -> bool {
        self.avx512f
    }

    /// AVX-512F with AVX512_BF16 (`vdpbf16ps`: the bf16 network kernels without AMX).
    pub fn avx512bf16(&self) -> bool {
        self.avx512f && self.avx512bf16
    }

    /// AMX-TILE and AMX-BF16, granted by the kernel (`tdpbf16ps`), with AVX-512F and
    /// AVX512_BF16 for the band conversion and the epilogue.
    pub fn amx(&self) -> bool {
        self.amx_bf16 && self.avx512bf16()
    }

    /// The names of the features present, for run headers (`x86_64 [avx2 fma avx512f]`).
    pub fn describe(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        {
            let mut f = Vec::new();
            for (name, on) in [
                ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
                ("avx", std::arch::is_x86_feature_detected!("avx")),
                ("avx2", std::arch::is_x86_feature_detected!("avx2")),
                ("fma", std::arch::is_x86_feature_detected!("fma")),
                ("avx512f", self.avx512f),
                ("avx512_bf16", self.avx512bf16()),
                ("amx-bf16", self.amx()),
            ] {
                if on {
                    f.push(name);
                }
            }
            format!("x86_64 [{}]", f.join(" "))
        }
        #[cfg(target_arch = "aarch64")]
        {
            "aarch64 [neon]".to_string()
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            std::env::consts::ARCH.to_string()
        }
    }
}

fn detect_now() -> CpuFeatures {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512f = std::arch::is_x86_feature_detected!("avx512f");
        let avx512bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
        CpuFeatures {
            avx2_fma: std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
            avx512f,
            avx512bf16,
            amx_bf16: avx512f && amx_granted(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuFeatures::portable()
    }
}

/// CPUID says AMX-TILE and AMX-BF16, and Linux grants this process the tile data state.
#[cfg(target_arch = "x86_64")]
fn amx_granted() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::arch::x86_64::__cpuid_count;
        let l7 = __cpuid_count(7, 0);
        let (tile, bf16) = (l7.edx >> 24 & 1 == 1, l7.edx >> 22 & 1 == 1);
        if !(tile && bf16) {
            return false;
        }
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18) only
        // asks the kernel to allow the AMX state in this process; rcx and r11 are clobbered
        // by `syscall`.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") 158i64 => ret,
                in("rdi") 0x1023i64,
                in("rsi") 18i64,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The measured throughput of this core's bf16 dot products (`vdpbf16ps`, 64 FLOP per
/// zmm instruction) against its f32 FMAs (`vfmadd231ps`, 32 FLOP), from register-only
/// loops: about 2 where both issue one zmm instruction per cycle (AMD Zen 4), about 1 where
/// `vdpbf16ps` has half the FMA ports (Intel Sapphire Rapids). `None` without AVX512_BF16.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DotPeak {
    /// GFLOP/s of the f32 FMA loop on one core.
    pub f32_gflops: f64,
    /// GFLOP/s-equivalent of the bf16 dot-product loop (a pair product and its sum: 2 FLOP
    /// per lane and pair).
    pub bf16_gflops: f64,
}

impl DotPeak {
    /// How much faster the bf16 dot products are than the f32 FMAs, per FLOP.
    pub fn ratio(&self) -> f64 {
        self.bf16_gflops / self.f32_gflops
    }

    /// Measured once per process (about 2 ms: five alternated rounds of each loop, the best
    /// of each, so that a neighbour's load hits both alike); `None` without AVX512_BF16.
    pub fn measure(isa: &CpuFeatures) -> Option<DotPeak> {
        static PEAK: OnceLock<Option<DotPeak>> = OnceLock::new();
        if !isa.avx512bf16() {
            return None;
        }
        *PEAK.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: CpuFeatures says AVX-512F and AVX512_BF16 (checked above; a
                // CpuFeatures value only comes from detection or narrowing).
                unsafe { peak::measure() }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                None
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use super::DotPeak;
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Independent accumulator chains: more than latency x throughput of either instruction
    /// on the CPUs in view (FMA 4 x 2, `vdpbf16ps` 6 x 1).
    const CHAINS: usize = 12;
    const TRIPS: usize = 4096;

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_loop(trips: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let a = _mm512_set1_ps(std::hint::black_box(0.999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-3));
        for _ in 0..trips {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dot_loop(trips: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let a: __m512bh = _mm512_cvtne2ps_pbh(
            _mm512_set1_ps(std::hint::black_box(1e-3)),
            _mm512_set1_ps(std::hint::black_box(1e-3)),
        );
        for _ in 0..trips {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, a);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16.
    pub(super) unsafe fn measure() -> Option<DotPeak> {
        let (mut tf, mut tb) = (f64::MAX, f64::MAX);
        // SAFETY: the caller's contract (# Safety) covers both loops' instructions.
        unsafe {
            std::hint::black_box(fma_loop(TRIPS));
            std::hint::black_box(dot_loop(TRIPS));
            for _ in 0..5 {
                let t = Instant::now();
                std::hint::black_box(fma_loop(TRIPS));
                tf = tf.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                std::hint::black_box(dot_loop(TRIPS));
                tb = tb.min(t.elapsed().as_secs_f64());
            }
        }
        let n = (CHAINS * TRIPS) as f64;
        (tf > 0.0 && tb > 0.0).then(|| DotPeak {
            f32_gflops: n * 32.0 / tf / 1e9,
            bf16_gflops: n * 64.0 / tb / 1e9,
        })
    }
}
