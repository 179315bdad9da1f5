//! The model bundled in the binary: the default of `predict`, `support --method nn`,
//! `demo` and the Python package's `Model.load()` when no model file is named. Its model
//! card (`models/<name>/README.md`) states the geometry it was trained for.

use std::path::Path;

use super::{store, Model};
use crate::error::Result;

/// The bundled model's folder name under `models/`.
pub const NAME: &str = "spinn_paper";

static BYTES: &[u8] = include_bytes!("../../models/spinn_paper/model.safetensors");

/// What the bundled model was trained for: the data a user should give it.
pub const TRAINED_FOR: &str = "128x128 noise-free patterns in the paper's geometry \
     (`simulate --preset paper`: 0.2333 nm pixels, 3.5 Å resolution), `max` preprocessing";

/// The bundled model's safetensors bytes (as `cdiphase convert` writes them).
pub fn bytes() -> &'static [u8] {
    BYTES
}

/// A pseudo path naming the bundled model in messages.
pub fn label() -> String {
    format!("<bundled model {NAME}>")
}

/// Parse the bundled model.
pub fn load() -> Result<Model> {
    store::from_bytes(Path::new(&label()), BYTES)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_model_parses() {
        let m = super::load().unwrap();
        assert_eq!(m.spec.input[0], m.spec.input[1]);
    }
}
