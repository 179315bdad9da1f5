//! cdiphase: batch coherent diffraction imaging on CPU (and, later, GPU).
//!
//! Data flow: simulate -> predict -> support -> phase -> evaluate. Every stage is a library
//! function first and a CLI verb on top. See `README.md` and `NOTES.md`.

pub mod array;
pub mod backend;
pub mod bench;
pub mod error;
pub mod io;
pub mod phasing;
pub mod simulate;

pub use error::{Error, Result};
