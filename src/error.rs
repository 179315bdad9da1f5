//! Typed errors of the cdiphase library. The CLI wraps them with `anyhow` context.

use std::path::PathBuf;

/// Every error the library returns. Messages name the file, the entry and the shape
/// involved, so that a user can act on them without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operating-system level I/O failure on a named file. The OS error is in the message
    /// and deliberately not a `source`: a chain printer (`anyhow`'s `{:#}`) would print it
    /// twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// The file exists but is not a readable HDF5/CXI/NPY file, or the HDF5 layer failed.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A dataset (entry) the operation needs is not in the file.
    #[error("{path}: no dataset '{entry}' ({hint})")]
    MissingEntry {
        path: PathBuf,
        entry: String,
        hint: String,
    },
    /// An array has the wrong shape.
    #[error("{what}: expected shape {expected}, found {found:?}")]
    Shape {
        what: String,
        expected: String,
        found: Vec<usize>,
    },
    /// Values that cannot be used: NaN, infinities, negative intensities, empty supports.
    #[error("{what}: {msg}")]
    InvalidData { what: String, msg: String },
    /// The algorithm schedule string does not parse.
    #[error("schedule '{input}': {msg} at position {pos}\n  {input}\n  {caret}")]
    Schedule {
        input: String,
        pos: usize,
        msg: String,
        caret: String,
    },
    /// What an input or an option asks for (memory, disk space) is more than the machine
    /// has: refused before allocating or writing; the message holds the estimate.
    #[error("{0}")]
    Limit(String),
    /// An option or parameter value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A backend that is not available in this build or on this machine.
    #[error("device '{device}' is not available: {reason}")]
    DeviceUnavailable { device: String, reason: String },
    /// A device (CUDA or the emulator) failed while running: a launch, copy or FFT error.
    #[error("device '{device}' failed: {msg}")]
    Device { device: String, msg: String },
    /// The run was cancelled through its [`crate::cancel::Cancel`] flag (Ctrl-C in Python).
    #[error("cancelled")]
    Cancelled,
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Build an [`Error::Io`] from a path and an `std::io::Error`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }

    /// Build an [`Error::Format`] from a path and any displayable message.
    pub fn format(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    /// Build an [`Error::InvalidData`].
    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidData {
            what: what.into(),
            msg: msg.into(),
        }
    }
}
