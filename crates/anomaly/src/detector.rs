//! The multivariate detector: standardize, predict each row from the `lags` rows before it
//! with a ridge-regularized linear model trained by minimizing the prediction MSE on normal
//! history, score the clipped squared residuals scaled per metric by their training spread,
//! smooth them causally (per-metric EMA), alert above a peaks-over-threshold level.
//!
//! A second, univariate model (each metric from its own `lags` past values, fitted from the
//! same cross products) is scored beside it and the two per-metric energies are averaged
//! (`univariate_weight`): the joint model can explain a fault away through correlated metrics,
//! the univariate one cannot, and it is indifferent to cross-metric drift.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::backend::parallel::par_map;
use crate::backend::{
    energy_from_abs, Backend, BackendError, CpuBackend, CrossProducts, FitJob, FitOutput,
    LagWeights, ModelKey, ResidualJob, Series, StreamJob, StreamModel, Streamed,
};
use crate::pot::PotThreshold;
use crate::vae::{windows, Vae, VaeConfig};
use crate::Matrix;

/// Hyper-parameters. Defaults were chosen once on the dev split and apply to every series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectorConfig {
    /// Past rows the predictor sees.
    pub lags: usize,
    /// Ridge penalty on the normal equations (`XᵀX + ridge·I`).
    pub ridge: f64,
    /// Floor on a metric's training standard deviation (raw units).
    pub std_floor: f32,
    /// Floor on a metric's residual scale (standardized units).
    pub resid_floor: f32,
    /// Clip of a scaled residual before squaring.
    pub clip: f32,
    /// Span of the causal exponential moving average over residual energy (α = 2/(span+1)).
    pub ema_span: f32,
    /// Quantile of training scores where the peaks-over-threshold fit starts.
    pub pot_init_quantile: f64,
    /// Target exceedance probability of the alert threshold.
    pub pot_risk: f64,
    /// Share of the training rows (the most recent) held out to calibrate the threshold on
    /// out-of-sample scores (0 = calibrate on in-sample scores).
    pub calib_frac: f64,
    /// Share of the training rows (the most recent) on which each metric's residual scale is
    /// measured out of sample, by a model fitted on the rows before them (0 = the in-sample
    /// residual RMS). A metric that only looks predictable in sample, or drifts, then gets the
    /// scale it shows on new rows instead of one that makes small changes look large.
    pub scale_holdout: f64,
    /// Drift-adaptive part of the alert level: a row alerts only if its score also exceeds
    /// `adapt_factor ×` the median of the last `adapt_window` scores (0 = off).
    pub adapt_factor: f32,
    pub adapt_window: usize,
    /// Weight of the univariate model's energy in each metric's energy (`0` = the joint model
    /// alone; `0.5` = the mean of both).
    pub univariate_weight: f32,
    /// The joint model: the linear predictor (default) or a variational autoencoder over the
    /// same windows ([`crate::vae`]; measured as a candidate, see docs/anomaly.md).
    pub model: Model,
    /// Settings of the VAE (used when `model` is [`Model::Vae`]).
    pub vae: VaeConfig,
}

/// The joint model of a [`Detector`]: what turns a window of rows into per-metric errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Ridge-regularized linear prediction of row *t* from the `lags` rows before it.
    #[default]
    Linear,
    /// Reconstruction of the window of rows *t − lags ..= t* by a VAE ([`crate::vae`]).
    Vae,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            lags: 3,
            ridge: 10.0,
            std_floor: 0.03,
            resid_floor: 0.2,
            clip: 100.0,
            ema_span: 12.0,
            pot_init_quantile: 0.9,
            pot_risk: 0.05,
            calib_frac: 0.0,
            scale_holdout: 0.0,
            adapt_factor: 5.0,
            adapt_window: 1440,
            univariate_weight: 0.5,
            model: Model::Linear,
            vae: VaeConfig::default(),
        }
    }
}

/// One metric's share of a row's anomaly score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// 0-based metric (column) index.
    pub metric: usize,
    /// Share of the score, in `[0, 1]`.
    pub share: f32,
}

/// A scored row with its explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredRow {
    pub score: f32,
    /// The alert level this row's score was held to: the peaks-over-threshold level, raised
    /// by the drift guard when that is higher. `alert == (score > level)`.
    pub level: f32,
    pub alert: bool,
    /// Top contributing metrics, largest first.
    pub top: Vec<Contribution>,
}

/// Streaming state: the last `lags` standardized rows and the per-metric EMA.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub history: Vec<f32>,
    pub ema: Vec<f32>,
    pub started: bool,
    /// Last `adapt_window` scores in arrival order (ring) and sorted (for the median).
    #[serde(default)]
    pub recent: std::collections::VecDeque<f32>,
    #[serde(default)]
    pub recent_sorted: Vec<f32>,
    /// Rows seen by the adaptive level (every `ADAPT_STRIDE`-th score enters the ring).
    #[serde(default)]
    pub recent_count: u64,
}

/// The drift-adaptive median keeps every 8th score (a day of 1-minute rows = 180 samples).
const ADAPT_STRIDE: u64 = 8;

/// A trained detector (serde-serializable, including its streaming state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub config: DetectorConfig,
    pub dim: usize,
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    /// `(lags * dim) x dim` predictor weights and `dim` intercepts (standardized units).
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    /// 1 / per-metric residual scale.
    pub inv_resid_scale: Vec<f32>,
    /// Univariate models: `lags x dim` weights (lag `k` of metric `j` at `k * dim + j`, oldest
    /// first), `dim` intercepts and 1 / residual scales. Empty in models stored before they
    /// existed, which then score with the joint model alone.
    #[serde(default)]
    pub uni_weights: Vec<f32>,
    #[serde(default)]
    pub uni_bias: Vec<f32>,
    #[serde(default)]
    pub uni_inv_scale: Vec<f32>,
    /// The VAE when `config.model` is [`Model::Vae`] (then `weights` and `bias` stay zero and
    /// `inv_resid_scale` holds the VAE's per-metric scales).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<Vae>,
    pub threshold: PotThreshold,
    pub train_rows: usize,
    pub state: StreamState,
}

/// The alert level of score `s` (the static level `thr`, raised by the drift guard to
/// `factor ×` the median of the recent scores), then `s` enters the guard's memory (every
/// `ADAPT_STRIDE`-th score, at most `cap` kept).
#[allow(clippy::too_many_arguments)]
fn adapt_level(
    ring: &mut std::collections::VecDeque<f32>,
    sorted: &mut Vec<f32>,
    count: &mut u64,
    s: f32,
    thr: f32,
    factor: f32,
    cap: usize,
    adapt: bool,
) -> f32 {
    let mut level = thr;
    if !adapt {
        return level;
    }
    let med = if sorted.is_empty() {
        0.0
    } else {
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        }
    };
    level = level.max(factor * med);
    *count += 1;
    if *count % ADAPT_STRIDE != 1 {
        return level;
    }
    let v = if s.is_finite() { s } else { f32::MAX };
    if ring.len() >= cap {
        if let Some(old) = ring.pop_front() {
            let i = sorted.partition_point(|&x| x < old);
            if i < sorted.len() {
                sorted.remove(i);
            }
        }
    }
    ring.push_back(v);
    let i = sorted.partition_point(|&x| x < v);
    sorted.insert(i, v);
    level
}

/// Per-metric residual RMS of the joint and the univariate models in raw units (see
/// [`DetectorConfig::scale_holdout`]).
struct RawScales {
    joint: Vec<f32>,
    uni: Vec<f32>,
}

/// Solve `A x = B` (A `f x f` symmetric positive definite, B `f x m`) by Cholesky, in place.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], f: usize, m: usize) -> Result<()> {
    for j in 0..f {
        let mut s = a[j * f + j];
        for k in 0..j {
            s -= a[j * f + k] * a[j * f + k];
        }
        ensure!(s > 0.0, "normal equations not positive definite");
        let l = s.sqrt();
        a[j * f + j] = l;
        for i in j + 1..f {
            let mut s = a[i * f + j];
            for k in 0..j {
                s -= a[i * f + k] * a[j * f + k];
            }
            a[i * f + j] = s / l;
        }
    }
    for c in 0..m {
        for i in 0..f {
            let mut s = b[i * m + c];
            for k in 0..i {
                s -= a[i * f + k] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * f + i];
        }
        for i in (0..f).rev() {
            let mut s = b[i * m + c];
            for k in i + 1..f {
                s -= a[k * f + i] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * f + i];
        }
    }
    Ok(())
}

impl Detector {
    /// Train on normal history with the default CPU backend.
    pub fn fit(train: &Matrix, config: DetectorConfig) -> Result<Self> {
        Self::fit_with(&CpuBackend::default(), train, config)
    }

    /// Train on normal history (rows = time steps, cols = metrics) on `backend`.
    pub fn fit_with(backend: &dyn Backend, train: &Matrix, config: DetectorConfig) -> Result<Self> {
        let n = train.rows;
        let min_rows = 10 * (config.lags * train.cols + 1);
        let sh = (n as f64 * config.scale_holdout.clamp(0.0, 0.9)) as usize;
        let scales = if sh >= 100 && n - sh > min_rows {
            let head = train.slice_rows(0, n - sh);
            let early = Self::fit_in_sample(backend, &head, config.clone(), None)?;
            Some(early.raw_residual_rms(backend, &train.slice_rows(n - sh, n))?)
        } else {
            None
        };
        let mut det = Self::fit_in_sample(backend, train, config.clone(), scales.as_ref())?;
        let hold = (n as f64 * config.calib_frac.clamp(0.0, 0.9)) as usize;
        if hold >= 100 && n - hold > min_rows {
            // Threshold from out-of-sample scores of a model fitted without the held-out tail.
            let head = train.slice_rows(0, n - hold);
            let mut early = Self::fit_in_sample(backend, &head, config, scales.as_ref())?;
            let scores = early.score_with(backend, &train.slice_rows(n - hold, n))?;
            det.threshold =
                PotThreshold::fit(&scores, det.config.pot_init_quantile, det.config.pot_risk);
        }
        Ok(det)
    }

    fn fit_in_sample(
        backend: &dyn Backend,
        train: &Matrix,
        config: DetectorConfig,
        scales: Option<&RawScales>,
    ) -> Result<Self> {
        let (mut det, zpad) = Self::prepare(train, config)?;
        let (n, d, lags) = (train.rows, det.dim, det.config.lags);
        let (xtx, xty) = backend.cross_products(&zpad, n, d, lags)?;
        det.solve(CrossProducts { xtx, xty }, &zpad, n)?;
        // Residual scales from the training residuals.
        let e = if det.config.model == Model::Vae {
            let win = windows(&zpad, n, d, lags);
            let vae = Vae::fit(&win, (lags + 1) * d, d, det.config.vae.clone());
            let e = vae.row_errors(&win);
            det.vae = Some(vae);
            e
        } else {
            let ones = vec![1.0f32; d];
            backend.residual_energy(&zpad, n, d, lags, det.lag_weights(), &ones, f32::MAX)?
        };
        det.set_resid_scale(&e, n);
        if let Some(raw) = scales {
            det.set_holdout_scales(raw);
        }
        // Calibration scores on the training data, which also leaves the stream at its end.
        det.state.history = zpad[..lags * d].to_vec();
        let scores = det.score_standardized(backend, &zpad, n, |_, _, _, _, _| {})?;
        det.threshold =
            PotThreshold::fit(&scores, det.config.pot_init_quantile, det.config.pot_risk);
        Ok(det)
    }

    /// Training, step 1: the standardization and an untrained detector, and the padded
    /// standardized series (the first row repeated `lags` times in front).
    fn prepare(train: &Matrix, config: DetectorConfig) -> Result<(Self, Vec<f32>)> {
        let (n, d) = (train.rows, train.cols);
        let lags = config.lags;
        ensure!(d > 0 && lags > 0, "need at least one metric and one lag");
        ensure!(n > lags + 1, "need more than {} training rows", lags + 1);
        let mut mean = vec![0.0f64; d];
        for r in 0..n {
            for (m, v) in mean.iter_mut().zip(train.row(r)) {
                *m += *v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0f64; d];
        for r in 0..n {
            for ((s, v), m) in var.iter_mut().zip(train.row(r)).zip(&mean) {
                *s += (*v as f64 - m).powi(2);
            }
        }
        let inv_std: Vec<f32> = var
            .iter()
            .map(|s| 1.0 / ((s / n as f64).sqrt() as f32).max(config.std_floor))
            .collect();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let det = Detector {
            dim: d,
            mean,
            inv_std,
            weights: vec![0.0; lags * d * d],
            bias: vec![0.0; d],
            inv_resid_scale: vec![1.0; d],
            uni_weights: Vec::new(),
            uni_bias: Vec::new(),
            uni_inv_scale: Vec::new(),
            vae: None,
            threshold: PotThreshold::fit(&[], 0.98, 1e-3),
            train_rows: n,
            state: StreamState {
                history: Vec::new(),
                ema: vec![0.0; d],
                started: false,
                recent: Default::default(),
                recent_sorted: Vec::new(),
                recent_count: 0,
            },
            config,
        };
        // Pad the start with the first row (the predictor has no earlier history):
        // standardized in place after `lags` rows left for the padding.
        let mut zpad = Vec::with_capacity((n + lags) * d);
        zpad.resize(lags * d, 0.0);
        det.standardize_into(train, &mut zpad);
        let (pad, z) = zpad.split_at_mut(lags * d);
        for row in pad.chunks_exact_mut(d) {
            row.copy_from_slice(&z[..d]);
        }
        Ok((det, zpad))
    }

    /// Training, step 2: the ridge-regularized normal equations solved for the joint (and
    /// univariate) predictor weights.
    fn solve(&mut self, cross: CrossProducts, zpad: &[f32], n: usize) -> Result<()> {
        let CrossProducts { mut xtx, mut xty } = cross;
        let (d, lags) = (self.dim, self.config.lags);
        let f = lags * d + 1;
        ensure!(
            xtx.len() == f * f && xty.len() == f * d,
            "cross products of the wrong shape"
        );
        for i in 0..f - 1 {
            xtx[i * f + i] += self.config.ridge;
        }
        xtx[(f - 1) * f + f - 1] += 1e-9 * n as f64;
        if self.config.univariate_weight > 0.0 {
            self.fit_univariate(&xtx, &xty, zpad, n)?;
        }
        if self.config.model == Model::Vae {
            // The VAE replaces the joint predictor (its weights stay zero).
            return Ok(());
        }
        cholesky_solve(&mut xtx, &mut xty, f, d)?;
        self.weights = xty[..(f - 1) * d].iter().map(|&v| v as f32).collect();
        self.bias = xty[(f - 1) * d..].iter().map(|&v| v as f32).collect();
        Ok(())
    }

    /// Training, step 3: per-metric residual scales from the unscaled training energies
    /// (`n x dim`, squared residuals).
    fn set_resid_scale(&mut self, e: &[f32], n: usize) {
        let d = self.dim;
        let mut ms = vec![0.0f64; d];
        for r in e.chunks_exact(d) {
            ms.iter_mut().zip(r).for_each(|(s, v)| *s += *v as f64);
        }
        self.set_resid_scale_from(&ms, n);
    }

    /// Residual scales from the per-metric sums of squared training residuals.
    fn set_resid_scale_from(&mut self, ms: &[f64], n: usize) {
        self.inv_resid_scale = ms
            .iter()
            .map(|s| 1.0 / ((s / n as f64).sqrt() as f32).max(self.config.resid_floor))
            .collect();
    }

    /// Out-of-sample residual scales ([`DetectorConfig::scale_holdout`]), converted from raw
    /// units to this model's standardized units, in place of the in-sample ones.
    fn set_holdout_scales(&mut self, raw: &RawScales) {
        let floor = self.config.resid_floor;
        let to_inv = |r: &[f32], is: &[f32]| -> Vec<f32> {
            r.iter()
                .zip(is)
                .map(|(r, is)| 1.0 / (r * is).max(floor))
                .collect()
        };
        self.inv_resid_scale = to_inv(&raw.joint, &self.inv_std);
        if raw.uni.len() == self.dim && self.uni_inv_scale.len() == self.dim {
            self.uni_inv_scale = to_inv(&raw.uni, &self.inv_std);
        }
    }

    /// Per-metric RMS residuals of the joint and the univariate models on `rows` (continuing the
    /// stream), in raw units.
    fn raw_residual_rms(&self, backend: &dyn Backend, rows: &Matrix) -> Result<RawScales> {
        let (n, d) = (rows.rows, self.dim);
        let mut unit = self.clone();
        unit.inv_resid_scale = vec![1.0; d];
        unit.uni_inv_scale = vec![1.0; self.uni_inv_scale.len()];
        unit.config.clip = f32::MAX;
        let zpad = unit.padded(rows);
        let joint = match &unit.vae {
            Some(vae) => unit.vae_energy(vae, &zpad, n),
            None => backend.residual_energy(
                &zpad,
                n,
                d,
                unit.config.lags,
                unit.lag_weights(),
                &unit.inv_resid_scale,
                f32::MAX,
            )?,
        };
        let rms = |e: &[f32]| -> Vec<f32> {
            let mut ms = vec![0.0f64; d];
            for r in e.chunks_exact(d) {
                ms.iter_mut().zip(r).for_each(|(s, v)| *s += *v as f64);
            }
            ms.iter()
                .zip(&self.inv_std)
                .map(|(s, is)| (s / n.max(1) as f64).sqrt() as f32 / is)
                .collect()
        };
        let uni = if unit.uni_weights.is_empty() {
            Vec::new()
        } else {
            let mut e = vec![0.0f32; n * d];
            for (t, row) in e.chunks_exact_mut(d).enumerate() {
                unit.univariate_energy_row(&zpad, t, f32::MAX, row);
            }
            rms(&e)
        };
        Ok(RawScales {
            joint: rms(&joint),
            uni,
        })
    }

    /// The VAE's per-metric energies of the `n` windows of `zpad`, scaled and clipped like the
    /// predictor's residuals.
    fn vae_energy(&self, vae: &Vae, zpad: &[f32], n: usize) -> Vec<f32> {
        let (d, clip) = (self.dim, self.config.clip);
        let mut e = vae.row_errors(&windows(zpad, n, d, self.config.lags));
        for row in e.chunks_exact_mut(d) {
            for (v, s) in row.iter_mut().zip(&self.inv_resid_scale) {
                let r = (v.sqrt() * s).min(clip);
                *v = r * r;
            }
        }
        e
    }

    /// Training, steps 3 and 4 from the absolute training residuals: residual scales, then
    /// the calibration scores and the alert threshold (the batched path; the same
    /// operations as [`Detector::fit_in_sample`]'s two energy calls).
    fn finish_training(&mut self, zpad: &[f32], n: usize, abs: &[f32]) {
        let (d, lags) = (self.dim, self.config.lags);
        // The squared residuals' column sums, as `set_resid_scale` adds them.
        let mut ms = vec![0.0f64; d];
        for r in abs.chunks_exact(d) {
            ms.iter_mut().zip(r).for_each(|(s, a)| *s += (a * a) as f64);
        }
        self.set_resid_scale_from(&ms, n);
        self.state.history = zpad[..lags * d].to_vec();
        let mut e = energy_from_abs(abs, &self.inv_resid_scale, self.config.clip);
        self.blend_univariate(zpad, n, &mut e);
        let scores = self.stream(zpad, n, &e, |_, _, _, _, _| {});
        self.threshold =
            PotThreshold::fit(&scores, self.config.pot_init_quantile, self.config.pot_risk);
    }

    /// Train one detector per host, batched: the cross products of all hosts in one backend
    /// call, the residuals of all hosts in another, the host-side steps (standardizing,
    /// solving, calibrating) spread over [`Backend::threads`]. Equal to [`Detector::fit_with`]
    /// host by host (bit for bit on the CPU backend); one result per host, in order, so a
    /// host with bad or oversized data fails alone. Backend failures carry a
    /// [`BackendError`] (`err.downcast_ref::<BackendError>()`).
    pub fn fit_batch(backend: &dyn Backend, hosts: &[TrainInput<'_>]) -> Vec<Result<Self>> {
        // The VAE and out-of-sample scales have no batched kernels: those hosts train one by
        // one ([`Detector::fit_with`]), the others in the batch.
        let one_by_one =
            |h: &TrainInput<'_>| h.config.model == Model::Vae || h.config.scale_holdout > 0.0;
        if hosts.iter().any(one_by_one) {
            let batched: Vec<TrainInput<'_>> =
                hosts.iter().filter(|h| !one_by_one(h)).copied().collect();
            let mut fitted = Self::fit_batch(backend, &batched).into_iter();
            return hosts
                .iter()
                .map(|h| match one_by_one(h) {
                    true => Self::fit_with(backend, h.rows, h.config.clone()),
                    false => fitted.next().expect("one result per batched host"),
                })
                .collect();
        }
        let threads = backend.threads();
        let inputs: Vec<(&Matrix, &DetectorConfig)> =
            hosts.iter().map(|h| (h.rows, h.config)).collect();
        let mut out = Self::fit_in_sample_batch(backend, &inputs);
        // Hosts that calibrate their threshold on a held-out tail (`calib_frac`): a model
        // fitted without the tail scores it, batched the same way.
        let held: Vec<(usize, usize)> = hosts
            .iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_ok())
            .filter_map(|(i, h)| {
                let (n, c) = (h.rows.rows, h.config);
                let hold = (n as f64 * c.calib_frac.clamp(0.0, 0.9)) as usize;
                (hold >= 100 && n - hold > 10 * (c.lags * h.rows.cols + 1)).then_some((i, hold))
            })
            .collect();
        if held.is_empty() {
            return out;
        }
        let heads: Vec<Matrix> = par_map(threads, held.clone(), |_, (i, hold)| {
            hosts[i].rows.slice_rows(0, hosts[i].rows.rows - hold)
        });
        let tails: Vec<Matrix> = par_map(threads, held.clone(), |_, (i, hold)| {
            hosts[i]
                .rows
                .slice_rows(hosts[i].rows.rows - hold, hosts[i].rows.rows)
        });
        let early_in: Vec<(&Matrix, &DetectorConfig)> = held
            .iter()
            .zip(&heads)
            .map(|((i, _), m)| (m, hosts[*i].config))
            .collect();
        let early = Self::fit_in_sample_batch(backend, &early_in);
        let mut ok_early = Vec::new();
        for ((i, _), e) in held.iter().zip(early) {
            match e {
                Ok(det) => ok_early.push((*i, det)),
                Err(e) => out[*i] = Err(e),
            }
        }
        let mut jobs: Vec<ScoreInput<'_>> = ok_early
            .iter_mut()
            .zip(
                held.iter()
                    .zip(&tails)
                    .filter(|((i, _), _)| out[*i].is_ok()),
            )
            .map(|((_, det), (_, tail))| ScoreInput {
                detector: det,
                rows: tail,
            })
            .collect();
        let scored = Self::score_explained_batch(backend, &mut jobs, 0);
        for ((i, _), s) in ok_early.iter().zip(scored) {
            let r = s.map(|rows| rows.iter().map(|r| r.score).collect::<Vec<f32>>());
            match (&mut out[*i], r) {
                (Ok(det), Ok(scores)) => {
                    det.threshold = PotThreshold::fit(
                        &scores,
                        det.config.pot_init_quantile,
                        det.config.pot_risk,
                    )
                }
                (slot, Err(e)) => *slot = Err(e),
                (Err(_), Ok(_)) => {}
            }
        }
        out
    }

    /// In-sample training of many hosts: on the device where the backend trains whole models
    /// ([`Backend::fit_device`]; hosts with the linear joint model alone and in-sample
    /// scales), else, and for the hosts the device could not take, through the backend's
    /// kernels and host-side steps.
    fn fit_in_sample_batch(
        backend: &dyn Backend,
        inputs: &[(&Matrix, &DetectorConfig)],
    ) -> Vec<Result<Self>> {
        let mut out: Vec<Option<Result<Self>>> = (0..inputs.len()).map(|_| None).collect();
        let device: Vec<usize> = (0..inputs.len())
            .filter(|&i| {
                let (m, c) = inputs[i];
                c.univariate_weight <= 0.0
                    && c.model == Model::Linear
                    && c.scale_holdout <= 0.0
                    && c.lags > 0
                    && m.cols > 0
                    && m.rows > c.lags + 1
            })
            .collect();
        if !device.is_empty() {
            let jobs: Vec<FitJob<'_>> = device.iter().map(|&i| fit_job(inputs[i])).collect();
            if let Some(fitted) = backend.fit_device(&jobs) {
                let work: Vec<_> = device.iter().copied().zip(fitted).collect();
                let done = par_map(backend.threads(), work, |_, (i, r)| match r {
                    Ok(m) => Some(Ok(Self::from_fit(inputs[i].0, inputs[i].1, m))),
                    Err(e)
                        if e.downcast_ref::<BackendError>()
                            .is_some_and(BackendError::is_capacity) =>
                    {
                        None // trained below, the other way
                    }
                    Err(e) => Some(Err(e)),
                });
                for (&i, r) in device.iter().zip(done) {
                    out[i] = r;
                }
            }
        }
        let rest: Vec<usize> = (0..inputs.len()).filter(|&i| out[i].is_none()).collect();
        if !rest.is_empty() {
            let sub: Vec<(&Matrix, &DetectorConfig)> = rest.iter().map(|&i| inputs[i]).collect();
            for (&i, r) in rest
                .iter()
                .zip(Self::fit_in_sample_host_batch(backend, &sub))
            {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every host trained"))
            .collect()
    }

    /// A detector from a device training ([`FitOutput`]): the same model and stream state
    /// [`Detector::fit_in_sample`] leaves, up to the device's rounding.
    fn from_fit(rows: &Matrix, config: &DetectorConfig, m: FitOutput) -> Self {
        // `PotThreshold::fit` sorts the finite scores, takes its quantile from ranks ⌊q·(n−1)⌋
        // and ⌈q·(n−1)⌉ and fits the values above it; scores below the first rank only count.
        // So that many copies of the lowest upper-tail score stand in for them: the same fit.
        let lo = m.finite - m.upper.len();
        let threshold =
            PotThreshold::fit_upper(lo, &m.upper, config.pot_init_quantile, config.pot_risk);
        let recent: std::collections::VecDeque<f32> = m
            .recent
            .iter()
            .map(|&s| if s.is_finite() { s } else { f32::MAX })
            .collect();
        let mut recent_sorted: Vec<f32> = recent.iter().copied().collect();
        recent_sorted.sort_by(f32::total_cmp);
        let adapt = config.adapt_factor > 0.0 && config.adapt_window > 0;
        Detector {
            config: config.clone(),
            dim: rows.cols,
            mean: m.mean,
            inv_std: m.inv_std,
            weights: m.weights,
            bias: m.bias,
            inv_resid_scale: m.inv_scale,
            uni_weights: Vec::new(),
            uni_bias: Vec::new(),
            uni_inv_scale: Vec::new(),
            vae: None,
            threshold,
            train_rows: rows.rows,
            state: StreamState {
                history: m.history,
                ema: m.ema,
                started: true,
                recent,
                recent_sorted,
                recent_count: if adapt { rows.rows as u64 } else { 0 },
            },
        }
    }

    /// The host-side training path of many hosts: standardizing on host threads, the
    /// backend's kernels ([`Backend::train_kernels`]: cross products, the solves through a
    /// callback, training residuals), then the calibration on host threads.
    fn fit_in_sample_host_batch(
        backend: &dyn Backend,
        inputs: &[(&Matrix, &DetectorConfig)],
    ) -> Vec<Result<Self>> {
        let threads = backend.threads();
        let prepared: Vec<Result<(Self, Vec<f32>)>> =
            par_map(threads, inputs.to_vec(), |_, (m, c)| {
                Self::prepare(m, c.clone())
            });
        let mut dets: Vec<Option<std::sync::Mutex<Self>>> = Vec::with_capacity(inputs.len());
        let mut zpads: Vec<Vec<f32>> = Vec::with_capacity(inputs.len());
        let mut errs: Vec<Option<anyhow::Error>> = Vec::with_capacity(inputs.len());
        for p in prepared {
            match p {
                Ok((det, zpad)) => {
                    dets.push(Some(std::sync::Mutex::new(det)));
                    zpads.push(zpad);
                    errs.push(None);
                }
                Err(e) => {
                    dets.push(None);
                    zpads.push(Vec::new());
                    errs.push(Some(e));
                }
            }
        }
        let lock = |i: usize| {
            dets[i]
                .as_ref()
                .expect("prepared")
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        // Cross products, solves and training residuals of every prepared host, batched.
        let ok: Vec<usize> = (0..inputs.len()).filter(|&i| dets[i].is_some()).collect();
        let series: Vec<Series<'_>> = ok
            .iter()
            .map(|&i| {
                let det = lock(i);
                Series {
                    zpad: &zpads[i],
                    n: inputs[i].0.rows,
                    d: det.dim,
                    lags: det.config.lags,
                }
            })
            .collect();
        let solve = |k: usize, c: CrossProducts| -> Result<(Vec<f32>, Vec<f32>)> {
            let i = ok[k];
            let mut det = lock(i);
            det.solve(c, &zpads[i], inputs[i].0.rows)?;
            Ok((det.weights.clone(), det.bias.clone()))
        };
        let residuals = backend.train_kernels(&series, &solve);
        drop(series);
        let mut resid_of: Vec<Option<Result<Vec<f32>>>> = (0..inputs.len()).map(|_| None).collect();
        for (&i, r) in ok.iter().zip(residuals) {
            resid_of[i] = Some(r);
        }
        let work: Vec<_> = dets
            .into_iter()
            .zip(zpads)
            .zip(errs)
            .zip(resid_of)
            .collect();
        par_map(threads, work, |i, (((det, zpad), err), abs)| {
            if let Some(e) = err {
                return Err(e);
            }
            let mut det = det
                .expect("prepared")
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            let abs = abs.expect("prepared hosts have residuals")?;
            det.finish_training(&zpad, inputs[i].0.rows, &abs);
            Ok(det)
        })
    }

    fn lag_weights(&self) -> LagWeights<'_> {
        LagWeights {
            weights: &self.weights,
            bias: &self.bias,
        }
    }

    /// Fit each metric's own ridge AR model from the sub-blocks of the joint normal equations
    /// (`xtx` already carries the ridge), then its residual scale on the training rows.
    fn fit_univariate(&mut self, xtx: &[f64], xty: &[f64], zpad: &[f32], n: usize) -> Result<()> {
        let (d, lags) = (self.dim, self.config.lags);
        let f = lags * d + 1;
        let g = lags + 1;
        let mut weights = vec![0.0f32; lags * d];
        let mut bias = vec![0.0f32; d];
        let mut a = vec![0.0f64; g * g];
        let mut b = vec![0.0f64; g];
        for j in 0..d {
            // Features of metric j: lag k at k*d + j, then the intercept at f - 1.
            let idx = |k: usize| if k < lags { k * d + j } else { f - 1 };
            for r in 0..g {
                for c in 0..g {
                    a[r * g + c] = xtx[idx(r) * f + idx(c)];
                }
                b[r] = xty[idx(r) * d + j];
            }
            cholesky_solve(&mut a, &mut b, g, 1)?;
            for k in 0..lags {
                weights[k * d + j] = b[k] as f32;
            }
            bias[j] = b[lags] as f32;
        }
        self.uni_weights = weights;
        self.uni_bias = bias;
        self.uni_inv_scale = vec![1.0; d];
        let mut ms = vec![0.0f64; d];
        let mut e = vec![0.0f32; d];
        for t in 0..n {
            self.univariate_energy_row(zpad, t, f32::MAX, &mut e);
            ms.iter_mut().zip(&e).for_each(|(s, v)| *s += *v as f64);
        }
        self.uni_inv_scale = ms
            .iter()
            .map(|s| 1.0 / ((s / n as f64).sqrt() as f32).max(self.config.resid_floor))
            .collect();
        Ok(())
    }

    /// The univariate models' energy of design row `t` of `zpad` into `out` (`dim` values).
    #[inline]
    fn univariate_energy_row(&self, zpad: &[f32], t: usize, clip: f32, out: &mut [f32]) {
        let d = self.dim;
        let lags = self.config.lags;
        out.copy_from_slice(&self.uni_bias);
        for k in 0..lags {
            let x = &zpad[(t + k) * d..(t + k + 1) * d];
            let w = &self.uni_weights[k * d..(k + 1) * d];
            for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
                *o += x * w;
            }
        }
        let y = &zpad[(t + lags) * d..(t + lags + 1) * d];
        for ((o, y), s) in out.iter_mut().zip(y).zip(&self.uni_inv_scale) {
            let r = ((y - *o).abs() * s).min(clip);
            *o = r * r;
        }
    }

    /// Blend the univariate energies into the joint model's `n x dim` energies `e`.
    fn blend_univariate(&self, zpad: &[f32], n: usize, e: &mut [f32]) {
        let w = self.config.univariate_weight;
        if w <= 0.0 || self.uni_weights.len() != self.config.lags * self.dim {
            return;
        }
        let mut u = vec![0.0f32; self.dim];
        for (t, row) in e.chunks_exact_mut(self.dim).enumerate().take(n) {
            self.univariate_energy_row(zpad, t, self.config.clip, &mut u);
            for (v, u) in row.iter_mut().zip(&u) {
                *v += w * (u - *v);
            }
        }
    }

    /// Append the standardized rows to `out`.
    fn standardize_into(&self, rows: &Matrix, out: &mut Vec<f32>) {
        let d = self.dim;
        let start = out.len();
        out.resize(start + rows.data.len(), 0.0);
        for (o, r) in out[start..]
            .chunks_exact_mut(d)
            .zip(rows.data.chunks_exact(d))
        {
            for (((o, v), m), s) in o.iter_mut().zip(r).zip(&self.mean).zip(&self.inv_std) {
                *o = (v - m) * s;
            }
        }
    }

    /// History rows (or the first row repeated) followed by the standardized `rows`.
    fn padded(&self, rows: &Matrix) -> Vec<f32> {
        let (d, lags) = (self.dim, self.config.lags);
        let mut zpad = Vec::with_capacity((rows.rows + lags) * d);
        if self.state.history.len() == lags * d {
            zpad.extend_from_slice(&self.state.history);
            self.standardize_into(rows, &mut zpad);
        } else {
            self.standardize_into(rows, &mut zpad);
            let first: Vec<f32> = zpad[..d.min(zpad.len())].to_vec();
            let mut pre = Vec::with_capacity(lags * d + zpad.len());
            for _ in 0..lags {
                pre.extend_from_slice(&first);
            }
            pre.extend_from_slice(&zpad);
            zpad = pre;
        }
        zpad
    }

    /// The static (peaks-over-threshold) alert level on scores. A row alerts when its score
    /// exceeds this level and, when `adapt_factor > 0`, also `adapt_factor ×` the median of the
    /// recent scores (see [`Detector::score_alerts`]).
    pub fn alert_threshold(&self) -> f32 {
        self.threshold.threshold as f32
    }

    /// Forget the stream (the next row is treated as the first one ever seen).
    pub fn reset_stream(&mut self) {
        self.state.history.clear();
        self.state.ema.iter_mut().for_each(|v| *v = 0.0);
        self.state.started = false;
        self.state.recent.clear();
        self.state.recent_sorted.clear();
        self.state.recent_count = 0;
    }

    /// Core streaming pass over standardized rows; calls
    /// `visit(t, per-metric EMA, score, alert level, alert)`.
    fn score_standardized(
        &mut self,
        backend: &dyn Backend,
        zpad: &[f32],
        n: usize,
        visit: impl FnMut(usize, &[f32], f32, f32, bool),
    ) -> Result<Vec<f32>> {
        let d = self.dim;
        let lags = self.config.lags;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut e = match &self.vae {
            Some(vae) => self.vae_energy(vae, zpad, n),
            None => backend.residual_energy(
                zpad,
                n,
                d,
                lags,
                self.lag_weights(),
                &self.inv_resid_scale,
                self.config.clip,
            )?,
        };
        self.blend_univariate(zpad, n, &mut e);
        Ok(self.stream(zpad, n, &e, visit))
    }

    /// The streaming pass over per-metric energies `e` (`n x dim`) of the standardized rows
    /// `zpad`: EMA, score, alert level; leaves the stream after the last row.
    fn stream(
        &mut self,
        zpad: &[f32],
        n: usize,
        e: &[f32],
        mut visit: impl FnMut(usize, &[f32], f32, f32, bool),
    ) -> Vec<f32> {
        let d = self.dim;
        let alpha = 2.0 / (self.config.ema_span + 1.0);
        let inv_d = 1.0 / d as f32;
        let mut scores = Vec::with_capacity(n);
        let thr = self.threshold.threshold as f32;
        let (factor, window) = (self.config.adapt_factor, self.config.adapt_window);
        let adapt = factor > 0.0 && window > 0;
        let cap = (window as u64).div_ceil(ADAPT_STRIDE).max(1) as usize;
        let state = &mut self.state;
        let ema = &mut state.ema;
        for (t, row) in e.chunks_exact(d).enumerate() {
            if !state.started {
                ema.copy_from_slice(row);
                state.started = true;
            } else {
                for (m, v) in ema.iter_mut().zip(row) {
                    *m += alpha * (v - *m);
                }
            }
            let s = ema.iter().sum::<f32>() * inv_d;
            let level = adapt_level(
                &mut state.recent,
                &mut state.recent_sorted,
                &mut state.recent_count,
                s,
                thr,
                factor,
                cap,
                adapt,
            );
            visit(t, ema, s, level, s > level);
            scores.push(s);
        }
        state.history = zpad[n * d..].to_vec();
        scores
    }

    fn check(&self, rows: &Matrix) -> Result<()> {
        ensure!(
            rows.cols == self.dim,
            "rows have {} metrics, detector was trained on {}",
            rows.cols,
            self.dim
        );
        Ok(())
    }

    /// Score new rows causally (continuing the stream), CPU backend. Higher = more anomalous.
    pub fn score(&mut self, rows: &Matrix) -> Result<Vec<f32>> {
        self.score_with(&CpuBackend::default(), rows)
    }

    /// Score new rows causally on `backend`.
    pub fn score_with(&mut self, backend: &dyn Backend, rows: &Matrix) -> Result<Vec<f32>> {
        self.check(rows)?;
        let zpad = self.padded(rows);
        self.score_standardized(backend, &zpad, rows.rows, |_, _, _, _, _| {})
    }

    /// Score new rows causally on `backend`, with the detector's own alert decisions.
    pub fn score_alerts(
        &mut self,
        backend: &dyn Backend,
        rows: &Matrix,
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        self.check(rows)?;
        let zpad = self.padded(rows);
        let mut alerts = Vec::with_capacity(rows.rows);
        let scores =
            self.score_standardized(backend, &zpad, rows.rows, |_, _, _, _, a| alerts.push(a))?;
        Ok((scores, alerts))
    }

    /// Score new rows causally with alerts and the `top_k` contributing metrics of each row.
    pub fn score_explained(
        &mut self,
        backend: &dyn Backend,
        rows: &Matrix,
        top_k: usize,
    ) -> Result<Vec<ScoredRow>> {
        self.check(rows)?;
        let zpad = self.padded(rows);
        let mut out = Vec::with_capacity(rows.rows);
        self.score_standardized(backend, &zpad, rows.rows, |_, ema, s, level, alert| {
            out.push(ScoredRow {
                score: s,
                level,
                alert,
                top: top_contributions(ema, top_k),
            });
        })?;
        Ok(out)
    }
}

/// One host's training data for [`Detector::fit_batch`].
#[derive(Clone, Copy, Debug)]
pub struct TrainInput<'a> {
    /// Normal history, rows = time steps (oldest first), cols = metrics.
    pub rows: &'a Matrix,
    pub config: &'a DetectorConfig,
}

/// One host's new rows for [`Detector::score_explained_batch`], and its detector (whose
/// stream continues).
#[derive(Debug)]
pub struct ScoreInput<'a> {
    pub detector: &'a mut Detector,
    pub rows: &'a Matrix,
}

/// What scoring one host took: the backend's stream step, the residual path (univariate
/// blend), the VAE on the host, or nothing (no rows, or a failed check).
enum Scoring {
    Stream(std::result::Result<Streamed, BackendError>),
    Residuals(std::result::Result<Vec<f32>, BackendError>),
    Vae,
    Nothing,
}

impl Detector {
    /// Score many hosts' new rows causally, each continuing its own stream, with alerts and
    /// the `top_k` contributing metrics of every row. One backend call does every host's
    /// residuals, moving averages, scores and top metrics ([`Backend::score_stream`]: one GPU
    /// submit); the drift guard's alert levels follow on [`Backend::threads`] host threads.
    /// Hosts scored with the univariate blend take the residual kernel and blend on the host;
    /// hosts with a VAE score on the host. Equal to [`Detector::score_explained`] host by host
    /// (bit for bit on the CPU backend); one result per host, in order. A host whose scoring
    /// fails keeps its stream unchanged. A GPU uploads every model every run here; pass keys
    /// with [`Detector::score_explained_batch_keyed`] to keep them resident.
    pub fn score_explained_batch(
        backend: &dyn Backend,
        jobs: &mut [ScoreInput<'_>],
        top_k: usize,
    ) -> Vec<Result<Vec<ScoredRow>>> {
        Self::score_explained_batch_keyed(backend, jobs, &[], top_k)
    }

    /// [`Detector::score_explained_batch`] with each host's model key: `keys[i]` names
    /// `jobs[i]`'s model (its host and version; bump the version whenever the host is
    /// retrained), so a GPU keeps the models resident between runs and uploads only the new
    /// rows and the streams' states. `keys` empty: no keys. Keys for another number of hosts
    /// fail every host.
    pub fn score_explained_batch_keyed(
        backend: &dyn Backend,
        jobs: &mut [ScoreInput<'_>],
        keys: &[ModelKey],
        top_k: usize,
    ) -> Vec<Result<Vec<ScoredRow>>> {
        if !keys.is_empty() && keys.len() != jobs.len() {
            return (0..jobs.len())
                .map(|_| {
                    Err(anyhow::anyhow!(
                        "{} model keys for {} hosts",
                        keys.len(),
                        jobs.len()
                    ))
                })
                .collect();
        }
        let threads = backend.threads();
        let padded: Vec<Result<Vec<f32>>> = par_map(threads, jobs.iter().collect(), |_, j| {
            j.detector.check(j.rows)?;
            Ok(j.detector.padded(j.rows))
        });
        let live: Vec<usize> = (0..jobs.len())
            .filter(|&i| padded[i].is_ok() && jobs[i].rows.rows > 0)
            .collect();
        // Detectors with a VAE score on the host (no batched kernel for it).
        let mut how: Vec<Scoring> = (0..jobs.len()).map(|_| Scoring::Nothing).collect();
        let (vae, live): (Vec<usize>, Vec<usize>) = live
            .into_iter()
            .partition(|&i| jobs[i].detector.vae.is_some());
        for i in vae {
            how[i] = Scoring::Vae;
        }
        let (blend, plain): (Vec<usize>, Vec<usize>) = live
            .into_iter()
            .partition(|&i| jobs[i].detector.blends_univariate());
        let series = |i: usize| Series {
            zpad: padded[i].as_ref().expect("checked"),
            n: jobs[i].rows.rows,
            d: jobs[i].detector.dim,
            lags: jobs[i].detector.config.lags,
        };
        if !plain.is_empty() {
            let sjobs: Vec<StreamJob<'_>> = plain
                .iter()
                .map(|&i| {
                    let det = &*jobs[i].detector;
                    StreamJob {
                        key: keys.get(i).copied(),
                        model: StreamModel {
                            weights: det.lag_weights(),
                            inv_scale: &det.inv_resid_scale,
                            clip: det.config.clip,
                            alpha: 2.0 / (det.config.ema_span + 1.0),
                        },
                        series: series(i),
                        ema: &det.state.ema,
                        started: det.state.started,
                    }
                })
                .collect();
            for (&i, r) in plain.iter().zip(backend.score_stream(&sjobs, top_k)) {
                how[i] = Scoring::Stream(r);
            }
        }
        if !blend.is_empty() {
            let rjobs: Vec<ResidualJob<'_>> = blend
                .iter()
                .map(|&i| ResidualJob {
                    series: series(i),
                    weights: jobs[i].detector.lag_weights(),
                })
                .collect();
            for (&i, r) in blend.iter().zip(backend.abs_residuals_batch(&rjobs)) {
                how[i] = Scoring::Residuals(r);
            }
        }
        let work: Vec<_> = jobs.iter_mut().zip(padded).zip(how).collect();
        par_map(threads, work, |_, ((job, zpad), how)| {
            let zpad = zpad?;
            let det = &mut *job.detector;
            let n = job.rows.rows;
            let mut e = match how {
                Scoring::Nothing => return Ok(Vec::new()), // no rows
                Scoring::Stream(s) => return det.finish_stream(&zpad, n, s?),
                Scoring::Residuals(abs) => {
                    energy_from_abs(&abs?, &det.inv_resid_scale, det.config.clip)
                }
                Scoring::Vae => {
                    let vae = det.vae.as_ref().expect("a VAE host");
                    det.vae_energy(vae, &zpad, n)
                }
            };
            det.blend_univariate(&zpad, n, &mut e);
            let mut out = Vec::with_capacity(n);
            det.stream(&zpad, n, &e, |_, ema, s, level, alert| {
                out.push(ScoredRow {
                    score: s,
                    level,
                    alert,
                    top: top_contributions(ema, top_k),
                })
            });
            Ok(out)
        })
    }

    /// Whether scoring blends the univariate models' energies in (as `blend_univariate` does).
    fn blends_univariate(&self) -> bool {
        self.config.univariate_weight > 0.0 && self.uni_weights.len() == self.config.lags * self.dim
    }

    /// The end of a scoring run from the backend's stream step: the drift guard's levels and
    /// the alerts row by row (as [`Detector::stream`] decides them), the stream's new state.
    fn finish_stream(&mut self, zpad: &[f32], n: usize, s: Streamed) -> Result<Vec<ScoredRow>> {
        let d = self.dim;
        ensure!(
            s.scores.len() == n && s.top.len() == n * s.k && s.ema.len() == d,
            "scoring results of the wrong shape"
        );
        let thr = self.threshold.threshold as f32;
        let (factor, window) = (self.config.adapt_factor, self.config.adapt_window);
        let adapt = factor > 0.0 && window > 0;
        let cap = (window as u64).div_ceil(ADAPT_STRIDE).max(1) as usize;
        let state = &mut self.state;
        let mut out = Vec::with_capacity(n);
        let mut top = s.top.chunks_exact(s.k.max(1));
        for &score in &s.scores {
            let level = adapt_level(
                &mut state.recent,
                &mut state.recent_sorted,
                &mut state.recent_count,
                score,
                thr,
                factor,
                cap,
                adapt,
            );
            out.push(ScoredRow {
                score,
                level,
                alert: score > level,
                top: if s.k == 0 {
                    Vec::new()
                } else {
                    top.next().map(<[Contribution]>::to_vec).unwrap_or_default()
                },
            });
        }
        state.ema = s.ema;
        state.started = true;
        state.history = zpad[n * d..].to_vec();
        Ok(out)
    }
}

/// The device-training input of one host.
fn fit_job<'a>((rows, c): (&'a Matrix, &DetectorConfig)) -> FitJob<'a> {
    let adapt = c.adapt_factor > 0.0 && c.adapt_window > 0;
    FitJob {
        rows: &rows.data,
        n: rows.rows,
        d: rows.cols,
        lags: c.lags,
        std_floor: c.std_floor,
        ridge: c.ridge,
        resid_floor: c.resid_floor,
        clip: c.clip,
        alpha: 2.0 / (c.ema_span + 1.0),
        quantile: c.pot_init_quantile,
        recent: adapt.then(|| {
            let cap = (c.adapt_window as u64).div_ceil(ADAPT_STRIDE).max(1) as usize;
            (ADAPT_STRIDE as usize, cap)
        }),
    }
}

/// The `k` largest entries of per-metric energy, as shares of their sum.
pub fn top_contributions(energy: &[f32], k: usize) -> Vec<Contribution> {
    let total: f32 = energy.iter().sum::<f32>().max(f32::MIN_POSITIVE);
    let mut idx: Vec<usize> = (0..energy.len()).collect();
    idx.sort_by(|&a, &b| energy[b].total_cmp(&energy[a]));
    idx.into_iter()
        .take(k)
        .map(|metric| Contribution {
            metric,
            share: energy[metric] / total,
        })
        .collect()
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    /// `from_fit` rebuilds the alert level from the sorted upper tail alone: equal to the fit
    /// on every score, for any quantile.
    #[test]
    fn the_upper_tail_gives_the_full_pot_fit() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32
        };
        for (n, q) in [(10_080, 0.9), (1000, 0.98), (37, 0.5), (5, 0.0), (64, 1.0)] {
            let scores: Vec<f32> = (0..n).map(|_| next().powi(3) * 4.0).collect();
            let mut sorted = scores.clone();
            sorted.sort_by(f32::total_cmp);
            let config = DetectorConfig {
                pot_init_quantile: q,
                univariate_weight: 0.0,
                ..DetectorConfig::default()
            };
            let rows = Matrix::new(n, 1, vec![0.0; n]);
            let lo = fit_job((&rows, &config)).tail_start(n);
            let out = FitOutput {
                mean: vec![0.0],
                inv_std: vec![1.0],
                weights: vec![0.0; config.lags],
                bias: vec![0.0],
                inv_scale: vec![1.0],
                ema: vec![0.0],
                history: vec![0.0; config.lags],
                recent: vec![],
                finite: n,
                upper: sorted[lo..].to_vec(),
            };
            let det = Detector::from_fit(&rows, &config, out);
            assert_eq!(
                det.threshold,
                PotThreshold::fit(&scores, q, config.pot_risk),
                "n {n} q {q}"
            );
        }
    }
}
