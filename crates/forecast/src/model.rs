//! Models, rolling-origin backtest, per-horizon model choice and interval calibration.

use crate::features::{self, Frame, Space, N_FOURIER_DAILY};
use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

/// Tuning knobs of the engine. `Default` is what `forecast` and `eval` use.
#[derive(Clone, Debug)]
pub struct Config {
    /// Trailing training window, hours of targets per fit.
    pub window: usize,
    /// At most this many daily backtest origins (the last days before the cutoff).
    pub backtest_days: usize,
    /// Ridge penalty on the (scale-free) linear model coefficients.
    pub lambda: f64,
    /// Training pairs drawn per target hour and horizon block.
    pub pairs_per_target: usize,
    /// Models of the long-horizon block (steps 25-H) train on every
    /// `long_block_stride`-th target hour (cheaper, as accurate); the 1-24 block uses every hour.
    pub long_block_stride: usize,
    /// Weight of backtest origin i (days before the cutoff) in the model choice is
    /// `selection_decay^(i-1)`; 1.0 weighs all backtest days equally.
    pub selection_decay: f64,
    /// Also consider the mean of the two best candidates (forecast combination).
    pub combine: bool,
    /// Multiplier on the backtest residual quantiles (1.0 = use them as measured).
    pub interval_inflation: f64,
    /// Extra widening per week of horizon: step h uses
    /// `interval_inflation * (1 + interval_growth * (h - 1) / 168)`.
    pub interval_growth: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 840,
            backtest_days: 14,
            lambda: 2.0,
            pairs_per_target: 1,
            long_block_stride: 2,
            selection_decay: 0.85,
            combine: true,
            interval_inflation: 1.05,
            interval_growth: 1.0,
        }
    }
}

/// A forecasting method that competes in the backtest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// value 24 h (k days) earlier
    SNaive24,
    /// value 168 h earlier
    SNaive168,
    /// median of the last 3 hours, plus the trend of the daily mean: the mean of the last
    /// 24 hours less that of the same weekday's 24 hours a week before, over those 168
    /// hours, per hour ahead (a filling disk, a growing service); with less than 192 hours
    /// of history, less that of the 24 hours before, over 24. Needs 48 hours.
    Drift,
    /// median of the last 3 hours, held flat (a spike-robust last value)
    Level,
    /// MSE-trained direct linear model (linfa OLS with a ridge penalty) in a target space
    Linear(Space),
}

impl Candidate {
    pub fn name(self) -> &'static str {
        match self {
            Candidate::SNaive24 => "snaive24",
            Candidate::SNaive168 => "snaive168",
            Candidate::Drift => "drift",
            Candidate::Level => "level",
            Candidate::Linear(Space::Raw) => "ridge",
            Candidate::Linear(Space::Log) => "ridge-log",
        }
    }
}

/// Horizon blocks: one pooled direct model per block.
pub fn blocks(horizon: usize) -> Vec<(usize, usize)> {
    if horizon <= 24 {
        vec![(1, horizon)]
    } else {
        vec![(1, 24), (25, horizon)]
    }
}

/// The linear model's features for origin `c` and step `h` (target row `c + h`).
/// Returns false when a needed value is not available.
fn row(fr: &Frame, sp: Space, weekly: bool, c: usize, h: usize, out: &mut Vec<f64>) -> bool {
    let sc = &fr.cols[sp as usize];
    let t = c + h;
    let k = h.div_ceil(24) * 24;
    let j = h.div_ceil(168) * 168;
    if t < k || (weekly && t < j) {
        return false;
    }
    let zc = sc.med3[c];
    let m24 = sc.m24[c];
    let dev = zc - m24;
    let hf = h as f64;
    out.clear();
    out.push(1.0);
    out.push(m24);
    out.push(zc);
    out.push(dev * (-hf / 4.0).exp());
    out.push(dev * (-hf / 24.0).exp());
    out.push(sc.z[t - k]);
    out.push(sc.dp[t - k]);
    for f in fr.fourier.iter().take(N_FOURIER_DAILY) {
        out.push(f[t]);
    }
    if weekly {
        out.push(sc.m168[c]);
        out.push(sc.z[t - j]);
        out.push(sc.wp[t - j]);
        for f in fr.fourier.iter().skip(N_FOURIER_DAILY) {
            out.push(f[t]);
        }
    }
    out.iter().all(|v| v.is_finite())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A fitted direct linear model for one horizon block.
#[derive(Clone, Debug)]
pub struct Linear {
    pub space: Space,
    pub weekly: bool,
    pub coef: Vec<f64>,
}

impl Linear {
    /// Fits on targets `t <= fit_end` (trailing `cfg.window` hours, every `stride`-th),
    /// steps in `block`, minimizing squared error plus a ridge penalty with linfa's least
    /// squares. `data` is the frame and the mask of observed (not gap-filled) hours.
    pub fn fit(
        data: (&Frame, &[bool]),
        (sp, weekly): (Space, bool),
        block: (usize, usize),
        fit_end: usize,
        stride: usize,
        cfg: &Config,
    ) -> Option<Linear> {
        let (fr, observed) = data;
        let (hlo, hhi) = block;
        let span = (hhi - hlo + 1) as u64;
        let t0 = (fit_end + 1).saturating_sub(cfg.window);
        let mut xs: Vec<f64> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        let mut buf = Vec::with_capacity(24);
        let mut p = 0;
        let zc = &fr.cols[sp as usize].z;
        for t in (t0..=fit_end).rev().step_by(stride.max(1)) {
            if !observed[t] {
                continue;
            }
            for r in 0..cfg.pairs_per_target {
                let h = hlo
                    + (splitmix((t as u64) << 8 | r as u64 | (hlo as u64) << 40) % span) as usize;
                if h > t || t - h < 23 {
                    continue;
                }
                if row(fr, sp, weekly, t - h, h, &mut buf) {
                    p = buf.len();
                    xs.extend_from_slice(&buf);
                    ys.push(zc[t]);
                }
            }
        }
        let n = ys.len();
        if p == 0 || n < 3 * p {
            return None;
        }
        // ridge as least squares on rows augmented with sqrt(lambda) * I (intercept unpenalized)
        let lam = cfg.lambda.sqrt();
        for i in 1..p {
            let mut r = vec![0.0; p];
            r[i] = lam;
            xs.extend_from_slice(&r);
            ys.push(0.0);
        }
        let x = Array2::from_shape_vec((ys.len(), p), xs).ok()?;
        let y = Array1::from_vec(ys);
        let model = LinearRegression::new()
            .with_intercept(false)
            .fit(&Dataset::new(x, y))
            .ok()?;
        let coef = model.params().to_vec();
        if coef.iter().all(|c| c.is_finite()) {
            Some(Linear {
                space: sp,
                weekly,
                coef,
            })
        } else {
            None
        }
    }

    /// Point forecast in the series' unit for origin `c`, step `h` (not clipped).
    pub fn predict(&self, fr: &Frame, c: usize, h: usize, buf: &mut Vec<f64>) -> Option<f64> {
        if !row(fr, self.space, self.weekly, c, h, buf) {
            return None;
        }
        let z: f64 = buf.iter().zip(&self.coef).map(|(a, b)| a * b).sum();
        let z = match self.space {
            // keep the back-transform sane on wild extrapolation
            Space::Log => z.min(50.0),
            Space::Raw => z,
        };
        let v = self.space.inverse(z, fr.scale);
        v.is_finite().then_some(v)
    }
}

/// Seasonal-naive forecast for origin `c`, step `h` from the gap-filled history `y`.
pub fn snaive(y: &[f64], period: usize, c: usize, h: usize) -> f64 {
    let t = c + h;
    let k = h.div_ceil(period) * period;
    if t >= k && t - k < y.len() {
        y[t - k]
    } else {
        // not enough history for this period: same hour of the latest day
        let k24 = h.div_ceil(24) * 24;
        if t >= k24 {
            y[t - k24]
        } else {
            y[c]
        }
    }
}

/// Median of the last 3 values up to `c`.
pub fn level(y: &[f64], c: usize) -> f64 {
    let mut v = [y[c], y[c.saturating_sub(1)], y[c.saturating_sub(2)]];
    v.sort_by(f64::total_cmp);
    v[1]
}

/// The hourly slope of the daily mean before `c` (see [`Candidate::Drift`]): the same
/// weekday a week apart, so a weekly pattern reads as no trend, once there are 192 hours;
/// day over day before that (a new install's filling disk). `None` with less than 48
/// hours of history.
pub fn drift(y: &[f64], c: usize) -> Option<f64> {
    let day = |end: usize| y[end - 23..=end].iter().sum::<f64>() / 24.0;
    if c + 1 >= 192 {
        Some((day(c) - day(c - 168)) / 168.0)
    } else if c + 1 >= DRIFT_HISTORY {
        Some((day(c) - day(c - 24)) / 24.0)
    } else {
        None
    }
}

/// Hours of history [`drift`] needs.
pub const DRIFT_HISTORY: usize = 48;

/// Prediction of one candidate, `None` if it cannot predict there.
pub fn predict_candidate(
    cand: Candidate,
    lin: &[Option<Linear>; 2],
    fr: &Frame,
    y: &[f64],
    c: usize,
    h: usize,
    buf: &mut Vec<f64>,
) -> Option<f64> {
    match cand {
        Candidate::SNaive24 => Some(snaive(y, 24, c, h)),
        Candidate::SNaive168 => Some(snaive(y, 168, c, h)),
        Candidate::Level => Some(level(y, c)),
        Candidate::Drift => drift(y, c).map(|slope| level(y, c) + slope * h as f64),
        Candidate::Linear(sp) => lin[sp as usize].as_ref()?.predict(fr, c, h, buf),
    }
    .map(|v| v.max(0.0))
}

/// Empirical quantile (linear interpolation) of a sorted slice.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let w = pos - lo as f64;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}

/// Split-conformal quantile of a sorted sample: the order statistic at rank
/// ceil((n + 1) p) for upper and floor((n + 1) p) for lower quantiles, clamped to the sample.
/// Wider than the plain empirical quantile for small samples, as it should be.
pub fn conformal_quantile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let r = (n + 1) as f64 * p;
    let k = if p >= 0.5 { r.ceil() } else { r.floor() } as isize;
    sorted[(k - 1).clamp(0, n as isize - 1) as usize]
}

/// Builds the frame for a history (used by `forecast`).
pub fn frame(y: &[f64], scale: f64, phase0: i64, horizon: usize) -> anyhow::Result<Frame> {
    features::build(y, scale, phase0, horizon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformal_quantile_uses_finite_sample_ranks() {
        let s: Vec<f64> = (1..=9).map(f64::from).collect();
        // n = 9: upper 90 % -> rank ceil(10 * 0.9) = 9, lower 10 % -> rank floor(1.0) = 1
        assert_eq!(conformal_quantile(&s, 0.90), 9.0);
        assert_eq!(conformal_quantile(&s, 0.10), 1.0);
        // 75 % -> rank ceil(7.5) = 8; 25 % -> rank floor(2.5) = 2
        assert_eq!(conformal_quantile(&s, 0.75), 8.0);
        assert_eq!(conformal_quantile(&s, 0.25), 2.0);
        // beyond the sample: clamped to its extremes
        assert_eq!(conformal_quantile(&s, 0.999), 9.0);
        assert_eq!(conformal_quantile(&s, 0.001), 1.0);
        assert_eq!(conformal_quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn seasonal_naive_and_level_look_back_correctly() {
        let y: Vec<f64> = (0..400).map(f64::from).collect();
        // origin 399, step 1 -> target 400 -> same hour yesterday = 376, last week = 232
        assert_eq!(snaive(&y, 24, 399, 1), 376.0);
        assert_eq!(snaive(&y, 24, 399, 25), 376.0);
        assert_eq!(snaive(&y, 168, 399, 1), 232.0);
        // not enough history for a week: falls back to the daily lag
        assert_eq!(snaive(&y[..100], 168, 99, 1), 76.0);
        let spiky = [5.0, 5.0, 1000.0, 5.0, 5.0];
        assert_eq!(level(&spiky, 2), 5.0);
        assert_eq!(level(&spiky, 4), 5.0);
    }
}
