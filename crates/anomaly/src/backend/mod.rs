//! The tensor backend: the two pieces of heavy math the detector needs.
//!
//! * training: the cross products `XᵀX` and `XᵀY` of the lag-window design matrix (the normal
//!   equations of the MSE objective), and
//! * scoring: the window prediction and the (clipped, scaled) residual of every metric.
//!
//! Both take the standardized series with `lags` history rows prepended (`zpad`, row-major,
//! `(n + lags) x d`); the design row of step `t` is `zpad[t .. t + lags]` flattened (oldest
//! first) plus a constant 1, the target is `zpad[t + lags]`. The same detector code drives
//! [`CpuBackend`] (default) and, with the `gpu` feature, `GpuBackend` (wgpu + WGSL compute
//! shaders); [`SelectedBackend`] picks one from a [`BackendChoice`].
//!
//! Every kernel exists per host (`cross_products`, `residual_energy`) and batched across
//! hosts (`cross_products_batch`, `abs_residuals_batch`): the batched forms are what the
//! fleet job calls, so that a GPU does one upload, one dispatch per step and one download for
//! all hosts, and one host's bad or oversized data fails that host alone. Two batched calls
//! take whole steps of the detector: [`Backend::fit_device`] (a whole training from raw rows,
//! on a GPU) and [`Backend::score_stream`] (a scoring run, with models kept resident on a
//! GPU by [`ModelKey`]).

mod cpu;
mod error;
mod fit;
#[cfg(feature = "gpu")]
mod gpu;
pub(crate) mod parallel;
mod select;
mod stream;

pub use cpu::CpuBackend;
pub use error::{BackendError, MAX_FEATURES};
pub use fit::{FitJob, FitOutput, EMA_TAIL, NOT_POSITIVE_DEFINITE};
#[cfg(feature = "gpu")]
pub use gpu::{GpuBackend, GpuOptions, GpuStats};
pub use select::{
    score_work, BackendChoice, BackendInfo, BackendKind, SelectOptions, SelectedBackend,
    MIN_GPU_SCORE_WORK_PER_THREAD,
};
pub use stream::{ModelKey, StreamJob, StreamModel, Streamed};

// `train_kernels_default` is defined below and public for other backends' overrides.

/// Linear lag-window predictor weights, as the backends consume them.
#[derive(Clone, Copy, Debug)]
pub struct LagWeights<'a> {
    /// `(lags * d) x d`, row-major: weight of input feature `f` on output metric `j` at `f * d + j`.
    pub weights: &'a [f32],
    /// `d` intercepts.
    pub bias: &'a [f32],
}

/// One host's padded standardized series: `zpad` holds `(n + lags) x d` values, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    pub zpad: &'a [f32],
    /// Design rows (time steps predicted).
    pub n: usize,
    /// Metrics.
    pub d: usize,
    /// History rows per prediction.
    pub lags: usize,
}

impl Series<'_> {
    /// Design-row width `F = lags · d + 1` (the last feature is the constant 1).
    pub fn features(&self) -> usize {
        self.lags * self.d + 1
    }

    /// Values the kernels read: `(n + lags) · d`.
    pub fn len(&self) -> usize {
        (self.n + self.lags) * self.d
    }

    /// Whether there is no design row.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Shape checks every backend applies before touching the data.
    pub fn check(&self) -> Result<(), BackendError> {
        if self.d == 0 || self.lags == 0 {
            return Err(BackendError::Invalid(format!(
                "need at least one metric and one lag (d = {}, lags = {})",
                self.d, self.lags
            )));
        }
        let need = self
            .n
            .checked_add(self.lags)
            .and_then(|r| r.checked_mul(self.d))
            .ok_or_else(|| BackendError::Invalid("series size overflows".into()))?;
        if self.zpad.len() < need {
            return Err(BackendError::Invalid(format!(
                "series has {} values, {} rows of {} metrics need {need}",
                self.zpad.len(),
                self.n + self.lags,
                self.d
            )));
        }
        Ok(())
    }

    /// [`Series::check`] plus the training limit on the design-row width.
    pub fn check_trainable(&self) -> Result<(), BackendError> {
        self.check()?;
        let features = self.lags.saturating_mul(self.d).saturating_add(1);
        if features > MAX_FEATURES {
            return Err(BackendError::TooManyFeatures {
                features,
                max: MAX_FEATURES,
            });
        }
        Ok(())
    }
}

/// The normal equations' cross products of one host, in `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossProducts {
    /// `XᵀX`, `F x F` row-major, symmetric.
    pub xtx: Vec<f64>,
    /// `XᵀY`, `F x d` row-major.
    pub xty: Vec<f64>,
}

/// One host's scoring input: its series and its model's joint weights.
#[derive(Clone, Copy, Debug)]
pub struct ResidualJob<'a> {
    pub series: Series<'a>,
    pub weights: LagWeights<'a>,
}

impl ResidualJob<'_> {
    /// Shape checks of the series and the weights.
    pub fn check(&self) -> Result<(), BackendError> {
        self.series.check()?;
        let (d, lags) = (self.series.d, self.series.lags);
        if self.weights.weights.len() != lags * d * d || self.weights.bias.len() != d {
            return Err(BackendError::Invalid(format!(
                "weights have {} values and {} intercepts, {lags} lags of {d} metrics need {} and {d}",
                self.weights.weights.len(),
                self.weights.bias.len(),
                lags * d * d
            )));
        }
        Ok(())
    }
}

/// Turns host `i`'s cross products into its joint predictor `(weights, bias)`.
pub type SolveFn<'s> =
    dyn Fn(usize, CrossProducts) -> anyhow::Result<(Vec<f32>, Vec<f32>)> + Sync + 's;

/// Energies `min(a · inv_scale[j], clip)²` of absolute residuals `a` (`n x d`): the same
/// operations, in the same order, as the CPU energy kernel, so CPU results are bit-identical
/// whichever way they are computed.
pub fn energy_from_abs(abs: &[f32], inv_scale: &[f32], clip: f32) -> Vec<f32> {
    let d = inv_scale.len().max(1);
    let mut out = vec![0.0f32; abs.len() / d * d];
    // Row by row into a preallocated buffer: the compiler vectorizes this (5× faster than
    // pushing element by element, which showed in a week of minutes per host).
    for (o, a) in out.chunks_exact_mut(d).zip(abs.chunks_exact(d)) {
        for ((o, a), s) in o.iter_mut().zip(a).zip(inv_scale) {
            let r = (a * s).min(clip);
            *o = r * r;
        }
    }
    out
}

/// Heavy numeric kernels of the detector. Implementations must agree to float tolerance.
pub trait Backend: Send + Sync {
    /// Human-readable backend/device name.
    fn name(&self) -> String;

    /// Which backend and device this is (for logs, /metrics and the admin page).
    fn info(&self) -> BackendInfo {
        BackendInfo::cpu(self.name())
    }

    /// Threads for the host-side work of batched calls (standardizing, solving, streaming).
    fn threads(&self) -> usize {
        1
    }

    /// Returns `(XᵀX, XᵀY)` in `f64`: `XᵀX` is `F x F`, `XᵀY` is `F x d`, with
    /// `F = lags * d + 1` (last feature = constant 1) and `n` design rows.
    fn cross_products(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)>;

    /// Per-row, per-metric energy `min(|z_t - ŷ_t| * inv_scale, clip)²`, `n x d` row-major.
    #[allow(clippy::too_many_arguments)]
    fn residual_energy(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
        w: LagWeights<'_>,
        inv_scale: &[f32],
        clip: f32,
    ) -> anyhow::Result<Vec<f32>>;

    /// Cross products of many hosts; one result per host, in order. The default loops over
    /// [`Backend::cross_products`].
    fn cross_products_batch(
        &self,
        series: &[Series<'_>],
    ) -> Vec<Result<CrossProducts, BackendError>> {
        series
            .iter()
            .map(|s| {
                s.check_trainable()?;
                self.cross_products(s.zpad, s.n, s.d, s.lags)
                    .map(|(xtx, xty)| CrossProducts { xtx, xty })
                    .map_err(|e| BackendError::Device(format!("{e:#}")))
            })
            .collect()
    }

    /// The training kernels of many hosts on the host-side path: their cross products,
    /// `solve` (host side, called from several threads) for each host's weights, then the
    /// absolute training residuals (`n x d`) the detector calibrates on. One result per host,
    /// in order; a backend failure is a [`BackendError`] inside the error.
    fn train_kernels(
        &self,
        series: &[Series<'_>],
        solve: &SolveFn<'_>,
    ) -> Vec<anyhow::Result<Vec<f32>>> {
        train_kernels_default(self, series, solve)
    }

    /// Whole trainings of many hosts on the device, from their raw rows: standardizing, cross
    /// products, the ridge solve, residual scales, calibration scores and their upper tail
    /// (see [`FitJob`]). `None` when the backend does not train on its own (the CPU): the
    /// detector then runs [`Backend::train_kernels`] and its host-side steps. One result per
    /// host, in order; a host the device cannot take gets a capacity [`BackendError`] and
    /// the caller trains it the other way.
    fn fit_device(&self, jobs: &[FitJob<'_>]) -> Option<Vec<anyhow::Result<FitOutput>>> {
        let _ = jobs;
        None
    }

    /// The scoring stream of many hosts: residuals of the new rows, per-metric energies and
    /// moving averages, each row's score and top contributing metrics, and the averages the
    /// stream continues from. One result per host, in order. The default computes the
    /// residuals with [`Backend::abs_residuals_batch`] and the rest on host threads; a GPU
    /// keeps the models resident (by [`ModelKey`]) and runs everything in one submit.
    fn score_stream(
        &self,
        jobs: &[StreamJob<'_>],
        top_k: usize,
    ) -> Vec<Result<Streamed, BackendError>> {
        stream::score_stream_default(self, jobs, top_k)
    }

    /// Absolute residuals `|z_t - ŷ_t|` (`n x d` per host, f32) of many hosts; one result
    /// per host, in order. Scaled energies follow with [`energy_from_abs`]. The default
    /// takes the square root of [`Backend::residual_energy`] with unit scales.
    fn abs_residuals_batch(&self, jobs: &[ResidualJob<'_>]) -> Vec<Result<Vec<f32>, BackendError>> {
        jobs.iter()
            .map(|j| {
                j.check()?;
                let s = j.series;
                let ones = vec![1.0f32; s.d];
                self.residual_energy(s.zpad, s.n, s.d, s.lags, j.weights, &ones, f32::INFINITY)
                    .map(|e| e.into_iter().map(f32::sqrt).collect())
                    .map_err(|e| BackendError::Device(format!("{e:#}")))
            })
            .collect()
    }
}

/// [`Backend::train_kernels`] from the two batched kernels.
pub fn train_kernels_default<B: Backend + ?Sized>(
    backend: &B,
    series: &[Series<'_>],
    solve: &SolveFn<'_>,
) -> Vec<anyhow::Result<Vec<f32>>> {
    let cross = backend.cross_products_batch(series);
    let solved: Vec<anyhow::Result<(Vec<f32>, Vec<f32>)>> =
        parallel::par_map(backend.threads(), cross, |i, c| solve(i, c?));
    let ok: Vec<usize> = (0..series.len()).filter(|&i| solved[i].is_ok()).collect();
    let rjobs: Vec<ResidualJob<'_>> = ok
        .iter()
        .map(|&i| {
            let (w, b) = solved[i].as_ref().expect("filtered");
            ResidualJob {
                series: series[i],
                weights: LagWeights {
                    weights: w,
                    bias: b,
                },
            }
        })
        .collect();
    let mut resid = backend.abs_residuals_batch(&rjobs).into_iter();
    let mut out: Vec<anyhow::Result<Vec<f32>>> = Vec::with_capacity(series.len());
    for s in solved {
        out.push(match s {
            Err(e) => Err(e),
            Ok(_) => resid
                .next()
                .expect("one result per solved host")
                .map_err(anyhow::Error::from),
        });
    }
    out
}
