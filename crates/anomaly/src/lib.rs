//! Rackwatch anomaly detection.
//!
//! A [`Detector`] is trained on normal history (rows = time steps, cols = metrics) by
//! minimizing the MSE of a ridge-regularized linear predictor over a sliding window of
//! standardized metrics (or, opt-in, a variational autoencoder over the same windows:
//! [`vae`], [`Model`]); it scores new rows causally, alerts above a label-free
//! peaks-over-threshold level ([`PotThreshold`]) and names the metrics behind a score
//! ([`Detector::score_explained`]). [`stream`] scores univariate series (NAB protocol) with a
//! VAE window model, a level-shift signal and adaptive-resonance events. The heavy math runs
//! on a [`Backend`]: [`CpuBackend`] by default, `GpuBackend` (wgpu + WGSL) with the `gpu`
//! feature; [`SelectedBackend`] picks one from a [`BackendChoice`] (`auto | cpu | gpu`). A
//! fleet trains and scores in batches: [`Detector::fit_batch`] and
//! [`Detector::score_explained_batch`] (the VAE trains and scores on the CPU, host by host).
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

pub use backend::{
    Backend, BackendChoice, BackendError, BackendInfo, BackendKind, CpuBackend, SelectOptions,
    SelectedBackend,
};
#[cfg(feature = "gpu")]
pub use backend::{GpuBackend, GpuOptions, GpuStats};
pub use detector::{
    Contribution, Detector, DetectorConfig, Model, ScoreInput, ScoredRow, TrainInput,
};
pub use eval::{eval, eval_with, EvalOptions, EvalSummary};
pub use matrix::Matrix;
pub use pot::PotThreshold;
pub use stream::StreamConfig;
