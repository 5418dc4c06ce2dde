//! The tensor backend: the two pieces of heavy math the detector needs.
//!
//! * training: the cross products `XᵀX` and `XᵀY` of the lag-window design matrix (the normal
//!   equations of the MSE objective), and
//! * scoring: the window prediction and the clipped, scaled squared residual of every metric.
//!
//! Both take the standardized series with `lags` history rows prepended (`zpad`, row-major,
//! `(n + lags) x d`); the design row of step `t` is `zpad[t .. t + lags]` flattened (oldest
//! first) plus a constant 1, the target is `zpad[t + lags]`. The same detector code drives
//! [`CpuBackend`] (default) and, with the `gpu` feature, `GpuBackend` (wgpu + WGSL compute
//! shaders).

mod cpu;
#[cfg(feature = "gpu")]
mod gpu;

pub use cpu::CpuBackend;
#[cfg(feature = "gpu")]
pub use gpu::GpuBackend;

/// Linear lag-window predictor weights, as the backends consume them.
#[derive(Clone, Copy, Debug)]
pub struct LagWeights<'a> {
    /// `(lags * d) x d`, row-major: weight of input feature `f` on output metric `j` at `f * d + j`.
    pub weights: &'a [f32],
    /// `d` intercepts.
    pub bias: &'a [f32],
}

/// Heavy numeric kernels of the detector. Implementations must agree to float tolerance.
pub trait Backend: Send + Sync {
    /// Human-readable backend/device name.
    fn name(&self) -> String;

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
}
