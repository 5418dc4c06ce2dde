//! Whole trainings on the device ([`super::Backend::fit_device`]): what the detector hands a
//! backend and what it gets back.

use super::{BackendError, MAX_FEATURES};

/// The message of a host whose ridge normal equations are not positive definite (both paths).
pub const NOT_POSITIVE_DEFINITE: &str = "normal equations not positive definite";

/// Rows from the end of the training series the stream's per-metric averages are rebuilt
/// from: an older row's weight is (1 − 2/13)²⁵⁶ ≈ 1e-19 at the detector's span, below f32
/// resolution.
pub const EMA_TAIL: usize = 256;

/// One host's input to [`super::Backend::fit_device`]: its raw training rows and the detector
/// settings the device needs.
#[derive(Clone, Copy, Debug)]
pub struct FitJob<'a> {
    /// Raw rows, `n x d`, row-major, oldest first.
    pub rows: &'a [f32],
    pub n: usize,
    pub d: usize,
    pub lags: usize,
    /// Floor on a metric's standard deviation (raw units).
    pub std_floor: f32,
    /// Ridge added to the diagonal of `XᵀX` (not to the intercept's, which gets `1e-9 · n`).
    pub ridge: f64,
    /// Floor on a metric's residual scale and the clip of a scaled residual.
    pub resid_floor: f32,
    pub clip: f32,
    /// Weight of a new row in the moving average, `2 / (span + 1)`.
    pub alpha: f32,
    /// Quantile where the peaks-over-threshold fit starts, in `[0, 1]`.
    pub quantile: f64,
    /// The drift guard's memory, `(stride, cap)`: every `stride`-th score enters, the last
    /// `cap` are kept. `None` when the guard is off.
    pub recent: Option<(usize, usize)>,
}

impl FitJob<'_> {
    /// Design-row width `F = lags · d + 1`.
    pub fn features(&self) -> usize {
        self.lags * self.d + 1
    }

    /// Shape checks every backend applies before touching the data.
    pub fn check(&self) -> Result<(), BackendError> {
        if self.d == 0 || self.lags == 0 || self.n <= self.lags + 1 {
            return Err(BackendError::Invalid(format!(
                "need at least one metric, one lag and more than lags + 1 rows (d = {}, lags = {}, n = {})",
                self.d, self.lags, self.n
            )));
        }
        if self.rows.len() < self.n.saturating_mul(self.d) {
            return Err(BackendError::Invalid(format!(
                "rows have {} values, {} rows of {} metrics need {}",
                self.rows.len(),
                self.n,
                self.d,
                self.n * self.d
            )));
        }
        if self
            .recent
            .is_some_and(|(stride, cap)| stride == 0 || cap == 0)
        {
            return Err(BackendError::Invalid(
                "drift-guard stride and cap must be positive".into(),
            ));
        }
        let features = self.lags.saturating_mul(self.d).saturating_add(1);
        if features > MAX_FEATURES {
            return Err(BackendError::TooManyFeatures {
                features,
                max: MAX_FEATURES,
            });
        }
        Ok(())
    }

    /// Rank of the first upper-tail value when `finite` scores are finite:
    /// `⌊q · (finite − 1)⌋`, as `PotThreshold::fit` computes its quantile.
    pub fn tail_start(&self, finite: usize) -> usize {
        if finite == 0 {
            return 0;
        }
        (self.quantile.clamp(0.0, 1.0) * (finite - 1) as f64).floor() as usize
    }

    /// Scores the drift guard keeps after the training rows.
    pub fn ring_len(&self) -> usize {
        self.recent
            .map_or(0, |(stride, cap)| self.n.div_ceil(stride).min(cap))
    }
}

/// A model trained on the device, in the detector's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOutput {
    /// Standardization: per-metric mean and `1 / max(std, floor)`.
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    /// Joint predictor: `(lags · d) x d` weights and `d` intercepts.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// `1 / max(rms residual, floor)` per metric.
    pub inv_scale: Vec<f32>,
    /// The stream after the training rows: per-metric moving averages (from the last
    /// [`EMA_TAIL`] rows) and the last `lags` standardized rows.
    pub ema: Vec<f32>,
    pub history: Vec<f32>,
    /// The calibration scores the drift guard keeps, oldest first (as computed, not yet
    /// sanitized).
    pub recent: Vec<f32>,
    /// Finite calibration scores, and the sorted finite scores from rank
    /// [`FitJob::tail_start`] up: all `PotThreshold::fit` reads of them.
    pub finite: usize,
    pub upper: Vec<f32>,
}
