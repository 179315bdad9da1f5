//! cdiphase: batch coherent diffraction imaging on CPU (and, later, GPU).
//!
//! Data flow: simulate -> predict -> support -> phase -> evaluate. Every stage is a library
//! function first and a CLI verb on top. See `README.md` and `NOTES.md`.
//!
//! Phasing a batch in memory:
//!
//! ```
//! use cdiphase::backend::{select, Device};
//! use cdiphase::phasing::{phase, PhaseConfig, SupportSpec};
//! use cdiphase::phasing::program::{Constraint, ShrinkwrapConfig};
//!
//! // two noise-free patterns of random compact particles, 32x32, with their truth
//! let (patterns, _truth) = cdiphase::simulate::synthetic_particles(2, 32, 32, 2, 7);
//! let cfg = PhaseConfig {
//!     schedule: "100*(20*HIO + 5*ER) + 50*ER".into(),
//!     shrinkwrap: Some(ShrinkwrapConfig::parse("sigma=1,threshold=0.1,every=25").unwrap()),
//!     constraint: Constraint::Positive,
//!     support: SupportSpec::Autocorrelation { threshold: 0.04 },
//!     starts: 2,
//!     ..PhaseConfig::default()
//! };
//! let backend = select(Device::Cpu, Some(1)).unwrap();
//! let rec = phase(backend.as_ref(), &patterns, &cfg, &|_| {}).unwrap();
//! assert_eq!(rec.objects.shape(), [2, 32, 32]);
//! assert!(rec.best_final_errors().iter().all(|e| e.is_finite()));
//! ```

pub mod array;
pub mod backend;
pub mod bench;
pub mod cancel;
pub mod error;
pub mod eval;
pub mod fft;
pub mod io;
pub mod limits;
pub mod nn;
pub mod phasing;
pub mod rng;
pub mod run;
pub mod selftest;
pub mod simulate;
pub mod support;

pub use error::{Error, Result};
