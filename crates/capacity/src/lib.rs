//! Rackwatch capacity recommender.
//!
//! From a pool's GPU demand history (5-minute or hourly samples, gaps allowed) it decides
//! how many GPUs (or whole hosts) to hold: for the next hour ([`next_hour`], an elastic
//! pool), for every hour of the coming week ([`plan`] with lead 0) and for a week that
//! starts a lead time ahead ([`plan`] with `lead_hours`, procurement or reservations).
//! [`recommend`] does all three at once. The price of an unserved GPU-hour, in idle
//! GPU-hours, is a setting (default 20: the cost-optimal flat capacity is then the
//! 20/21 = 95.2 % quantile of demand).
//!
//! Every decision is chosen per pool by backtest on the pool's own past and carries that
//! backtest as [`Backtest`] evidence next to the best simple baseline's cost on the same
//! hours. [`exhaustion`] fits the pool's growth and says when it outgrows a capacity.
//! [`eval()`] runs the offline benchmark and writes the shared scorer's CSV.
//!
//! Method and measured costs: `docs/capacity.md`.

#![warn(missing_docs)]

mod autoscale;
mod cost;
mod error;
mod eval;
mod exhaust;
mod grid;
mod plan;

pub use cost::CostSummary;
pub use error::CapacityError;
pub use eval::{eval, eval_with, score_predictions, EvalSummary, SeriesScore};
pub use exhaust::{exhaustion, Exhaustion, Trend, TREND_DAYS};

use chrono::{DateTime, Duration, Utc};
use grid::Grid;

/// Spacing of the demand samples, in minutes (must divide an hour).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step(u32);

impl Step {
    /// 5-minute samples (the rollup the capacity page reads).
    pub const FIVE_MINUTES: Step = Step(5);
    /// Hourly samples (hourly peaks: each value is taken as the demand of the whole hour).
    pub const HOUR: Step = Step(60);

    /// A step of `minutes`; checked when used (it must divide 60).
    pub const fn minutes_of(minutes: u32) -> Step {
        Step(minutes)
    }

    /// Minutes between samples.
    pub const fn minutes(self) -> u32 {
        self.0
    }
}

/// What to do when a lead-time plan is asked from less history than the lead time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortHistory {
    /// return [`CapacityError::LeadLongerThanHistory`] (the product default)
    Error,
    /// plan anyway from the history there is, with the default candidate and the lead
    /// margin (the benchmark's week-before tasks have 2-3 days of history for a 7-day lead)
    Extrapolate,
}

/// How a weekly-plan candidate computes its level (always the P/(P+1) quantile of demand).
#[derive(Clone, Debug, PartialEq)]
pub enum PlanMethod {
    /// decaying histogram (Autopilot / VPA style): every sample of the last `window_days`
    /// weighted 2^(-age / half-life)
    Decayed {
        /// half-life of a sample's weight, hours
        half_life_hours: f64,
        /// days of samples in the histogram
        window_days: u32,
    },
    /// equally weighted samples of the last `days`
    Window {
        /// days of samples
        days: u32,
    },
    /// the highest sample of the last `days` (moving-window max)
    Peak {
        /// days of samples
        days: u32,
    },
    /// hour-of-day schedule: each clock hour gets the quantile of the samples within ±1 h
    /// of it over the last `days` (a night/day schedule for a diurnal pool)
    HourOfDay {
        /// days of samples per clock hour
        days: u32,
    },
    /// the decayed 24 h level plus the Theil–Sen growth of the daily quantiles over the
    /// last `days`, extrapolated to the middle of the planned hours (growth only)
    Trend {
        /// days of daily quantiles in the fit
        days: u32,
    },
}

impl PlanMethod {
    /// Short name shown with a plan, e.g. `decayed(hl=24h,8d)`.
    pub fn name(&self) -> String {
        match self {
            PlanMethod::Decayed {
                half_life_hours,
                window_days,
            } => format!("decayed(hl={half_life_hours}h,{window_days}d)"),
            PlanMethod::Window { days } => format!("window({days}d)"),
            PlanMethod::Peak { days } => format!("peak({days}d)"),
            PlanMethod::HourOfDay { days } => format!("hour-of-day({days}d)"),
            PlanMethod::Trend { days } => format!("trend({days}d)"),
        }
    }
}

/// Settings of the recommender. [`Settings::default`] holds the documented defaults; each
/// was chosen by cross-validation across the two dev weeks (`docs/capacity.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// price of one unserved GPU-hour in idle GPU-hours (> 0; default 20)
    pub price: f64,
    /// GPUs per host: capacities are rounded up to whole hosts (default 1 = whole GPUs)
    pub host_size: u32,
    /// lead time of [`Recommendation::lead_plan`], hours (default 168)
    pub lead_hours: u32,
    /// days of the pool's past that recalibrate and rank the next-hour candidates (default 7)
    pub autoscale_window_days: u32,
    /// how many of the best-ranked next-hour candidates are averaged (default 4; both weeks
    /// pick 7 days × 4 from a 4 × 6 grid, every cell within 0.170-0.183 / 0.215-0.231)
    pub autoscale_ensemble: usize,
    /// relative safety margin of a weekly plan decided now (default 0.20 = +20 %; chosen
    /// across 11 overlapping pseudo-weeks: 0.10 → 0.789, 0.15 → 0.787, 0.20 → 0.770 mean cost)
    pub plan_margin: f64,
    /// extra relative margin per week of lead time (default 0.20: a 7-day-ahead plan holds
    /// +40 %; total 0.3 → 1.039, 0.4 → 0.979, 0.5 → 1.007 mean cost over 10 pseudo-weeks)
    pub lead_margin_per_week: f64,
    /// plan candidates, the first is the default when no backtest is possible
    pub plan_methods: Vec<PlanMethod>,
    /// days of past replayed as evidence, and plan backtest origins (default 14)
    pub evidence_days: u32,
    /// lead-time plans from less history than the lead (default: error)
    pub short_history: ShortHistory,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            price: 20.0,
            host_size: 1,
            lead_hours: 168,
            autoscale_window_days: 7,
            autoscale_ensemble: 4,
            plan_margin: 0.20,
            lead_margin_per_week: 0.20,
            plan_methods: vec![
                PlanMethod::Decayed {
                    half_life_hours: 24.0,
                    window_days: 8,
                },
                PlanMethod::Window { days: 7 },
                PlanMethod::Window { days: 28 },
                PlanMethod::HourOfDay { days: 14 },
            ],
            evidence_days: 14,
            short_history: ShortHistory::Error,
        }
    }
}

impl Settings {
    /// The demand quantile the price makes cost-optimal for a flat capacity: P / (P + 1).
    pub fn quantile(&self) -> f64 {
        self.price / (self.price + 1.0)
    }

    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), CapacityError> {
        if !self.price.is_finite() || self.price <= 0.0 {
            return Err(CapacityError::BadPrice(self.price));
        }
        if self.host_size == 0 {
            return Err(CapacityError::ZeroHostSize);
        }
        let bad = |name, value: f64, why| Err(CapacityError::BadSetting { name, value, why });
        if self.autoscale_window_days == 0 || self.autoscale_window_days > 28 {
            return bad(
                "autoscale_window_days",
                f64::from(self.autoscale_window_days),
                "must be 1 ..= 28 days",
            );
        }
        if self.autoscale_ensemble == 0 || self.autoscale_ensemble > 18 {
            return bad(
                "autoscale_ensemble",
                self.autoscale_ensemble as f64,
                "must be 1 ..= 18 candidates",
            );
        }
        for (name, v) in [
            ("plan_margin", self.plan_margin),
            ("lead_margin_per_week", self.lead_margin_per_week),
        ] {
            if !v.is_finite() || !(0.0..=2.0).contains(&v) {
                return bad(name, v, "must be a fraction in 0 ..= 2 (0.1 = +10 %)");
            }
        }
        if self.plan_methods.is_empty() {
            return bad("plan_methods", 0.0, "needs at least one candidate");
        }
        for m in &self.plan_methods {
            let ok = match *m {
                PlanMethod::Decayed {
                    half_life_hours,
                    window_days,
                } => half_life_hours.is_finite() && half_life_hours > 0.0 && window_days > 0,
                PlanMethod::Window { days }
                | PlanMethod::Peak { days }
                | PlanMethod::HourOfDay { days } => days > 0,
                PlanMethod::Trend { days } => days >= 4,
            };
            if !ok {
                return bad(
                    "plan_methods",
                    0.0,
                    "windows need >= 1 day (trend >= 4), half-lives > 0 h",
                );
            }
        }
        if self.evidence_days == 0 || self.evidence_days > 28 {
            return bad(
                "evidence_days",
                f64::from(self.evidence_days),
                "must be 1 ..= 28 days",
            );
        }
        Ok(())
    }
}

/// A backtest of a method on the pool's own past, next to a simple baseline on the same
/// hours: what the recommendation would have cost, shown beside it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backtest {
    /// the method replayed
    pub method: String,
    /// its cost on the replayed hours
    pub ours: CostSummary,
    /// the baseline replayed on the same hours
    pub baseline: String,
    /// the baseline's cost
    pub baseline_cost: CostSummary,
}

/// One track's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// first hour covered
    pub start: DateTime<Utc>,
    /// capacity of each hour from `start`, GPUs (multiples of the host size)
    pub capacities: Vec<u32>,
    /// the method the backtest chose
    pub method: String,
    /// what it would have cost on the pool's past
    pub evidence: Backtest,
}

/// Evidence of all three decisions of a [`Recommendation`].
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// the next-hour ensemble replayed over the last `evidence_days` (recalibrated weekly)
    /// vs the 24-hour moving-window max
    pub autoscale: Backtest,
    /// the chosen weekly plan from daily origins vs VPA p95 × 1.15
    pub plan: Backtest,
    /// the same for the lead-time plan
    pub lead_plan: Backtest,
}

/// Names of the methods chosen for each decision.
#[derive(Clone, Debug, PartialEq)]
pub struct ChosenMethods {
    /// next-hour ensemble
    pub autoscale: String,
    /// weekly plan
    pub plan: String,
    /// lead-time plan
    pub lead_plan: String,
}

/// All decisions for one pool at one time.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    /// the decision time, on the sample grid (end of the last sample that starts before now)
    pub now: DateTime<Utc>,
    /// GPUs to hold for the next hour
    pub next_hour: u32,
    /// GPUs for each of the 168 hours from `now`
    pub week_schedule: Vec<u32>,
    /// first hour of the lead-time plan (`now` + `lead_hours`)
    pub lead_start: DateTime<Utc>,
    /// GPUs for each of the 168 hours from `lead_start`
    pub lead_plan: Vec<u32>,
    /// the methods the backtests chose
    pub chosen_method: ChosenMethods,
    /// the backtests behind them
    pub evidence: Evidence,
}

/// Capacity for the hour after `now`, from the samples that start before `now`.
///
/// `history[i]` is the demand (GPUs) of the sample starting at `start + i × step`; `None`
/// is a gap. Samples at or after `now` are ignored, so a decision never sees its future.
pub fn next_hour(
    history: &[Option<f64>],
    step: Step,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Result<Decision, CapacityError> {
    settings.validate()?;
    let g = Grid::new(history, step, start, now)?;
    let bv = autoscale::BaseValues::new(&g);
    let (cap, method, members) = autoscale::decide(&g, &bv, settings);
    let evidence = autoscale::evidence(&g, &bv, &members, &method, settings);
    Ok(Decision {
        start: g.end,
        capacities: vec![cap],
        method,
        evidence,
    })
}

/// Capacity for each of `hours` hours starting `lead_hours` after `now` (a weekly plan:
/// `hours` = 168; `lead_hours` = 0 plans from now).
///
/// Errors with [`CapacityError::LeadLongerThanHistory`] when the history before `now` is
/// shorter than the lead, unless `settings.short_history` says to extrapolate.
pub fn plan(
    history: &[Option<f64>],
    step: Step,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    lead_hours: u32,
    hours: usize,
    settings: &Settings,
) -> Result<Decision, CapacityError> {
    settings.validate()?;
    if hours == 0 || hours > 8784 {
        return Err(CapacityError::BadHorizon(hours));
    }
    let g = Grid::new(history, step, start, now)?;
    let lead = lead_hours as usize;
    if lead > g.hours && settings.short_history == ShortHistory::Error {
        return Err(CapacityError::LeadLongerThanHistory {
            lead_hours,
            history_hours: g.hours,
        });
    }
    let (capacities, method, evidence) = plan::decide(&g, lead, hours, settings);
    Ok(Decision {
        start: g.end + Duration::hours(lead as i64),
        capacities,
        method,
        evidence,
    })
}

/// Next hour, the 168-hour week from now and the 168-hour week from now + lead, with the
/// methods chosen and their backtests.
pub fn recommend(
    history: &[Option<f64>],
    step: Step,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Result<Recommendation, CapacityError> {
    let nh = next_hour(history, step, start, now, settings)?;
    let week = plan(history, step, start, now, 0, 168, settings)?;
    let lead = plan(
        history,
        step,
        start,
        now,
        settings.lead_hours,
        168,
        settings,
    )?;
    Ok(Recommendation {
        now: nh.start,
        next_hour: nh.capacities[0],
        week_schedule: week.capacities,
        lead_start: lead.start,
        lead_plan: lead.capacities,
        chosen_method: ChosenMethods {
            autoscale: nh.method,
            plan: week.method,
            lead_plan: lead.method,
        },
        evidence: Evidence {
            autoscale: nh.evidence,
            plan: week.evidence,
            lead_plan: lead.evidence,
        },
    })
}
