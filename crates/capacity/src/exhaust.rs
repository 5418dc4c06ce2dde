//! When a growing pool runs out: "pool X needs N more GPUs by date D".

use crate::grid::{round_up, Grid};
use crate::plan::{daily_quantiles, theil_sen};
use crate::{CapacityError, Settings, Step};
use chrono::{DateTime, Duration, Utc};

/// Days of daily peaks the growth trend is fitted on.
pub const TREND_DAYS: usize = 14;

/// The fitted growth of a pool's daily peak demand and where it crosses a capacity.
#[derive(Clone, Debug, PartialEq)]
pub struct Exhaustion {
    /// the capacity checked, GPUs
    pub capacity: f64,
    /// the trend's daily peak (P/(P+1) quantile of each day) at the decision time, GPUs
    pub level_now: f64,
    /// fitted growth of the daily peak: relative per day for `Trend::Exponential`, GPUs per
    /// day for `Trend::Linear`
    pub growth_per_day: f64,
    /// the growth as a fraction of the level per day, whichever trend was fitted: equal to
    /// `growth_per_day` for `Trend::Exponential`; for `Trend::Linear`, GPUs per day over the
    /// mean of the fitted daily peaks (0 when every peak was 0). What to show as "%/day"
    /// and to compare across pools.
    pub relative_growth_per_day: f64,
    /// which trend was fitted
    pub trend: Trend,
    /// first time the trend reaches the capacity within the horizon; `None` if it does not
    pub date: Option<DateTime<Utc>>,
    /// days of history the trend was fitted on
    pub days_fitted: usize,
    /// the decision time the trend is measured from
    pub now: DateTime<Utc>,
    /// GPUs per host used by [`Exhaustion::needed_by`]
    pub host_size: u32,
}

/// Shape of the growth trend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trend {
    /// log-linear: the daily peak grows by a constant fraction per day (all peaks > 0)
    Exponential,
    /// linear: a constant number of GPUs per day (used when some daily peak is 0)
    Linear,
}

impl Exhaustion {
    /// The trend's daily peak at time `at`, GPUs.
    pub fn level_at(&self, at: DateTime<Utc>) -> f64 {
        let days = (at - self.now).num_seconds() as f64 / 86_400.0;
        match self.trend {
            Trend::Exponential => self.level_now * (1.0 + self.growth_per_day).powf(days),
            Trend::Linear => (self.level_now + self.growth_per_day * days).max(0.0),
        }
    }

    /// GPUs to add so that the capacity still covers the trend at `by` (0 if it does),
    /// rounded up to whole hosts: "the pool needs N more GPUs by date D".
    pub fn needed_by(&self, by: DateTime<Utc>) -> u32 {
        round_up(self.level_at(by) - self.capacity, self.host_size)
    }
}

/// Fits the growth of the pool's daily peak demand over the last [`TREND_DAYS`] days and
/// finds when it first reaches `capacity`, looking at most `horizon_days` ahead.
///
/// The daily peak is the P/(P+1) quantile of each day's samples (the level a cost-optimal
/// flat capacity holds). The trend is a Theil–Sen fit, robust to a burst day, on the log of
/// the daily peaks (exponential growth, e.g. 2 %/day) or on the peaks themselves when a day
/// had zero demand. Needs at least 4 days with a quarter of their samples observed.
pub fn exhaustion(
    history: &[Option<f64>],
    step: Step,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    capacity: f64,
    horizon_days: u32,
    settings: &Settings,
) -> Result<Exhaustion, CapacityError> {
    settings.validate()?;
    if !capacity.is_finite() || capacity < 0.0 {
        return Err(CapacityError::BadSetting {
            name: "capacity",
            value: capacity,
            why: "must be a finite number of GPUs >= 0",
        });
    }
    let g = Grid::new(history, step, start, now)?;
    let pts = daily_quantiles(&g, g.hours, settings.quantile(), TREND_DAYS);
    if pts.len() < 4 {
        return Err(CapacityError::BadSetting {
            name: "history",
            value: pts.len() as f64,
            why: "a growth trend needs at least 4 days with a quarter of their samples observed",
        });
    }
    let positive = pts.iter().all(|p| p.1 > 0.0);
    let mean_peak = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let (trend, level_now, growth) = if positive {
        let logs: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1.ln())).collect();
        let (b, a) = theil_sen(&logs, 4).unwrap_or((0.0, logs[logs.len() - 1].1));
        (Trend::Exponential, a.exp(), b.exp() - 1.0)
    } else {
        let (b, a) = theil_sen(&pts, 4).unwrap_or((0.0, pts[pts.len() - 1].1));
        (Trend::Linear, a.max(0.0), b)
    };
    let mut ex = Exhaustion {
        capacity,
        level_now,
        growth_per_day: growth,
        relative_growth_per_day: match trend {
            Trend::Exponential => growth,
            Trend::Linear if mean_peak > 0.0 => growth / mean_peak,
            Trend::Linear => 0.0,
        },
        trend,
        date: None,
        days_fitted: pts.len(),
        now: g.end,
        host_size: settings.host_size,
    };
    let days = if capacity <= 0.0 && level_now <= 0.0 {
        // No GPUs and no demand: nothing runs out.
        None
    } else if level_now >= capacity {
        Some(0.0)
    } else if growth <= 0.0 {
        None
    } else {
        match trend {
            Trend::Exponential => Some((capacity / level_now).ln() / (1.0 + growth).ln()),
            Trend::Linear => Some((capacity - level_now) / growth),
        }
    };
    ex.date = days
        .filter(|d| d.is_finite() && *d <= f64::from(horizon_days))
        .map(|d| g.end + Duration::seconds((d * 86_400.0).round() as i64));
    Ok(ex)
}
