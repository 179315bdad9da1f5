//! What the integration tests share (each test crate includes this module with
//! `mod common;`): seeded random inputs that honour `CDIPHASE_TEST_SEED` ([`rng`]), the CLI
//! harness ([`cli`]), a shared pattern file and the comparison of outputs ([`files`]), phasing
//! problems built by hand ([`phasing`]), and
//! float64 references ([`refs`]).

// every test crate uses a different part of this module
#![allow(dead_code)]

pub mod cli;
pub mod files;
pub mod phasing;
pub mod refs;
pub mod rng;

#[allow(unused_imports)]
pub use rng::{seed, Lcg};
