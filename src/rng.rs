//! The per-item seeds of every random draw in the crate (phasing starts, simulated
//! orientations, noise, synthetic particles): SplitMix64 of the user seed mixed with the
//! item's indices, feeding xoshiro256++. Results therefore depend on (seed, item) only,
//! never on the thread count or the order in which items run.

/// The 64-bit seed of item (p, s): SplitMix64 of the user seed mixed with the item index.
pub fn item_seed(seed: u64, p: usize, s: usize) -> u64 {
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(1 + p as u64))
        .wrapping_add(0xD1B5_4A32_D192_ED03u64.wrapping_mul(1 + s as u64));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed under which pattern `p` of a window that starts at pattern `first` draws what
/// pattern `first + p` of the whole file draws: `item_seed(offset_seed(seed, first), p, s)
/// == item_seed(seed, first + p, s)` (the pattern index enters [`item_seed`] only through
/// the wrapping term `C * (1 + p)`). Block-wise runs use it so that a pattern's random start
/// does not depend on the block size.
pub fn offset_seed(seed: u64, first: usize) -> u64 {
    seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(first as u64))
}

/// Uniform in [0, 1) from 24 random bits.
pub fn unit(x: u64) -> f32 {
    (x >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_seed_shifts_the_pattern_index() {
        for seed in [0u64, 1, 42, u64::MAX, 0x1234_5678_9abc_def0] {
            for first in [0usize, 1, 7, 255, 100_000, 1 << 40] {
                for p in [0usize, 1, 5, 300] {
                    for s in [0usize, 1, 9] {
                        assert_eq!(
                            item_seed(offset_seed(seed, first), p, s),
                            item_seed(seed, first.wrapping_add(p), s),
                            "seed {seed} first {first} p {p} s {s}"
                        );
                    }
                }
            }
        }
    }
}
