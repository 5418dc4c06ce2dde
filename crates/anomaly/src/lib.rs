//! Rackwatch anomaly detection.
//!
//! A [`Detector`] is trained on normal history (rows = time steps, cols = metrics) by
//! minimizing the MSE of a ridge-regularized linear predictor over a sliding window of
//! standardized metrics (or, opt-in, a variational autoencoder over the same windows:
//! [`vae`], [`Model`]); it scores new rows causally, alerts above a label-free
//! peaks-over-threshold level ([`PotThreshold`]) and names the metrics behind a score
//! ([`Detector::score_explained`]). [`stream`] scores univariate series (NAB protocol) with a
//! VAE window model, a level-shift signal and adaptive-resonance events. The heavy math runs on a [`Backend`]: [`CpuBackend`] by
//! default, `GpuBackend` (wgpu + WGSL) with the `gpu` feature.
//!
//! [`eval`](mod@eval) scores benchmark directories (SMD / ASD / NAB layout) into score files for
//! `shared/eval/anomaly/score.py`.

pub mod art;
pub mod backend;
pub mod cad;
pub mod data;
pub mod detector;
pub mod eval;
mod matrix;
pub mod pot;
pub mod stream;
pub mod vae;

#[cfg(feature = "gpu")]
pub use backend::GpuBackend;
pub use backend::{Backend, CpuBackend};
pub use detector::{Contribution, Detector, DetectorConfig, Model, ScoredRow};
pub use eval::{eval, eval_with, EvalOptions, EvalSummary};
pub use matrix::Matrix;
pub use pot::PotThreshold;
pub use stream::StreamConfig;
