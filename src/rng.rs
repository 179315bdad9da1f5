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

/// Uniform in [0, 1) from 24 random bits.
pub fn unit(x: u64) -> f32 {
    (x >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}
