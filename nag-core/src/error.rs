//! The crate's error type.

use alloc::string::String;

/// Errors from invalid arguments. Every public fallible function returns these instead of
/// panicking on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A named argument is outside its valid range.
    #[error("invalid {name} = {value}: {expected}")]
    OutOfRange {
        /// Argument name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What was expected.
        expected: &'static str,
    },
    /// An unknown name (schedule, sampler, ...).
    #[error("unknown {kind} '{name}': expected one of {expected}")]
    Unknown {
        /// What kind of name.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names.
        expected: &'static str,
    },
    /// Buffers or tensors of inconsistent sizes.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The equation has no solution in the schedule's range.
    #[error("no solution: {0}")]
    NoSolution(String),
}

/// Result with [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// Checks `value` is finite and inside `[lo, hi]`.
pub(crate) fn check_range(
    name: &'static str,
    value: f64,
    lo: f64,
    hi: f64,
    expected: &'static str,
) -> Result<f64> {
    if value.is_finite() && value >= lo && value <= hi {
        Ok(value)
    } else {
        Err(Error::OutOfRange {
            name,
            value,
            expected,
        })
    }
}
