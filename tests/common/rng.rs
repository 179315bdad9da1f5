//! Fresh random inputs per run, repeatable on demand: every generator's seed is derived
//! from one base seed per test process and the generator's tag. The base is
//! `CDIPHASE_TEST_SEED` when set, else the clock; it is printed, so a failing run can be
//! repeated with `CDIPHASE_TEST_SEED=<base> cargo test --release --test NAME`.

use std::sync::OnceLock;

/// The base seed of this test process (`CDIPHASE_TEST_SEED`, else the clock's nanoseconds).
pub fn base_seed() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    *BASE.get_or_init(|| {
        let base = std::env::var("CDIPHASE_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("test seed {base} (set CDIPHASE_TEST_SEED={base} to repeat)");
        base
    })
}

/// The seed of the generator named `tag`: SplitMix64 of the base seed mixed with the tag's
/// FNV-1a hash, so generators with different tags draw different streams.
pub fn seed(tag: &str) -> u64 {
    let base = base_seed();
    let mut hsh = 0xcbf2_9ce4_8422_2325u64;
    for b in tag.bytes() {
        hsh = (hsh ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = base ^ hsh;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let s = z ^ (z >> 31);
    eprintln!("{tag}: random seed {s} (CDIPHASE_TEST_SEED={base})");
    s
}

/// A 64-bit LCG: plenty for test inputs, and the same stream on every platform.
pub struct Lcg(pub u64);

impl Lcg {
    /// A generator seeded by [`seed`]`(tag)`.
    pub fn new(tag: &str) -> Lcg {
        Lcg(seed(tag) | 1)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` values uniform in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() * 2.0 - 1.0) as f32).collect()
    }
}
