//! Label-free alert threshold: peaks over threshold (extreme value theory).
//!
//! The excesses of the training scores over a high empirical quantile `u` are fitted with a
//! generalized Pareto distribution (probability-weighted moments, Hosking & Wallis 1987); the
//! alert threshold is the score exceeded with probability `risk` under that fit.

use serde::{Deserialize, Serialize};

/// A fitted peaks-over-threshold model and the threshold it implies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PotThreshold {
    /// Initial threshold `u` (empirical quantile of the calibration scores).
    pub init: f64,
    /// GPD scale.
    pub sigma: f64,
    /// GPD shape (ξ > 0: heavy tail, ξ < 0: bounded tail).
    pub xi: f64,
    /// Calibration scores seen and how many exceeded `u`.
    pub n: usize,
    pub n_peaks: usize,
    /// Target exceedance probability.
    pub risk: f64,
    /// The alert threshold.
    pub threshold: f64,
}

impl PotThreshold {
    /// Fit on calibration scores (typically the detector's scores on its training data).
    /// `init_quantile` (e.g. 0.98) sets `u`, `risk` (e.g. 1e-3) the target exceedance rate.
    pub fn fit(scores: &[f32], init_quantile: f64, risk: f64) -> Self {
        let mut s: Vec<f64> = scores
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| v as f64)
            .collect();
        s.sort_by(|a, b| a.total_cmp(b));
        Self::fit_sorted(s.len(), |i| s[i], init_quantile, risk)
    }

    /// [`PotThreshold::fit`] of `below` copies of `upper[0]` followed by `upper` (finite,
    /// ascending): the sorted calibration scores when only the upper tail is known and the
    /// `below` scores under it only count. The same fit, bit for bit, without building them.
    pub fn fit_upper(below: usize, upper: &[f32], init_quantile: f64, risk: f64) -> Self {
        let first = upper.first().copied().unwrap_or(0.0) as f64;
        let at = |i: usize| {
            if i < below {
                first
            } else {
                upper[i - below] as f64
            }
        };
        Self::fit_sorted(below + upper.len(), at, init_quantile, risk)
    }

    /// The fit on `n` sorted finite scores, `s(i)` the i-th.
    fn fit_sorted(n: usize, s: impl Fn(usize) -> f64, init_quantile: f64, risk: f64) -> Self {
        let u = if n == 0 {
            0.0
        } else {
            let pos = init_quantile.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            s(lo) + (s(hi) - s(lo)) * (pos - lo as f64)
        };
        // The peaks are the scores above u: a suffix of the sorted scores.
        let first_peak = (0..n).rev().take_while(|&i| s(i) > u).last().unwrap_or(n);
        let peaks: Vec<f64> = (first_peak..n).map(|i| s(i) - u).collect();
        let np = peaks.len();
        let (mut sigma, mut xi) = (0.0, 0.0);
        if np >= 3 {
            (sigma, xi) = gpd_pwm(&peaks);
        } else if np > 0 {
            sigma = peaks.iter().sum::<f64>() / np as f64;
        }
        let threshold = if np == 0 || n == 0 {
            if n == 0 {
                0.0
            } else {
                s(n - 1)
            }
        } else {
            let r = (risk * n as f64 / np as f64).min(1.0);
            if xi.abs() < 1e-6 {
                u - sigma * r.ln()
            } else {
                u + sigma / xi * (r.powf(-xi) - 1.0)
            }
        };
        Self {
            init: u,
            sigma,
            xi,
            n,
            n_peaks: np,
            risk,
            threshold,
        }
    }
}

/// Generalized Pareto fit by probability-weighted moments (Hosking & Wallis 1987) to excesses
/// sorted ascending: `(sigma, xi)`, `xi` clamped to [−0.9, 0.9].
pub(crate) fn gpd_pwm(peaks: &[f64]) -> (f64, f64) {
    let m = peaks.len() as f64;
    let a0 = peaks.iter().sum::<f64>() / m;
    let a1 = peaks
        .iter()
        .enumerate()
        .map(|(i, y)| (1.0 - (i as f64 + 1.0 - 0.35) / m) * y)
        .sum::<f64>()
        / m;
    let den = a0 - 2.0 * a1;
    let (mut sigma, mut xi) = if den > 1e-12 {
        (2.0 * a0 * a1 / den, (2.0 - a0 / den).clamp(-0.9, 0.9))
    } else {
        (a0, 0.0)
    };
    if !(sigma.is_finite() && sigma > 0.0) {
        sigma = a0.max(1e-12);
        xi = 0.0;
    }
    (sigma, xi)
}
