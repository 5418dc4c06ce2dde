//! The demand history as the recommender sees it: a regular grid of samples that ends at
//! the decision time, cut into whole hours counted back from there, gaps as NaN.

use crate::{CapacityError, Step};
use chrono::{DateTime, Duration, Timelike, Utc};

/// Longest history the recommender reads, in hours (6 weeks). Every candidate looks back at
/// most 4 weeks plus a week of lead-time backtests; older samples only cost time.
pub(crate) const MAX_HOURS: usize = 42 * 24;

/// Demand before the decision time on whole hours.
#[derive(Clone, Debug)]
pub(crate) struct Grid {
    /// samples, oldest first, `hours * sph` of them; NaN marks a gap
    pub x: Vec<f64>,
    /// samples per hour
    pub sph: usize,
    /// whole hours of history; hour `hours - 1` ends at the decision time
    pub hours: usize,
    /// hour of day (UTC clock of the timestamps) at which hour 0 starts
    pub hod0: usize,
    /// mean of the observed samples: the scale of normalized costs
    pub mean: f64,
    /// end of the last hour (the decision time, or the end of the slot that straddles it)
    pub end: DateTime<Utc>,
}

impl Grid {
    /// Builds the grid from the samples that start before `now`, after validating them.
    /// Samples after `now` are never read, which makes every decision causal by construction.
    pub fn new(
        history: &[Option<f64>],
        step: Step,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Grid, CapacityError> {
        let minutes = step.minutes();
        if minutes == 0 || 60 % minutes != 0 {
            return Err(CapacityError::BadStep(minutes));
        }
        if now < start {
            return Err(CapacityError::NowBeforeStart { now, start });
        }
        let sph = (60 / minutes) as usize;
        let step_s = i64::from(minutes) * 60;
        // samples starting strictly before `now`
        let span_s = (now - start).num_seconds();
        let n_use = ((span_s + step_s - 1) / step_s).max(0) as usize;
        if n_use == 0 || history.is_empty() {
            return Err(CapacityError::EmptyHistory { now });
        }
        let hours = (n_use / sph).min(MAX_HOURS);
        if hours == 0 {
            return Err(CapacityError::ShortHistory {
                minutes: n_use as u32 * minutes,
                now,
            });
        }
        let first = n_use - hours * sph;
        let mut x = Vec::with_capacity(hours * sph);
        let (mut sum, mut cnt) = (0.0, 0usize);
        for i in first..n_use {
            let v = match history.get(i).copied().flatten() {
                Some(v) if !v.is_finite() || v < 0.0 => {
                    return Err(CapacityError::BadValue { index: i, value: v })
                }
                Some(v) => {
                    sum += v;
                    cnt += 1;
                    v
                }
                None => f64::NAN,
            };
            x.push(v);
        }
        // samples before the grid are validated too: a bad value anywhere is an error
        for (i, v) in history.iter().enumerate().take(first) {
            if let Some(v) = v {
                if !v.is_finite() || *v < 0.0 {
                    return Err(CapacityError::BadValue {
                        index: i,
                        value: *v,
                    });
                }
            }
        }
        if cnt == 0 {
            return Err(CapacityError::NoObservations { slots: n_use, now });
        }
        let end = start + Duration::seconds(n_use as i64 * step_s);
        let h0 = end - Duration::hours(hours as i64);
        Ok(Grid {
            x,
            sph,
            hours,
            hod0: h0.hour() as usize,
            mean: sum / cnt as f64,
            end,
        })
    }

    /// The samples of hour `h`.
    pub fn hour(&self, h: usize) -> &[f64] {
        &self.x[h * self.sph..(h + 1) * self.sph]
    }

    /// Hour of day of hour `h` (may be past the end of the history).
    pub fn hod(&self, h: usize) -> usize {
        (self.hod0 + h) % 24
    }

    /// Peak of each hour (NaN where the hour has no observation).
    pub fn hour_max(&self) -> Vec<f64> {
        (0..self.hours)
            .map(|h| {
                self.hour(h)
                    .iter()
                    .filter(|v| !v.is_nan())
                    .fold(f64::NAN, |m, &v| if m.is_nan() || v > m { v } else { m })
            })
            .collect()
    }
}

/// Linear-interpolation quantile (numpy's default) of `v`, reordering it. NaN if empty.
pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = pos - lo as f64;
    let (_, a, rest) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let a = *a;
    if frac <= 0.0 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().copied().fold(f64::INFINITY, f64::min);
    a + frac * (b - a)
}

/// Lower weighted quantile: the smallest value whose cumulative weight reaches `q` of the
/// total (the rule of Autopilot's and VPA's decaying histograms). NaN if empty.
pub(crate) fn weighted_quantile(v: &mut [(f64, f64)], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = v.iter().map(|p| p.1).sum();
    let target = q * total;
    let mut acc = 0.0;
    for &(x, w) in v.iter() {
        acc += w;
        if acc >= target {
            return x;
        }
    }
    v[v.len() - 1].0
}

/// Rounds a capacity up to whole hosts of `host` GPUs (never negative). A hair of
/// tolerance keeps 12.000001 at 12.
pub(crate) fn round_up(v: f64, host: u32) -> u32 {
    if !v.is_finite() || v <= 0.0 {
        return 0;
    }
    let h = f64::from(host.max(1));
    let n = ((v - 1e-6) / h).ceil().max(0.0);
    (n * h).min(f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_numpy_linear() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0, 10.0];
        // numpy.quantile([1,2,3,4,10], 0.9) = 4 + 0.6 * 6 = 7.6
        assert!((quantile(&mut v, 0.9) - 7.6).abs() < 1e-12);
        let mut v = vec![5.0];
        assert_eq!(quantile(&mut v, 0.95), 5.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn weighted_quantile_is_lower() {
        let mut v = vec![(1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0)];
        assert_eq!(weighted_quantile(&mut v, 0.5), 2.0);
        assert_eq!(weighted_quantile(&mut v, 0.51), 3.0);
        let mut v = vec![(1.0, 0.1), (9.0, 0.9)];
        assert_eq!(weighted_quantile(&mut v, 0.2), 9.0);
    }

    #[test]
    fn rounding_to_hosts() {
        assert_eq!(round_up(12.0, 1), 12);
        assert_eq!(round_up(12.000_000_1, 1), 12);
        assert_eq!(round_up(12.01, 1), 13);
        assert_eq!(round_up(12.01, 8), 16);
        assert_eq!(round_up(16.0, 8), 16);
        assert_eq!(round_up(-3.0, 8), 0);
        assert_eq!(round_up(f64::NAN, 1), 0);
    }
}
