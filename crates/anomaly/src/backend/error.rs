//! The one error type of the tensor backends and of backend selection.

use std::fmt;

/// Largest design-row width `F = lags · d + 1` any backend trains: the normal equations are
/// an `F × F` system solved by Cholesky on the CPU (`F³/3` flops: about 3 GFLOP, a second or
/// two, at this size; the product's hosts have `F = 49`).
pub const MAX_FEATURES: usize = 2048;

/// Why a backend could not be opened or could not run one host's data.
///
/// Batched calls return one `Result` per host, so one bad host never fails the others.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendError {
    /// A GPU backend was demanded (`BackendChoice::Gpu`) but no usable adapter was found.
    NoAdapter {
        /// What was looked for and what was found instead.
        reason: String,
    },
    /// A GPU backend was demanded from a build without the `gpu` feature.
    GpuNotBuilt,
    /// One host's data needs a buffer larger than the backend can bind or allocate.
    TooLarge {
        /// Which buffer (e.g. "lag-window series", "partial cross products").
        what: &'static str,
        /// Bytes this host alone needs in it.
        bytes: u64,
        /// The most the backend allows.
        limit: u64,
    },
    /// The design rows are wider than [`MAX_FEATURES`].
    TooManyFeatures {
        /// `lags · d + 1` of this host.
        features: usize,
        /// [`MAX_FEATURES`].
        max: usize,
    },
    /// Shapes that do not fit together (a caller bug or corrupt model).
    Invalid(String),
    /// The device failed (lost, out of memory, a driver error).
    Device(String),
}

impl BackendError {
    /// Whether another backend (the CPU) may still handle the same input.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            BackendError::TooLarge { .. } | BackendError::Device(_)
        )
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::NoAdapter { reason } => write!(f, "no usable GPU adapter: {reason}"),
            BackendError::GpuNotBuilt => write!(
                f,
                "this build has no GPU support (build with the `gpu` feature)"
            ),
            BackendError::TooLarge { what, bytes, limit } => write!(
                f,
                "host data too large for the backend: its {what} need {:.1} MiB, the limit is {:.1} MiB",
                mib(*bytes),
                mib(*limit)
            ),
            BackendError::TooManyFeatures { features, max } => write!(
                f,
                "host has {features} design features (lags × metrics + 1), at most {max} can be trained"
            ),
            BackendError::Invalid(m) => write!(f, "invalid backend input: {m}"),
            BackendError::Device(m) => write!(f, "GPU device error: {m}"),
        }
    }
}

impl std::error::Error for BackendError {}
