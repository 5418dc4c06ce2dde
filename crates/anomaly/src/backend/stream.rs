//! Scoring runs ([`super::Backend::score_stream`]): the residuals of each host's new rows, the
//! per-metric moving averages, scores and top metrics, with the model named by a
//! [`ModelKey`] so that a GPU keeps it resident between runs.

use super::parallel::par_map;
use super::{energy_from_abs, Backend, BackendError, LagWeights, ResidualJob, Series};
use crate::detector::{top_contributions, Contribution};

/// Names a model for a backend that keeps models resident between scoring runs: the host it
/// belongs to and its version. Bump the version whenever the host's model changes (a new
/// training); a backend also re-uploads a model whose shape or sampled values no longer match
/// what it holds under the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub host: u64,
    pub version: u64,
}

/// What the scoring stream needs of a model.
#[derive(Clone, Copy, Debug)]
pub struct StreamModel<'a> {
    pub weights: LagWeights<'a>,
    /// `1 / residual scale` per metric.
    pub inv_scale: &'a [f32],
    /// Clip of a scaled residual before squaring.
    pub clip: f32,
    /// Weight of a new row in the moving average, `2 / (span + 1)`.
    pub alpha: f32,
}

/// One host's input to [`Backend::score_stream`].
#[derive(Clone, Copy, Debug)]
pub struct StreamJob<'a> {
    /// The model's key, or `None` to send the model with this run only.
    pub key: Option<ModelKey>,
    pub model: StreamModel<'a>,
    /// The stream's history rows followed by the new standardized rows.
    pub series: Series<'a>,
    /// The stream's per-metric moving averages so far, and whether it has started.
    pub ema: &'a [f32],
    pub started: bool,
}

impl StreamJob<'_> {
    /// Shape checks of the series, the model and the state.
    pub fn check(&self) -> Result<(), BackendError> {
        self.residual_job().check()?;
        let d = self.series.d;
        if self.model.inv_scale.len() != d || self.ema.len() != d {
            return Err(BackendError::Invalid(format!(
                "{} residual scales and {} averages for {d} metrics",
                self.model.inv_scale.len(),
                self.ema.len()
            )));
        }
        Ok(())
    }

    /// The residual kernel's view of this job.
    pub fn residual_job(&self) -> ResidualJob<'_> {
        ResidualJob {
            series: self.series,
            weights: self.model.weights,
        }
    }
}

/// One host's scored rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Streamed {
    /// Score of each new row.
    pub scores: Vec<f32>,
    /// The `k` top metrics of each row, row after row (`k = min(top_k, d)`).
    pub top: Vec<Contribution>,
    pub k: usize,
    /// The per-metric moving averages after the last row.
    pub ema: Vec<f32>,
}

/// The stream of one host from its absolute residuals, with the detector's own operations in
/// its order (energies, moving averages, `sum · (1 / d)`, [`top_contributions`]): equal, bit
/// for bit, to `Detector::score_explained` on the CPU backend.
pub(crate) fn stream_from_abs(job: &StreamJob<'_>, abs: &[f32], top_k: usize) -> Streamed {
    let d = job.series.d;
    let m = job.model;
    let e = energy_from_abs(abs, m.inv_scale, m.clip);
    let mut ema = job.ema.to_vec();
    let mut started = job.started;
    let inv_d = 1.0 / d as f32;
    let k = top_k.min(d);
    let mut scores = Vec::with_capacity(job.series.n);
    let mut top = Vec::with_capacity(job.series.n * k);
    for row in e.chunks_exact(d) {
        if started {
            for (a, v) in ema.iter_mut().zip(row) {
                *a += m.alpha * (v - *a);
            }
        } else {
            ema.copy_from_slice(row);
            started = true;
        }
        scores.push(ema.iter().sum::<f32>() * inv_d);
        top.extend(top_contributions(&ema, k));
    }
    Streamed {
        scores,
        top,
        k,
        ema,
    }
}

/// [`Backend::score_stream`] from [`Backend::abs_residuals_batch`] and host threads.
pub fn score_stream_default<B: Backend + ?Sized>(
    backend: &B,
    jobs: &[StreamJob<'_>],
    top_k: usize,
) -> Vec<Result<Streamed, BackendError>> {
    let checked: Vec<Result<(), BackendError>> = jobs.iter().map(StreamJob::check).collect();
    let run: Vec<usize> = (0..jobs.len()).filter(|&i| checked[i].is_ok()).collect();
    let rjobs: Vec<ResidualJob<'_>> = run.iter().map(|&i| jobs[i].residual_job()).collect();
    let mut abs: Vec<Option<Result<Vec<f32>, BackendError>>> =
        (0..jobs.len()).map(|_| None).collect();
    for (&i, r) in run.iter().zip(backend.abs_residuals_batch(&rjobs)) {
        abs[i] = Some(r);
    }
    let work: Vec<_> = checked.into_iter().zip(abs).collect();
    par_map(backend.threads(), work, |i, (c, a)| {
        c?;
        let a = a.expect("checked hosts have residuals")?;
        Ok(stream_from_abs(&jobs[i], &a, top_k))
    })
}
