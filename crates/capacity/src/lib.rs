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
    /// plan anyway from the history there is: the level is the peak of that history (a
    /// conservative level when no backtest is possible), plus the usual margin for the
    /// lead (the benchmark's week-before tasks have 2-3 days of history for a 7-day lead)
    Extrapolate,
}

/// What a plan's safety margin is a fraction of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginBasis {
    /// the plan's own level: capacity = level × (1 + margin) (a bursty pool whose 95 % level
    /// is twice its mean pays twice the margin in GPUs)
    Level,
    /// the pool's mean demand over the 7 days before the decision: capacity = level +
    /// margin × mean. The mean is the unit the cost is counted in; a steady service gets
    /// the same margin as with `Level`, a bursty training pool a smaller one relative to
    /// its peaks
    MeanDemand,
}

/// How a plan's margin grows with the distance from the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginGrowth {
    /// one margin for the whole plan, from the distance to its first hour
    PerPlan,
    /// each planned hour its own, from that hour's distance: the risk of a level shift
    /// grows through the week
    PerHour,
}

/// A plan's safety margin: capacity = level + f × `basis` (or level × (1 + f)), with
/// f = `at_decision` + `per_week` × (hours from the decision) / 168, the hours counted to
/// the plan's first hour ([`MarginGrowth::PerPlan`]) or to each planned hour
/// ([`MarginGrowth::PerHour`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MarginRule {
    /// what the fraction is of
    pub basis: MarginBasis,
    /// one fraction per plan or one per planned hour
    pub growth: MarginGrowth,
    /// fraction at the decision time (0 ..= 2; 0.2 = +20 %)
    pub at_decision: f64,
    /// fraction added per week of distance from the decision (0 ..= 2)
    pub per_week: f64,
}

impl MarginRule {
    /// The default margin of a weekly plan decided now: the plan's level × 1.20, the same
    /// for every hour. A regular pool then holds its demand + 20 % all week (40 GPUs by day
    /// and 16 at night on hosts of 8: 48 and 24, within one host); a margin growing through
    /// the week in units of the mean demand holds 56 by day late in the week. Held out it
    /// scores 0.715-0.796 on the dev week and 0.784-0.846 on the week before
    /// (`docs/capacity.md`, "Cross-validation").
    pub const PLAN: MarginRule = MarginRule {
        basis: MarginBasis::Level,
        growth: MarginGrowth::PerPlan,
        at_decision: 0.20,
        per_week: 0.0,
    };

    /// The default margin of a lead-time plan: 0.20 × the pool's mean demand over the 7
    /// days before the decision plus 0.10 per week of distance, per planned hour (+30 % …
    /// +40 % of the mean through a week that starts 7 days ahead). Held out 0.686-0.743 on
    /// the dev week and 0.889-0.970 on the week before, against 0.905 / 1.027 for the first
    /// release's level × 1.4.
    pub const LEAD_PLAN: MarginRule = MarginRule {
        basis: MarginBasis::MeanDemand,
        growth: MarginGrowth::PerHour,
        at_decision: 0.20,
        per_week: 0.10,
    };

    /// The fraction for planned hour `k` (0-based) of a plan whose first hour is
    /// `lead_hours` after the decision.
    pub fn fraction(&self, lead_hours: usize, k: usize) -> f64 {
        let ahead = match self.growth {
            MarginGrowth::PerPlan => lead_hours,
            MarginGrowth::PerHour => lead_hours + k,
        };
        self.at_decision + self.per_week * ahead as f64 / 168.0
    }

    fn validate(
        &self,
        at_name: &'static str,
        week_name: &'static str,
    ) -> Result<(), CapacityError> {
        for (name, value) in [(at_name, self.at_decision), (week_name, self.per_week)] {
            if !value.is_finite() || !(0.0..=2.0).contains(&value) {
                return Err(CapacityError::BadSetting {
                    name,
                    value,
                    why: "must be a fraction in 0 ..= 2 (0.1 = +10 %)",
                });
            }
        }
        Ok(())
    }
}

/// Which past plans choose a lead-time plan's level. (A plan decided now is always
/// backtested from plans decided at the start of their week.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeadBacktest {
    /// only plans decided with the same lead: from 10 days of history a 7-day lead has one
    /// such origin, its week cut to a day by the decision time
    SameLead,
    /// also plans decided at the start of their week (lead 0), every candidate level
    /// carrying the margin it will hold: `lead_plan_margin` at the plan's own lead (the
    /// default; held out on the dev week 0.686 / 0.743 / 0.694 against 0.745 / 0.801 / 0.751
    /// for `SameLead` and 0.692 / 0.750 / 0.700 for the two others)
    PooledAsHeld,
    /// also lead-0 plans, carrying `lead_plan_margin` at their own distance (lead 0)
    PooledAtOrigin,
    /// also lead-0 plans, carrying `plan_margin`: the weekly plans decided then
    PooledAsDecided,
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

/// Settings of the recommender. [`Settings::default`] holds the documented defaults; the
/// next-hour ones were chosen across the two dev weeks, the plan ones over 11 pseudo-weeks
/// (`docs/capacity.md`, "Cross-validation", with their held-out figures). A weekly plan
/// decided now and a lead-time plan have separate margin rules.
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
    /// margin of a weekly plan decided now, `plan(.., lead_hours = 0, ..)` (default
    /// [`MarginRule::PLAN`]: level × 1.20 for every hour)
    pub plan_margin: MarginRule,
    /// margin of a plan that starts `lead_hours > 0` after the decision (default
    /// [`MarginRule::LEAD_PLAN`]: level + (0.20 + 0.10 × weeks ahead) × mean demand, per
    /// hour)
    pub lead_plan_margin: MarginRule,
    /// which past plans choose a lead-time plan's level (default
    /// [`LeadBacktest::PooledAsHeld`])
    pub lead_backtest: LeadBacktest,
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
            plan_margin: MarginRule::PLAN,
            lead_plan_margin: MarginRule::LEAD_PLAN,
            lead_backtest: LeadBacktest::PooledAsHeld,
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
        self.plan_margin
            .validate("plan_margin.at_decision", "plan_margin.per_week")?;
        self.lead_plan_margin
            .validate("lead_plan_margin.at_decision", "lead_plan_margin.per_week")?;
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
