//! The capacity job: hourly on the job leader, after the forecasts and the energy
//! accounting (whose hourly rack power dates the racks' budgets).
//!
//! 1. **Demand per pool**, every 5 minutes, from the 1-minute GPU rollups: GPU-equivalents
//!    of work (the sum of utilization / 100), GPUs busy (above `energy.idle_util_pct`),
//!    GPUs queued (the latest report of the pool's scheduler) and GPUs installed. Kept in
//!    `pool_demand` from a watermark, so a run reads only the minutes since the last one.
//! 2. **Recommendations** per pool from its demand (work + queue) of the last
//!    `capacity.history_days` (`rackwatch-capacity`): the next hour, a schedule for the
//!    week, a plan `capacity.lead_days` ahead, each chosen by backtest with its evidence;
//!    the date the demand trend outgrows the installed GPUs; hosts that could be drained.
//! 3. **Exhaustion dates** of racks' power budgets and hosts' disks.
//!
//! Everything is stored; pages, the API, the Prometheus gauges, the capacity alert and
//! the weekly mail read the stored rows, so they agree.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, DurationRound, Timelike, Utc};
use rackwatch_capacity as cap;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;

use crate::config::Config;
use crate::store::Store;

/// A 5-minute slot.
const SLOT: Duration = Duration::minutes(5);
/// Most 1-minute GPU rows one run turns into demand: about 10 s of work on 2 cores. A
/// first start on a large fleet catches up over several runs instead of stalling the
/// other jobs; a small one builds its whole history at once.
const MAX_DEMAND_ROWS_PER_RUN: i64 = 20_000_000;
/// Queue reports older than this do not count for a slot.
const QUEUE_STALE_MINUTES: i64 = 15;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CapacityRun {
    pub demand_slots: u64,
    pub pools: usize,
    pub racks: usize,
    pub disks: usize,
    /// Pools without a recommendation this run (too little history, no GPUs).
    pub skipped: usize,
    /// Wall time of each step.
    pub took: StepTimes,
}

/// Wall time of each step of a run (the benchmark prints them; logged at debug level).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepTimes {
    pub demand: std::time::Duration,
    pub pools: std::time::Duration,
    pub racks: std::time::Duration,
    pub disks: std::time::Duration,
}

/// A backtest, as stored and shown: the chosen method replayed on the pool's own recent
/// past, next to the best simple baseline on the same hours. Cost = idle GPU-hours +
/// price × unserved GPU-hours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BacktestView {
    pub method: String,
    pub cost: f64,
    /// Capacity above demand, % of demand.
    pub slack_pct: f64,
    /// Hours with demand above capacity, %.
    pub shortage_pct: f64,
    pub unserved_gpu_hours: f64,
    pub idle_gpu_hours: f64,
    /// Hours scored. The next hour's backtest scores each hour once; the plans', replayed
    /// from daily starts over the passed hours of their weeks, add up each plan's hours
    /// (they overlap).
    pub hours: f64,
    pub baseline: String,
    pub baseline_cost: f64,
    pub baseline_unserved_gpu_hours: f64,
    pub baseline_idle_gpu_hours: f64,
}

impl From<&cap::Backtest> for BacktestView {
    fn from(b: &cap::Backtest) -> Self {
        BacktestView {
            method: b.method.clone(),
            cost: round3(b.ours.cost),
            slack_pct: round3(b.ours.slack_pct),
            shortage_pct: round3(b.ours.shortage_pct),
            unserved_gpu_hours: round3(b.ours.unserved_gpu_hours),
            idle_gpu_hours: round3(b.ours.idle_gpu_hours),
            hours: b.ours.hours,
            baseline: b.baseline.clone(),
            baseline_cost: round3(b.baseline_cost.cost),
            baseline_unserved_gpu_hours: round3(b.baseline_cost.unserved_gpu_hours),
            baseline_idle_gpu_hours: round3(b.baseline_cost.idle_gpu_hours),
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The evidence of a pool's three decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvidenceView {
    pub next_hour: BacktestView,
    pub week: BacktestView,
    pub lead: BacktestView,
}

/// The methods the backtests chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Methods {
    pub next_hour: String,
    pub week: String,
    pub lead: String,
}

/// A host that could be drained, and what its idle GPUs cost now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrainCandidate {
    pub host: String,
    pub gpus: i64,
    /// Mean GPU utilization over the last 7 days, %.
    pub util_pct: f64,
    /// Energy its GPUs used while idle over the last 7 days.
    pub idle_kwh_7d: f64,
}

/// A host of a pool, as the pool's page lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PoolHost {
    pub host: String,
    pub site: String,
    pub rack: String,
    pub gpus: i64,
    /// Mean GPU utilization over the last 7 days, % (null: no energy accounting yet).
    pub util_pct: Option<f64>,
    /// Energy its GPUs used while idle over the last 7 days, kWh (null: none accounted).
    pub idle_kwh_7d: Option<f64>,
    /// The most it drew in an hour over the last 7 days, kW, GPUs and the rest of it
    /// (null: none accounted): what a rack must have room for per host of the pool.
    pub peak_kw_7d: Option<f64>,
    /// When its agent last reported.
    pub last_seen: Option<DateTime<Utc>>,
}

impl PoolRecommendation {
    /// Whole days between the decision and the lead-time plan (the server's
    /// `capacity.lead_days`, shortened to fit a short history).
    pub fn lead_days(&self) -> u32 {
        ((self.lead_start - self.decided_at).num_hours().max(0) / 24) as u32
    }

    /// What to do, in words: the actions the capacity job stored, or for a
    /// recommendation stored without them, worked out now.
    pub fn actions_now(&self, now: DateTime<Utc>) -> Vec<String> {
        if !self.actions.is_empty() {
            self.actions.clone()
        } else if self.week_schedule.is_empty() {
            vec![self.note.clone()]
        } else {
            actions(self, self.lead_days(), now)
        }
    }
}

/// A pool's stored recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PoolRecommendation {
    pub pool: String,
    pub computed_at: DateTime<Utc>,
    /// The decision time (end of the last 5-minute slot of demand).
    pub decided_at: DateTime<Utc>,
    pub installed_gpus: i32,
    pub host_size: i32,
    /// Demand (work + queue) in the last slot, GPUs.
    pub demand_now: Option<f64>,
    /// GPUs for the next hour (null: no recommendation yet, `note` says why).
    pub next_hour: Option<i32>,
    /// GPUs for each of the 168 hours from `decided_at` (empty: no plan yet).
    pub week_schedule: Vec<i32>,
    pub lead_start: DateTime<Utc>,
    /// GPUs for each of the 168 hours from `lead_start`.
    pub lead_plan: Vec<i32>,
    pub methods: Json<Methods>,
    pub evidence: Json<EvidenceView>,
    /// When the demand trend reaches the installed GPUs (within `capacity.horizon_days`).
    pub exhausted_at: Option<DateTime<Utc>>,
    /// The demand trend's growth per day, as a fraction of its level (0.02: 2 %/day).
    pub growth_per_day: Option<f64>,
    pub consolidation: Json<Vec<DrainCandidate>>,
    /// Why a part is missing (short history), for people.
    pub note: String,
    /// Sites of the pool's hosts, the one with most GPUs first.
    pub sites: Vec<String>,
    /// What to do, in words, most urgent first ([`actions`] when the job ran).
    pub actions: Vec<String>,
    /// [`Urgency`] of the first action: the capacity page's order.
    pub urgency: i16,
}

/// A stored exhaustion date of a rack's power or a host's disk (or a pool's GPUs).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ExhaustionRow {
    #[schema(schema_with = exhaustion_kinds)]
    pub kind: String,
    /// The pool, rack or host it is about.
    pub key: String,
    pub computed_at: DateTime<Utc>,
    /// What there is, in `unit`.
    pub capacity: f64,
    /// The fitted trend's level at `computed_at`, in `unit`: a daily peak (a pool's
    /// daily 95 % demand, a rack's peak power, a disk's most space used).
    pub level_now: f64,
    /// The fitted trend's growth per day, as a fraction of the level (0.02: 2 %/day).
    pub growth_per_day: f64,
    pub unit: String,
    /// When the trend reaches the capacity (null: not within the horizon).
    pub exhausted_at: Option<DateTime<Utc>>,
    /// The trend's shape: `exponential` (a constant fraction of the level per day) or
    /// `linear` (a constant amount per day, fitted when some day had no use at all).
    #[schema(schema_with = trend_shapes)]
    pub trend: String,
    /// The trend's growth per day at `computed_at`, in `unit` (GPUs, W or bytes per day).
    pub growth_unit_per_day: f64,
}

fn exhaustion_kinds() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["pool", "rack", "disk"])
}

fn trend_shapes() -> utoipa::openapi::schema::Object {
    crate::model::schema::one_of(&["exponential", "linear"])
}

impl ExhaustionRow {
    /// The row of a fitted exhaustion `x` of `key` (`kind` pool, rack or disk), computed at
    /// `now`. The trend was fitted up to the end of the data (`x.now`, at most a day
    /// earlier); the row holds its level and slope at `now`, so [`ExhaustionRow::level_at`]
    /// is the fitted trend.
    fn fitted(
        kind: &str,
        key: String,
        now: DateTime<Utc>,
        unit: &str,
        x: &cap::Exhaustion,
    ) -> Self {
        let level = x.level_at(now);
        let (trend, slope) = match x.trend {
            cap::Trend::Exponential => ("exponential", level * x.growth_per_day.ln_1p()),
            cap::Trend::Linear => ("linear", x.growth_per_day),
        };
        ExhaustionRow {
            kind: kind.into(),
            key,
            computed_at: now,
            capacity: x.capacity,
            level_now: level,
            growth_per_day: x.relative_growth_per_day,
            unit: unit.into(),
            exhausted_at: x.date,
            trend: trend.into(),
            growth_unit_per_day: slope,
        }
    }

    /// The trend's level at `at`, in `unit`: what the rack page draws ahead.
    pub fn level_at(&self, at: DateTime<Utc>) -> f64 {
        let days = (at - self.computed_at).num_seconds() as f64 / 86_400.0;
        if self.trend == "linear" {
            (self.level_now + self.growth_unit_per_day * days).max(0.0)
        } else {
            self.level_now * (1.0 + self.growth_per_day).powf(days)
        }
    }
}

/// How many pools a site has, and how many of them need GPUs or can release some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SitePools {
    /// The site (null: all pools).
    pub site: Option<String>,
    pub pools: i64,
    /// Pools whose first action is an order.
    pub to_order: i64,
    /// Pools whose first action releases GPUs.
    pub to_release: i64,
}

/// A pool's hosts that could be drained.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PoolDrains {
    pub pool: String,
    pub hosts: Vec<DrainCandidate>,
}

/// A pool's demand at one time (a 5-minute slot, or the highest slot of a longer point).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DemandPoint {
    pub bucket: DateTime<Utc>,
    /// GPUs at or above `energy.idle_util_pct` (what schedulers call allocated).
    pub busy_gpus: f32,
    /// Σ GPU utilization / 100 over the pool's GPUs: the GPUs' worth of work done.
    pub util_gpus: f32,
    /// GPUs requested by work waiting in the pool's scheduler, 0 without one.
    pub queued_gpus: f32,
    pub installed_gpus: i32,
}

impl DemandPoint {
    /// What the recommender plans for: the work the GPUs do, plus the work waiting.
    pub fn demand(&self) -> f64 {
        f64::from(self.util_gpus) + f64::from(self.queued_gpus)
    }
}

/// Recommender settings from the configuration, for one pool.
pub fn settings(cfg: &Config, host_size: u32) -> cap::Settings {
    cap::Settings {
        price: cfg.capacity.price,
        host_size: host_size.max(1),
        lead_hours: cfg.capacity.lead_days * 24,
        ..cap::Settings::default()
    }
}

/// The hourly run.
pub async fn run(store: &Store, cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<CapacityRun> {
    let t = std::time::Instant::now();
    let mut out = CapacityRun {
        demand_slots: update_demand(store, cfg, now).await?,
        ..Default::default()
    };
    out.took.demand = t.elapsed();
    let t = std::time::Instant::now();
    // Hours the energy job summed before it kept host and rack sums (or energy imported):
    // once.
    let end = now.duration_trunc(Duration::hours(1))?;
    let start = end - Duration::days(i64::from(cfg.capacity.history_days));
    super::energy::ensure_power_sums(store, start, end).await?;
    // Racks first: an order of hosts says whether the racks have the power for them.
    out.racks = rack_power(store, cfg, now).await?;
    out.took.racks = t.elapsed();
    let t = std::time::Instant::now();
    let end = store.demand_watermark().await?.unwrap_or(now).min(now);
    let (pools, skipped) = recommend_pools(store, cfg, end, now).await?;
    out.pools = pools;
    out.skipped = skipped;
    out.took.pools = t.elapsed();
    let t = std::time::Instant::now();
    out.disks = disks(store, cfg, now).await?;
    out.took.disks = t.elapsed();
    tracing::debug!(took = ?out.took, "capacity run");
    Ok(out)
}

/// Step 1: pool demand for the 5-minute slots the 1-minute rollups complete since the
/// last run. Returns the slots written.
pub async fn update_demand(store: &Store, cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let rolled = store.rollup_watermark().await?.unwrap_or(now).min(now);
    let end = rolled.duration_trunc(SLOT)?;
    let history = Duration::days(i64::from(cfg.capacity.history_days));
    let from = match store.demand_watermark().await? {
        // Redo the last slot: rollups of its minutes may have been late.
        Some(w) => (w - SLOT).max(end - history),
        None => end - history,
    };
    let gpus = store.gpu_count().await?.max(1);
    let hours = (MAX_DEMAND_ROWS_PER_RUN / (gpus * 60)).clamp(1, history.num_hours());
    let to = end.min(from + Duration::hours(hours));
    if to <= from {
        return Ok(0);
    }
    let mut written = 0;
    let mut t = from;
    while t < to {
        let next = (t + Duration::hours(6)).min(to);
        written += store
            .write_pool_demand(t, next, cfg.energy.idle_util_pct)
            .await?;
        t = next;
    }
    store.set_demand_watermark(to).await?;
    Ok(written)
}

/// A pool's demand history as the recommender reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolHistory {
    pub pool: String,
    /// Start of each 5-minute slot with demand, oldest first.
    pub buckets: Vec<DateTime<Utc>>,
    /// Demand (work + queue) of each slot, GPUs: [`DemandPoint::demand`].
    pub demand: Vec<f64>,
    /// GPUs installed in the last slot.
    pub installed: i32,
}

/// What the recommender decided for one pool, before it is stored.
struct Decided {
    pool: String,
    installed: i32,
    host_size: u32,
    demand_now: Option<f64>,
    next: Result<cap::Decision, cap::CapacityError>,
    week: Result<cap::Decision, cap::CapacityError>,
    lead: Result<cap::Decision, cap::CapacityError>,
    ex: Result<cap::Exhaustion, cap::CapacityError>,
}

/// The recommender's work for one pool (CPU only: run it off the async workers).
fn decide(
    h: PoolHistory,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    s: &cap::Settings,
    horizon_days: u32,
) -> Decided {
    // The history starts at the pool's first observed slot: a pool a day old has a
    // day of history, not 27 days of gaps (the recommender then says what it lacks).
    let first = h.buckets.first().map_or(start, |b| (*b).max(start));
    let series = grid_slots(&h.buckets, &h.demand, first, end);
    let step = cap::Step::FIVE_MINUTES;
    Decided {
        installed: h.installed,
        host_size: s.host_size,
        // Demand now is the last slot's, if that is recent: a pool whose hosts stopped
        // reporting has no demand of now, not the one of the day they stopped.
        demand_now: h
            .buckets
            .last()
            .filter(|b| **b >= end - Duration::minutes(15))
            .and(h.demand.last().copied()),
        next: cap::next_hour(&series, step, first, end, s),
        week: cap::plan(&series, step, first, end, 0, 168, s),
        lead: cap::plan(&series, step, first, end, s.lead_hours, 168, s),
        ex: cap::exhaustion(
            &series,
            step,
            first,
            end,
            f64::from(h.installed),
            horizon_days,
            s,
        ),
        pool: h.pool,
    }
}

/// Step 2: a recommendation per pool. Returns (pools recommended, pools skipped).
///
/// Set-based: one read of every pool's demand, the recommender on all cores, one read of
/// the hosts to drain, and one transaction that stores every pool's rows.
async fn recommend_pools(
    store: &Store,
    cfg: &Config,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<(usize, usize)> {
    let start = end - Duration::days(i64::from(cfg.capacity.history_days));
    let (histories, sizes, sites) = tokio::try_join!(
        store.pool_histories(start, end),
        store.pool_host_sizes(),
        store.pool_sites(),
    )?;
    // A pool is the pools of the fleet's hosts: one whose hosts were all taken out of the
    // fleet (or renamed to another pool) is dropped with its rows, whatever demand it had.
    let inputs: Vec<(PoolHistory, cap::Settings)> = histories
        .into_iter()
        .filter(|h| sites.contains_key(&h.pool))
        .map(|h| {
            let host_size = if cfg.capacity.host_size > 0 {
                cfg.capacity.host_size
            } else {
                sizes.get(&h.pool).copied().unwrap_or(1)
            };
            (h, settings(cfg, host_size))
        })
        .collect();
    // A pool none of whose hosts reported for a while keeps the plan it had, with its
    // `decided_at` (the end of its demand) ageing, as an autoscaler's hold rule reads it:
    // planning again from old demand would read as a plan of now.
    let (inputs, silent): (Vec<_>, Vec<_>) = inputs
        .into_iter()
        .partition(|(h, _)| h.buckets.last().is_some_and(|b| *b > end - STALE_DEMAND));
    let mut kept = Vec::new();
    if !silent.is_empty() {
        let mut stored: HashMap<String, PoolRecommendation> = store
            .recommendations(None)
            .await?
            .into_iter()
            .map(|r| (r.pool.clone(), r))
            .collect();
        for (h, settings) in silent {
            let silence = match h.buckets.last() {
                Some(b) => format!(
                    "no demand since {}: no host of the pool has reported since",
                    (*b + Duration::minutes(5)).format("%Y-%m-%d %H:%M UTC")
                ),
                None => "no demand in the history window".to_string(),
            };
            let why =
                format!("{silence}, so this is the plan made then (hold, do not scale on it)");
            let pool_sites = sites.get(&h.pool).cloned().unwrap_or_default();
            match stored.remove(&h.pool) {
                Some(mut r) if !r.week_schedule.is_empty() => {
                    // What is known now; the trend's date is not (its row goes with
                    // this run's exhaustion dates).
                    r.demand_now = None;
                    r.exhausted_at = None;
                    r.installed_gpus = h.installed;
                    r.sites = pool_sites;
                    if r.actions.first() != Some(&why) {
                        r.actions.retain(|a| !a.starts_with("no demand "));
                        r.actions.insert(0, why);
                    }
                    kept.push(r);
                }
                _ => kept.push(partial_recommendation(
                    Young {
                        pool: &h.pool,
                        installed: h.installed,
                        host_size: settings.host_size,
                        demand_now: None,
                    },
                    now,
                    h.buckets.last().map_or(end, |b| *b + Duration::minutes(5)),
                    &silence,
                    pool_sites,
                )),
            }
        }
    }
    let horizon = cfg.capacity.horizon_days;
    let decided =
        super::on_all_cores(inputs, move |(h, s)| decide(h, start, end, &s, horizon)).await?;

    let lead_days = cfg.capacity.lead_days;
    let mut recs = Vec::new();
    let mut exhaustions = Vec::new();
    // (index in recs, GPUs to release) of pools that hold well more than they need.
    let mut to_drain = Vec::new();
    let mut skipped = 0;
    for d in decided {
        let pool_sites = sites.get(&d.pool).cloned().unwrap_or_default();
        // Each part stands on its own: a pool with less history than the lead time still
        // gets its next hour and its week, and says what the plan ahead waits for.
        let (next, week) = match (d.next, d.week) {
            (Ok(n), Ok(w)) => (n, w),
            (n, w) => {
                let why = n
                    .err()
                    .or(w.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                skipped += 1;
                tracing::debug!(pool = d.pool, "no recommendation: {why}");
                recs.push(partial_recommendation(
                    Young {
                        pool: &d.pool,
                        installed: d.installed,
                        host_size: d.host_size,
                        demand_now: d.demand_now,
                    },
                    now,
                    end,
                    &why,
                    pool_sites,
                ));
                continue;
            }
        };
        let installed = d.installed;
        let mut note = String::new();
        let lead = match d.lead {
            Ok(l) => Some(l),
            Err(cap::CapacityError::LeadLongerThanHistory {
                lead_hours,
                history_hours,
            }) => {
                note = format!(
                    "no plan ahead yet: it looks {lead_hours} h ahead (capacity.lead_days) and needs as much demand history; this pool has {history_hours} h"
                );
                None
            }
            Err(e) => {
                note = format!("no plan ahead yet: {e}");
                None
            }
        };
        let (exhausted_at, growth) = match &d.ex {
            Ok(x) => (x.date, Some(x.relative_growth_per_day)),
            Err(_) => (None, None),
        };
        if let Ok(x) = &d.ex {
            exhaustions.push(ExhaustionRow::fitted(
                "pool",
                d.pool.clone(),
                now,
                "GPUs",
                x,
            ));
        }
        // What stays installed: this week's peak, and the plan ahead's (a pool that grows
        // into its GPUs next week has none to drain this week).
        let peak = week.capacities.iter().copied().max().unwrap_or(0);
        let lead_peak = lead
            .as_ref()
            .and_then(|l| l.capacities.iter().copied().max())
            .unwrap_or(0);
        let keep = peak.max(lead_peak) as i32;
        if installed > 0 && f64::from(keep) < cfg.capacity.consolidate_below * f64::from(installed)
        {
            to_drain.push((recs.len(), (installed - keep).max(0)));
        }
        let lead_hours = i64::from(cfg.capacity.lead_days) * 24;
        let (lead_start, lead_plan, lead_method, lead_evidence) = match &lead {
            Some(l) => (
                l.start,
                l.capacities.iter().map(|v| *v as i32).collect(),
                l.method.clone(),
                (&l.evidence).into(),
            ),
            None => (
                end + Duration::hours(lead_hours),
                Vec::new(),
                String::new(),
                BacktestView::default(),
            ),
        };
        recs.push(PoolRecommendation {
            pool: d.pool,
            computed_at: now,
            decided_at: week.start,
            installed_gpus: installed,
            host_size: d.host_size as i32,
            demand_now: d.demand_now,
            next_hour: Some(next.capacities.first().copied().unwrap_or(0) as i32),
            week_schedule: week.capacities.iter().map(|v| *v as i32).collect(),
            lead_start,
            lead_plan,
            methods: Json(Methods {
                next_hour: next.method.clone(),
                week: week.method.clone(),
                lead: lead_method,
            }),
            evidence: Json(EvidenceView {
                next_hour: (&next.evidence).into(),
                week: (&week.evidence).into(),
                lead: lead_evidence,
            }),
            exhausted_at,
            growth_per_day: growth,
            consolidation: Json(Vec::new()),
            note,
            sites: pool_sites,
            actions: Vec::new(),
            urgency: 0,
        });
    }
    if !to_drain.is_empty() {
        let pools: Vec<String> = to_drain
            .iter()
            .map(|(i, _)| recs[*i].pool.clone())
            .collect();
        let mut hosts = store.drain_hosts(&pools, now).await?;
        for (i, spare) in to_drain {
            let r = &mut recs[i];
            let rows = hosts.remove(&r.pool).unwrap_or_default();
            r.consolidation = Json(pick_drains(rows, spare, r.host_size));
        }
    }
    // A release at night names the hosts least busy in those hours.
    let nights: Vec<(String, NightRelease, i32)> = recs
        .iter()
        .filter_map(|r| Some((r.pool.clone(), night_release(r)?, r.host_size)))
        .collect();
    let mut night_hosts = if nights.is_empty() {
        HashMap::new()
    } else {
        let pools: Vec<String> = nights.iter().map(|(p, ..)| p.clone()).collect();
        let mut hours = store.pool_host_hours(&pools, now).await?;
        nights
            .into_iter()
            .map(|(pool, n, hs)| {
                let rows = hours.remove(&pool).unwrap_or_default();
                let names = least_busy_in(rows, n.from, n.to, n.spare, hs);
                (pool, names)
            })
            .collect()
    };
    for r in &mut recs {
        let (urgency, said) = if r.week_schedule.is_empty() {
            (Urgency::NoPlan, vec![r.note.clone()])
        } else {
            let names = night_hosts.remove(&r.pool).unwrap_or_default();
            let a = plan_actions(r, lead_days, now, &names);
            let u = a.iter().map(|(u, _)| *u).min().unwrap_or(Urgency::NoChange);
            (u, a.into_iter().map(|(_, t)| t).collect())
        };
        r.urgency = urgency as i16;
        r.actions = said;
    }
    // An order of hosts says whether the racks with a power budget have room for them.
    let ordering: Vec<String> = recs
        .iter()
        .filter(|r| r.urgency == Urgency::Order as i16 && r.host_size > 1)
        .map(|r| r.pool.clone())
        .collect();
    if !ordering.is_empty() {
        let racks = store.exhaustions(Some("rack")).await?;
        if !racks.is_empty() {
            let mut hosts: HashMap<String, Vec<PoolHost>> = HashMap::new();
            for (pool, h) in store.pool_hosts(&ordering, now).await? {
                hosts.entry(pool).or_default().push(h);
            }
            for r in recs.iter_mut().filter(|r| ordering.contains(&r.pool)) {
                let peak = host_peak_w(hosts.get(&r.pool).into_iter().flatten());
                let room = rack_room(&racks, &r.sites, peak);
                if let Some(line) = room_line(&room, &r.sites) {
                    r.actions.insert(1.min(r.actions.len()), line);
                }
            }
        }
    }
    skipped += kept.len();
    recs.extend(kept);
    let done = recs.len() - skipped;
    store.save_recommendations(&recs, &exhaustions).await?;
    Ok((done, skipped))
}

/// What is known of a pool the recommender could not yet decide for.
struct Young<'a> {
    pool: &'a str,
    installed: i32,
    host_size: u32,
    demand_now: Option<f64>,
}

/// A pool without a full recommendation keeps its row with its installed GPUs, its demand
/// and the reason, and no recommendation: every surface shows the same absence.
fn partial_recommendation(
    d: Young<'_>,
    now: DateTime<Utc>,
    decided_at: DateTime<Utc>,
    why: &str,
    sites: Vec<String>,
) -> PoolRecommendation {
    PoolRecommendation {
        pool: d.pool.into(),
        computed_at: now,
        decided_at,
        installed_gpus: d.installed,
        host_size: d.host_size as i32,
        demand_now: d.demand_now,
        next_hour: None,
        week_schedule: Vec::new(),
        lead_start: decided_at,
        lead_plan: Vec::new(),
        methods: Json(Methods::default()),
        evidence: Json(EvidenceView::default()),
        exhausted_at: None,
        growth_per_day: None,
        consolidation: Json(Vec::new()),
        note: format!("no plan yet: {why}"),
        sites,
        actions: Vec::new(),
        urgency: Urgency::NoPlan as i16,
    }
}

/// A pool's host, as a drain candidate: (host, GPUs, mean utilization over 7 days as a
/// fraction of 100, idle GPU energy over 7 days in kWh), least busy first.
type DrainHost = (String, i64, Option<f64>, Option<f64>);

/// Up to `gpus` GPUs' worth of the least busy hosts (whole hosts of `host_size`). A host
/// whose use is unknown (new, or without a week of accounting) is not named: it may be
/// the busiest of all. One host always stays: a pool with no demand for a week is one to
/// look at, not one to take apart by a rule.
fn pick_drains(rows: Vec<DrainHost>, gpus: i32, host_size: i32) -> Vec<DrainCandidate> {
    let mut left = gpus;
    let mut out = Vec::new();
    // Hosts that could stay: with GPUs seen lately, and of known use.
    let keep_one = rows
        .iter()
        .filter(|(_, n, util, _)| *n > 0 && util.is_some())
        .count()
        .saturating_sub(1);
    for (host, n, util, idle) in rows {
        let n = n as i32;
        if out.len() >= keep_one {
            break;
        }
        let Some(util) = util else { continue };
        if n == 0
            || n > left
            || (host_size > 1 && n < host_size && out.is_empty() && left < host_size)
        {
            continue;
        }
        left -= n;
        out.push(DrainCandidate {
            host,
            gpus: i64::from(n),
            util_pct: (util * 10.0).round() / 10.0,
            idle_kwh_7d: (idle.unwrap_or(0.0) * 10.0).round() / 10.0,
        });
        if left <= 0 {
            break;
        }
    }
    out
}

/// The demand samples of a pool on the 5-minute grid from `start` to `end`, gaps as None.
pub fn grid(points: &[DemandPoint], start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<Option<f64>> {
    let buckets: Vec<_> = points.iter().map(|p| p.bucket).collect();
    let demand: Vec<_> = points.iter().map(DemandPoint::demand).collect();
    grid_slots(&buckets, &demand, start, end)
}

/// Slots (start, value) on the 5-minute grid from `start` to `end`, gaps as None.
fn grid_slots(
    buckets: &[DateTime<Utc>],
    values: &[f64],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<Option<f64>> {
    let n = ((end - start).num_minutes() / 5).max(0) as usize;
    let mut g = vec![None; n];
    for (b, v) in buckets.iter().zip(values) {
        let i = (*b - start).num_minutes() / 5;
        if (0..n as i64).contains(&i) {
            g[i as usize] = Some(*v);
        }
    }
    g
}

/// A rack's key in `[capacity.racks]`, in `capacity_exhaustion` and in the rack power
/// sums: "site/rack".
pub fn rack_key(site: &str, rack: &str) -> String {
    format!("{site}/{rack}")
}

/// How a budget (a rack's power, a pool's GPUs) fares, for a sentence "the budget …": it
/// runs out on a date, is exceeded already (the date has passed: the trend is over it
/// now), or does not run out within the horizon (`capacity.horizon_days`).
pub fn budget_outlook(
    exhausted_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    horizon_days: u32,
) -> String {
    match exhausted_at {
        Some(d) if d <= now => "is exceeded already".to_string(),
        Some(d) => format!("runs out on {}", d.format("%Y-%m-%d")),
        None => format!("does not run out within {horizon_days} days"),
    }
}

/// Step 3a: when each rack with a power budget outgrows it (hourly mean power of its
/// GPUs and hosts, from the energy accounting's rack sums). Returns the racks looked at.
async fn rack_power(store: &Store, cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let budgets = store.rack_budgets(&cfg.capacity.racks).await?;
    if budgets.is_empty() {
        // No rack is dated: those of budgets since removed go too.
        store.save_exhaustions("rack", &[]).await?;
        return Ok(0);
    }
    let end = now.duration_trunc(Duration::hours(1))?;
    let start = end - Duration::days(i64::from(cfg.capacity.history_days));
    let mut power = store.rack_power_hourly(start, end).await?;
    let hours = (end - start).num_hours() as usize;
    let racks: Vec<(String, f64, Vec<Option<f64>>)> = budgets
        .into_iter()
        .filter_map(|(rack, kw)| {
            let points = power.remove(&rack)?;
            let mut series = vec![None; hours];
            for (t, w) in points {
                let i = (t - start).num_hours();
                if (0..hours as i64).contains(&i) {
                    series[i as usize] = Some(w);
                }
            }
            Some((rack, kw, series))
        })
        .collect();
    let s = settings(cfg, 1);
    let horizon = cfg.capacity.horizon_days;
    let dated = super::on_all_cores(racks, move |(rack, kw, series)| {
        let ex = cap::exhaustion(
            &series,
            cap::Step::HOUR,
            start,
            end,
            kw * 1000.0,
            horizon,
            &s,
        );
        ex.ok()
            .map(|x| ExhaustionRow::fitted("rack", rack, now, "W", &x))
    })
    .await?;
    let rows: Vec<ExhaustionRow> = dated.into_iter().flatten().collect();
    store.save_exhaustions("rack", &rows).await?;
    Ok(rows.len())
}

/// Step 3b: when each host's disks fill, from the daily peak of space used (recomputed
/// once a day). Returns the hosts looked at.
async fn disks(store: &Store, cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<usize> {
    store.forget_removed_disks().await?;
    if store.disks_computed_today(now).await? {
        return Ok(0);
    }
    let end = now.duration_trunc(Duration::days(1))?;
    let start = end - Duration::days(i64::from(cfg.capacity.history_days));
    let hosts: Vec<_> = store.disk_daily(start, end).await?.into_iter().collect();
    let s = settings(cfg, 1);
    let horizon = cfg.capacity.horizon_days;
    let dated = super::on_all_cores(hosts, move |(host, (total, points))| {
        let days = (end - start).num_days() as usize;
        // The daily peak stands for every hour of its day.
        let mut series = vec![None; days * 24];
        for (t, used) in &points {
            let d = (*t - start).num_days();
            if (0..days as i64).contains(&d) {
                for h in 0..24 {
                    series[d as usize * 24 + h] = Some(*used);
                }
            }
        }
        let ex = cap::exhaustion(&series, cap::Step::HOUR, start, end, total, horizon, &s);
        ex.ok()
            .map(|x| ExhaustionRow::fitted("disk", host, now, "B", &x))
    })
    .await?;
    let rows: Vec<ExhaustionRow> = dated.into_iter().flatten().collect();
    store.save_exhaustions("disk", &rows).await?;
    Ok(rows.len())
}

/// A pool whose newest demand is older than this (before the demand's end) is not
/// planned again: its hosts stopped reporting. Autoscalers are told to hold on a
/// recommendation more than two hours old.
const STALE_DEMAND: Duration = Duration::hours(2);

/// Whether a recommendation is older than [`STALE_DEMAND`]: its pool's hosts stopped
/// reporting, or the rollups or the job are behind. An autoscaler holds on it, and the
/// capacity alert neither fires nor resolves on it.
pub fn stale(r: &PoolRecommendation, now: DateTime<Utc>) -> bool {
    r.decided_at < now - STALE_DEMAND
}

/// Demand growth below this is treated as flat: the plans' safety margins alone never
/// make an order.
pub const GROWING_PER_DAY: f64 = 0.005;

/// Whether a pool runs short within `lead`, as [`actions`] orders: it grows (or its
/// trend reaches the installed GPUs within twice `lead`) and the plan from its lead start
/// needs more than is installed; its growing demand trend reaches the installed GPUs
/// within `lead`; or work queues now and this week's schedule needs more than is
/// installed every hour. A pool at its installed GPUs that is not growing, with a plan
/// ahead that fits, is not short (the actions say "no order yet"). The capacity alert
/// fires on this; with the rule's lead equal to `capacity.lead_days` it fires when the
/// actions order and what they order for falls within that lead (an order for a trend
/// date further out is advice, not yet an alert).
pub fn short_within(r: &PoolRecommendation, lead: Duration, now: DateTime<Utc>) -> bool {
    if r.week_schedule.is_empty() {
        return false;
    }
    let growth = r.growth_per_day.unwrap_or(0.0);
    let soon = r.exhausted_at.is_some_and(|d| d <= now + lead * 2);
    let trend_hits = growth > 0.0 && r.exhausted_at.is_some_and(|d| d <= now + lead);
    let lead_peak = r.lead_plan.iter().copied().max().unwrap_or(0);
    let plan_short = (growth >= GROWING_PER_DAY || soon)
        && lead_peak > r.installed_gpus
        && r.lead_start <= now + lead;
    trend_hits || plan_short || short_every_hour(r)
}

/// Work queues now and this week's schedule needs more than is installed in every hour:
/// short whatever the trend or the plan ahead (a young pool has no plan ahead; a queue
/// can jump). A schedule above the installed GPUs without a queue, or only at the peaks,
/// is the plan's safety margin, which alone makes no order.
fn short_every_hour(r: &PoolRecommendation) -> bool {
    let installed = r.installed_gpus;
    r.demand_now.is_some_and(|d| d > f64::from(installed))
        && !r.week_schedule.is_empty()
        && r.week_schedule.iter().all(|g| *g > installed)
}

/// A daily growth rate in percent: one decimal, or two below 0.1 % (0.03 %/day is not
/// "0.0").
fn percent(per_day: f64) -> String {
    let p = per_day * 100.0;
    if p.abs() < 0.1 && p != 0.0 {
        format!("{p:.2}")
    } else {
        format!("{p:.1}")
    }
}

/// What a planner should do about a pool, in words, most urgent first.
///
/// * An order when the pool grows (at least [`GROWING_PER_DAY`], or its trend reaches the
///   installed GPUs within twice the lead time) and the plan a lead time ahead needs more
///   than is installed.
/// * GPUs to release at night when the schedule's daily low leaves at least a host idle.
/// * GPUs to release all week (with the hosts to drain) when the whole week's plan stays
///   well below what is installed.
pub fn actions(r: &PoolRecommendation, lead_days: u32, now: DateTime<Utc>) -> Vec<String> {
    plan_actions(r, lead_days, now, &[])
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

/// How pressing a pool's first action is: the capacity page lists pools in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i16)]
pub enum Urgency {
    /// GPUs to add (or to order before the trend reaches the installed ones).
    Order = 0,
    /// GPUs to release, at night or all week.
    Release = 1,
    NoChange = 2,
    /// Not enough history for a plan yet.
    NoPlan = 3,
}

/// [`actions`], each with its urgency; a release at night names `night_hosts` (the hosts
/// least busy in those hours, when known).
pub fn plan_actions(
    r: &PoolRecommendation,
    lead_days: u32,
    now: DateTime<Utc>,
    night_hosts: &[String],
) -> Vec<(Urgency, String)> {
    let mut out = Vec::new();
    let hs = r.host_size.max(1);
    // GPUs in whole hosts: an order counts hosts up, a release down (releasing a partial
    // host's worth would take the pool below what the schedule needs).
    let in_hosts = |g: i32, up: bool| {
        if hs > 1 {
            let h = if up { (g + hs - 1) / hs } else { g / hs };
            format!(
                "{h} host{} ({} GPUs)",
                if h == 1 { "" } else { "s" },
                h * hs
            )
        } else {
            format!("{g} GPU{}", if g == 1 { "" } else { "s" })
        }
    };
    let gpus_hosts = |g: i32| in_hosts(g, true);
    let release_hosts = |g: i32| in_hosts(g, false);
    let growth = r.growth_per_day.unwrap_or(0.0);
    let soon = r
        .exhausted_at
        .is_some_and(|d| d <= now + Duration::days(2 * i64::from(lead_days)));
    let growing = growth >= GROWING_PER_DAY || soon;
    let lead_peak = r.lead_plan.iter().copied().max().unwrap_or(0);
    let short_now = r.exhausted_at.is_some_and(|d| d <= now);
    if growing && lead_peak > r.installed_gpus {
        let week_low = r.week_schedule.iter().copied().min().unwrap_or(0);
        let why = if growth >= GROWING_PER_DAY {
            format!("demand grows {:.1} %/day", growth * 100.0)
        } else if short_now && week_low > r.installed_gpus {
            format!(
                "this week's schedule needs more than the {} installed GPUs every hour, {week_low} at its lowest",
                r.installed_gpus
            )
        } else if short_now {
            format!(
                "demand (work + queue) already reaches the {} installed GPUs at its peak",
                r.installed_gpus
            )
        } else {
            "demand reaches the installed GPUs before then".to_string()
        };
        // Short already: now, with no date to wait for (a date days off beside "runs out:
        // already" reads as a contradiction); the plan ahead says how many.
        let lead = r.lead_start.format("%Y-%m-%d");
        let (when, from) = if short_now {
            ("now".to_string(), format!("from {lead}"))
        } else {
            (format!("by {lead}"), "from then".to_string())
        };
        out.push((
            Urgency::Order,
            format!(
                "add {} {when} ({why}; the plan for the week {from} needs {} GPUs, {} installed)",
                gpus_hosts(lead_peak - r.installed_gpus),
                lead_peak,
                r.installed_gpus
            ),
        ));
    } else if let (true, Some(_), false) = (growing, r.exhausted_at, growth > 0.0) {
        // At the installed GPUs on the daily peaks' trend, but not growing, and the plan
        // ahead fits: nothing to order yet (unless work queues every hour, below).
        if !short_every_hour(r) {
            let ahead = if r.lead_plan.is_empty() {
                "there is no plan ahead yet (less history than the lead time)".to_string()
            } else {
                format!("the plan ahead needs {lead_peak}")
            };
            out.push((Urgency::NoChange, format!(
                "no order yet: demand's daily peaks are at the {} installed GPUs but not growing ({} %/day), and {ahead}",
                r.installed_gpus,
                percent(growth),
            )));
        }
    } else if let (true, Some(d)) = (growing, r.exhausted_at) {
        // Growing slowly, and the plan ahead still fits: the trend's date is the deadline.
        let reach = if d <= now {
            "already reach".to_string()
        } else {
            format!("reach them on {}", d.format("%Y-%m-%d"))
        };
        let ahead = if r.lead_plan.is_empty() {
            String::new()
        } else {
            format!(
                "; the plan for the week from {} needs {lead_peak}",
                r.lead_start.format("%Y-%m-%d")
            )
        };
        out.push((Urgency::Order, format!(
            "order more before the trend runs out: demand grows {} %/day and its daily peaks {reach} ({} GPUs installed{ahead})",
            percent(growth),
            r.installed_gpus,
        )));
    }
    let week_peak = r.week_schedule.iter().copied().max().unwrap_or(0);
    let week_low = r.week_schedule.iter().copied().min().unwrap_or(0);
    if short_every_hour(r) && !out.iter().any(|(u, _)| *u == Urgency::Order) {
        out.push((
            Urgency::Order,
            format!(
                "add {} as soon as possible: this week's schedule needs more than the {} installed GPUs every hour ({week_low} at its lowest, {week_peak} at its peak)",
                gpus_hosts(week_peak - r.installed_gpus),
                r.installed_gpus
            ),
        ));
    }
    if r.installed_gpus > 0 {
        if let Some(NightRelease {
            from,
            to,
            level,
            spare,
        }) = night_release(r)
        {
            // The plan ahead may need more in those hours (growth): the release holds
            // until it starts, and the advice says so.
            let ahead = need_in_window(&r.lead_plan, r.lead_start, from, to);
            let mut until = match ahead {
                Some(n) if n > level => {
                    let then = r.installed_gpus - n;
                    let left = if then >= hs {
                        format!("release {} then", release_hosts(then))
                    } else {
                        "none to release then".to_string()
                    };
                    format!(
                        "; from {} the plan ahead needs {n} then: {left}",
                        r.lead_start.format("%Y-%m-%d")
                    )
                }
                _ => String::new(),
            };
            if !night_hosts.is_empty() {
                until += &format!(
                    "; least busy then over the last 7 days: {}",
                    night_hosts.join(", ")
                );
            }
            out.push((Urgency::Release, format!(
                "release {} nights {:02}:00–{:02}:00 UTC (the schedule needs {} then, {} at the daily peak, {} installed{until})",
                release_hosts(spare),
                from,
                to,
                level,
                week_peak,
                r.installed_gpus
            )));
        }
        // All week: what neither this week nor the plan ahead needs, and never beside an
        // order. The hosts named are whole ones, so the figure is theirs.
        let ordering = out.iter().any(|(u, _)| *u == Urgency::Order);
        let spare: i32 = r.consolidation.0.iter().map(|d| d.gpus as i32).sum();
        if spare >= hs && !ordering && !r.consolidation.0.is_empty() {
            let ahead = if lead_peak > week_peak {
                format!(" ({lead_peak} in the plan ahead)")
            } else {
                String::new()
            };
            let n = r.consolidation.0.len();
            let what = if hs > 1 {
                format!("{n} host{} ({spare} GPUs)", if n == 1 { "" } else { "s" })
            } else {
                format!("{spare} GPU{}", if spare == 1 { "" } else { "s" })
            };
            out.push((
                Urgency::Release,
                format!(
                    "release {what} all week: the recommended peak is {}{ahead} of {} installed (drain {})",
                    week_peak,
                    r.installed_gpus,
                    r.consolidation
                        .0
                        .iter()
                        .map(|d| d.host.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if out.is_empty() {
        let ahead = if r.lead_plan.is_empty() {
            "no plan ahead yet".to_string()
        } else {
            format!(
                "{lead_peak} at the peak of the week from {}",
                r.lead_start.format("%Y-%m-%d")
            )
        };
        out.push((
            Urgency::NoChange,
            format!(
                "no change: {} installed GPUs cover the plan (peak {week_peak} this week, {ahead})",
                r.installed_gpus,
            ),
        ));
    }
    out
}

/// The longest run of clock hours (UTC) at the schedule's daily low: (first hour, hour
/// after the last, GPUs), when the low is below the peak. The schedule's hours start at
/// `from`, which need not be on the hour: a clock hour counts what every slot overlapping
/// it asks for, so releasing over the whole window never goes below the schedule.
pub fn low_window(schedule: &[i32], from: DateTime<Utc>) -> Option<(u32, u32, i32)> {
    if schedule.len() < 24 {
        return None;
    }
    // A week of slots covers every clock hour.
    let by_hour = need_by_hour(schedule, from).map(|n| n.unwrap_or(0));
    let low = *by_hour.iter().min()?;
    let high = *by_hour.iter().max()?;
    if low >= high {
        return None;
    }
    // Longest circular run of hours at the low.
    let mut best = (0usize, 0usize);
    for start in 0..24 {
        if by_hour[start] != low || by_hour[(start + 23) % 24] == low {
            continue;
        }
        let mut len = 0;
        while len < 24 && by_hour[(start + len) % 24] == low {
            len += 1;
        }
        if len > best.1 {
            best = (start, len);
        }
    }
    (best.1 > 0).then(|| (best.0 as u32, ((best.0 + best.1) % 24) as u32, low))
}

/// GPUs a pool's week schedule leaves idle every day in its low hours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NightRelease {
    /// The low hours, UTC clock hours `[from, to)` (wrapping past midnight).
    pub from: u32,
    pub to: u32,
    /// What the schedule needs then, GPUs.
    pub level: i32,
    /// Installed − level in whole hosts (counted down): at least a host.
    pub spare: i32,
}

/// The pool's release at night, if its schedule's daily low leaves at least a host idle.
pub fn night_release(r: &PoolRecommendation) -> Option<NightRelease> {
    if r.installed_gpus <= 0 {
        return None;
    }
    let (from, to, level) = low_window(&r.week_schedule, r.decided_at)?;
    let hs = r.host_size.max(1);
    let spare = (r.installed_gpus - level) / hs * hs;
    (spare >= hs).then_some(NightRelease {
        from,
        to,
        level,
        spare,
    })
}

/// A pool's host with its GPUs' utilization per UTC clock hour over recent days: (host,
/// GPUs, Σ per-minute utilization per hour of day, minutes with samples per hour of day).
pub type HostHours = (String, i64, [f64; 24], [i64; 24]);

/// A row of [`Store::pool_host_hours`]' query: (pool, host, GPUs, clock hour, Σ
/// utilization, minutes); no hour for a host without sums.
type HostHourRow = (String, String, i64, Option<i32>, Option<f64>, Option<i64>);

/// Up to `gpus` GPUs' worth of whole hosts (of `host_size`), least busy in the clock
/// hours `[from, to)` first (hosts without samples then first), by name.
fn least_busy_in(
    rows: Vec<HostHours>,
    from: u32,
    to: u32,
    gpus: i32,
    host_size: i32,
) -> Vec<String> {
    let hours: Vec<usize> = (0..24)
        .map(|i| ((from + i) % 24) as usize)
        .take_while(|h| from == to || *h != to as usize)
        .collect();
    let mut rows: Vec<DrainHost> = rows
        .into_iter()
        .map(|(host, n, util, minutes)| {
            let m: i64 = hours.iter().map(|h| minutes[*h]).sum();
            let u: f64 = hours.iter().map(|h| util[*h]).sum();
            (host, n, (m > 0).then(|| u / m as f64), None)
        })
        .collect();
    rows.sort_by(|a, b| {
        a.2.partial_cmp(&b.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
    pick_drains(rows, gpus, host_size)
        .into_iter()
        .map(|d| d.host)
        .collect()
}

/// Per clock hour (UTC), the most an hourly schedule starting at `start` asks for in it:
/// the slots starting in the hour, and, when `start` is not on the hour, the ones starting
/// in the hour before, which run into it. `None` for an hour no slot touches.
fn need_by_hour(schedule: &[i32], start: DateTime<Utc>) -> [Option<i32>; 24] {
    let on_the_hour = start.minute() == 0 && start.second() == 0 && start.nanosecond() == 0;
    let mut by_hour = [None; 24];
    let mut raise = |h: usize, v: i32| by_hour[h] = Some(by_hour[h].map_or(v, |n: i32| n.max(v)));
    for (i, v) in schedule.iter().enumerate() {
        let h = (start + Duration::hours(i as i64)).hour() as usize;
        raise(h, *v);
        if !on_the_hour {
            raise((h + 1) % 24, *v);
        }
    }
    by_hour
}

/// The most an hourly schedule starting at `start` asks for in the clock hours `from`..`to`
/// (UTC, wrapping past midnight); `None` when no slot overlaps them.
pub fn need_in_window(schedule: &[i32], start: DateTime<Utc>, from: u32, to: u32) -> Option<i32> {
    let in_window = |h: u32| {
        if from <= to {
            (from..to).contains(&h)
        } else {
            h >= from || h < to
        }
    };
    need_by_hour(schedule, start)
        .into_iter()
        .enumerate()
        .filter(|(h, _)| in_window(*h as u32))
        .filter_map(|(_, n)| n)
        .max()
}

/// Everything the capacity page shows for one pool.
#[derive(Debug, Clone, Serialize)]
pub struct PoolCapacity {
    pub recommendation: PoolRecommendation,
    pub actions: Vec<String>,
}

/// Turn off JIT compilation for the rest of the transaction. The job's scans of weeks
/// of rows have plans costly enough to cross `jit_above_cost`, and compiling them takes
/// longer than running them: 10 s of CPU for 28 days of disk use of 2,000 hosts, which
/// then read in 1.9 s without it.
async fn no_jit(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL jit = off")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Upsert exhaustion rows of `kind`, all in one statement, and drop the rows of that kind
/// this run did not date (a rack without power data, a pool whose trend could not be
/// fitted): a date from an earlier run is not shown, nor alerted on, as if it were new.
async fn save_exhaustions_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    kind: &str,
    rows: &[ExhaustionRow],
) -> Result<(), sqlx::Error> {
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    sqlx::query("DELETE FROM capacity_exhaustion WHERE kind = $1 AND NOT (key = ANY($2))")
        .bind(kind)
        .bind(&keys)
        .execute(&mut **tx)
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO capacity_exhaustion (kind, key, computed_at, capacity, level_now, growth_per_day, unit, exhausted_at,
                                          trend, growth_unit_per_day)
         SELECT * FROM jsonb_to_recordset($1) AS r (kind text, key text, computed_at timestamptz,
            capacity float8, level_now float8, growth_per_day float8, unit text, exhausted_at timestamptz,
            trend text, growth_unit_per_day float8)
         ON CONFLICT (kind, key) DO UPDATE SET computed_at = EXCLUDED.computed_at, capacity = EXCLUDED.capacity,
            level_now = EXCLUDED.level_now, growth_per_day = EXCLUDED.growth_per_day, unit = EXCLUDED.unit,
            exhausted_at = EXCLUDED.exhausted_at, trend = EXCLUDED.trend,
            growth_unit_per_day = EXCLUDED.growth_unit_per_day",
    )
    .bind(Json(rows))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Where pool demand has been computed up to.
    pub async fn demand_watermark(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(
            sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'pool_demand'")
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    async fn set_demand_watermark(&self, t: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO job_state (name, watermark, updated_at) VALUES ('pool_demand', $1, now())
             ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, updated_at = now()",
            t,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Where the 1-minute rollups are complete up to.
    pub async fn rollup_watermark(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(
            sqlx::query_scalar!("SELECT watermark FROM job_state WHERE name = 'rollup_1m'")
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// GPUs in the inventory seen within a day.
    async fn gpu_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM gpus WHERE last_seen > now() - interval '1 day'"#
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Pool demand of the 5-minute slots in `[from, to)` from the 1-minute rollups.
    async fn write_pool_demand(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        idle_util_pct: f64,
    ) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query!(
            "WITH installed AS (
                SELECT h.pool, count(*)::int AS n FROM gpus g JOIN hosts h ON h.id = g.host_id
                 WHERE h.pool <> '' AND h.removed_at IS NULL AND g.last_seen > now() - interval '1 day'
                 GROUP BY h.pool),
             m AS (
                SELECT h.pool, r.bucket,
                       count(*) FILTER (WHERE r.util_pct >= $3) AS busy,
                       coalesce(sum(r.util_pct), 0) / 100.0 AS util
                  FROM gpu_samples_1m r JOIN hosts h ON h.id = r.host_id
                 WHERE r.bucket >= $1 AND r.bucket < $2 AND h.pool <> ''
                 GROUP BY h.pool, r.bucket),
             s AS (
                SELECT pool, date_bin('5 minutes', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS slot,
                       avg(busy)::real AS busy, avg(util)::real AS util
                  FROM m GROUP BY 1, 2)
             INSERT INTO pool_demand (pool, bucket, busy_gpus, util_gpus, queued_gpus, installed_gpus)
             SELECT s.pool, s.slot, s.busy, s.util,
                    coalesce((SELECT q.pending_gpus FROM pool_queue q
                               WHERE q.pool = s.pool AND q.ts < s.slot + interval '5 minutes'
                                 AND q.ts >= s.slot - make_interval(mins => $4)
                               ORDER BY q.ts DESC LIMIT 1), 0)::real,
                    coalesce(i.n, 0)
               FROM s LEFT JOIN installed i ON i.pool = s.pool
             ON CONFLICT (pool, bucket) DO UPDATE SET busy_gpus = EXCLUDED.busy_gpus,
                util_gpus = EXCLUDED.util_gpus, queued_gpus = EXCLUDED.queued_gpus,
                installed_gpus = EXCLUDED.installed_gpus",
            from,
            to,
            idle_util_pct as f32,
            QUEUE_STALE_MINUTES as i32,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Every pool's demand in `[from, to)`, oldest first: one row per pool (arrays), so
    /// a fleet's 28 days (1.6 million slots for 200 pools) cross the wire in 200 rows.
    pub async fn pool_histories(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<PoolHistory>, sqlx::Error> {
        // (pool, slot starts, demand per slot, installed per slot)
        type Row = (String, Vec<DateTime<Utc>>, Vec<f64>, Vec<i32>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT pool, array_agg(bucket), array_agg(util_gpus::float8 + queued_gpus::float8),
                    array_agg(installed_gpus)
               FROM (SELECT pool, bucket, util_gpus, queued_gpus, installed_gpus FROM pool_demand
                      WHERE bucket >= $1 AND bucket < $2 ORDER BY pool, bucket) d
              GROUP BY pool ORDER BY pool",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(pool, buckets, demand, installed)| PoolHistory {
                pool,
                buckets,
                demand,
                installed: installed.last().copied().unwrap_or(0),
            })
            .collect())
    }

    /// The sites of each pool's hosts, the one with most GPUs first.
    async fn pool_sites(&self) -> Result<HashMap<String, Vec<String>>, sqlx::Error> {
        let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
            "SELECT pool, array_agg(site ORDER BY n DESC, site) FROM (
                SELECT h.pool, h.site, count(g.host_id) AS n FROM hosts h
                  LEFT JOIN gpus g ON g.host_id = h.id
                 WHERE h.pool <> '' AND h.removed_at IS NULL GROUP BY h.pool, h.site) x
              GROUP BY pool",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// One pool's demand in `[from, to)`, one point per `bucket_secs` (the slot of highest
    /// demand in it), starting on whole multiples of it since 1970-01-01 UTC.
    pub async fn pool_demand_series(
        &self,
        pool: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        bucket_secs: i64,
    ) -> Result<Vec<DemandPoint>, sqlx::Error> {
        // The slot of highest demand (work + queue) in each point, all its figures from
        // that one slot.
        sqlx::query_as!(
            DemandPoint,
            r#"SELECT DISTINCT ON (1)
                    date_bin(make_interval(secs => $4), bucket, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS "bucket!",
                    busy_gpus AS "busy_gpus!", util_gpus AS "util_gpus!",
                    queued_gpus AS "queued_gpus!", installed_gpus AS "installed_gpus!"
               FROM pool_demand WHERE pool = $1 AND bucket >= $2 AND bucket < $3
              ORDER BY 1, util_gpus + queued_gpus DESC, bucket"#,
            pool,
            from,
            to,
            bucket_secs.max(300) as f64,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The most common GPUs-per-host of each pool.
    async fn pool_host_sizes(&self) -> Result<HashMap<String, u32>, sqlx::Error> {
        let rows = sqlx::query!(
            r#"SELECT DISTINCT ON (pool) pool AS "pool!", n AS "n!" FROM (
                SELECT h.pool, count(*) AS n FROM gpus g JOIN hosts h ON h.id = g.host_id
                 WHERE h.pool <> '' AND h.removed_at IS NULL AND g.last_seen > now() - interval '1 day'
                 GROUP BY h.id, h.pool) x
              GROUP BY pool, n ORDER BY pool, count(*) DESC, n DESC"#,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.pool, r.n.clamp(1, 64) as u32))
            .collect())
    }

    /// The hosts of `pools` with their mean GPU utilization and idle GPU energy over the
    /// 7 days before `now`, least busy first: one pass over those days for all pools.
    async fn drain_hosts(
        &self,
        pools: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<DrainHost>>, sqlx::Error> {
        let mut out: HashMap<String, Vec<DrainHost>> = HashMap::new();
        for (pool, h) in self.pool_hosts(pools, now).await? {
            out.entry(pool)
                .or_default()
                .push((h.host, h.gpus, h.util_pct, h.idle_kwh_7d));
        }
        Ok(out)
    }

    /// The hosts in the fleet of each of `pools` with their GPUs, mean GPU utilization,
    /// idle GPU energy and peak hourly power over the 7 days before `now` (from the energy
    /// accounting's host sums): (pool, host), least busy first (hosts without accounting
    /// first), then by name.
    pub async fn pool_hosts(
        &self,
        pools: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, PoolHost)>, sqlx::Error> {
        type Row = (
            String,
            String,
            String,
            String,
            i64,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "WITH hs AS (
                SELECT h.id, h.name, h.pool, h.site, h.rack, h.last_seen,
                       -- Installed GPUs are those seen in the last day, as the pool's count.
                       (SELECT count(*) FROM gpus g
                         WHERE g.host_id = h.id AND g.last_seen > $3) AS gpus
                  FROM hosts h WHERE h.pool = ANY($1) AND h.removed_at IS NULL)
             SELECT hs.pool, hs.name, hs.site, hs.rack, hs.gpus, p.util_sum / nullif(p.minutes, 0) AS util,
                    p.idle_j / 3.6e6 AS idle_kwh, p.peak_w / 1e3 AS peak_kw, hs.last_seen
               FROM hs LEFT JOIN LATERAL (
                    -- Each host's own week of rows, by the (host_id, hour) key.
                    SELECT sum(p.gpu_util_sum) AS util_sum, sum(p.gpu_minutes) AS minutes,
                           sum(p.gpu_idle_j) AS idle_j, max(p.watts) AS peak_w
                      FROM host_power_hourly p
                     WHERE p.host_id = hs.id AND p.hour >= $2) p ON true
              ORDER BY hs.pool, util NULLS FIRST, hs.name",
        )
        .bind(pools)
        .bind(now - Duration::days(7))
        .bind(now - Duration::days(1))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(pool, host, site, rack, gpus, util, idle, peak, last_seen)| {
                    (
                        pool,
                        PoolHost {
                            host,
                            site,
                            rack,
                            gpus,
                            util_pct: util.map(|u| (u * 10.0).round() / 10.0),
                            idle_kwh_7d: idle.map(|k| (k * 10.0).round() / 10.0),
                            peak_kw_7d: peak.map(|k| (k * 1000.0).round() / 1000.0),
                            last_seen,
                        },
                    )
                },
            )
            .collect())
    }

    /// The hosts in the fleet of each of `pools` with their GPUs' utilization per UTC
    /// clock hour over the 7 days before `now`, from the energy accounting's host sums.
    pub async fn pool_host_hours(
        &self,
        pools: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<HostHours>>, sqlx::Error> {
        let rows: Vec<HostHourRow> = sqlx::query_as(
            "SELECT h.pool, h.name, (SELECT count(*) FROM gpus g WHERE g.host_id = h.id),
                    extract(hour FROM p.hour AT TIME ZONE 'UTC')::int4,
                    sum(p.gpu_util_sum), sum(p.gpu_minutes)::int8
               FROM hosts h LEFT JOIN host_power_hourly p ON p.host_id = h.id AND p.hour >= $2
              WHERE h.pool = ANY($1) AND h.removed_at IS NULL
              GROUP BY h.id, 4",
        )
        .bind(pools)
        .bind(now - Duration::days(7))
        .fetch_all(&self.pool)
        .await?;
        let mut by_host: BTreeMap<(String, String), HostHours> = BTreeMap::new();
        for (pool, host, gpus, hour, util, minutes) in rows {
            let e = by_host
                .entry((pool, host.clone()))
                .or_insert_with(|| (host, gpus, [0.0; 24], [0; 24]));
            if let Some(h) = hour {
                e.2[h as usize] += util.unwrap_or(0.0);
                e.3[h as usize] += minutes.unwrap_or(0);
            }
        }
        let mut out: HashMap<String, Vec<HostHours>> = HashMap::new();
        for ((pool, _), h) in by_host {
            out.entry(pool).or_default().push(h);
        }
        Ok(out)
    }

    /// Store every pool's recommendation, the pools' exhaustion dates and the next-hour
    /// advice of this hour, in one transaction (pages never see half a run).
    async fn save_recommendations(
        &self,
        recs: &[PoolRecommendation],
        exhaustions: &[ExhaustionRow],
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO capacity_recommendations (pool, computed_at, decided_at, installed_gpus, host_size,
                demand_now, next_hour, week_schedule, lead_start, lead_plan, methods, evidence, exhausted_at,
                growth_per_day, consolidation, note, sites, actions, urgency)
             SELECT * FROM jsonb_to_recordset($1) AS r (pool text, computed_at timestamptz,
                decided_at timestamptz, installed_gpus int, host_size int, demand_now float8, next_hour int,
                week_schedule int[], lead_start timestamptz, lead_plan int[], methods jsonb, evidence jsonb,
                exhausted_at timestamptz, growth_per_day float8, consolidation jsonb, note text,
                sites text[], actions text[], urgency smallint)
             ON CONFLICT (pool) DO UPDATE SET computed_at = EXCLUDED.computed_at, decided_at = EXCLUDED.decided_at,
                installed_gpus = EXCLUDED.installed_gpus, host_size = EXCLUDED.host_size,
                demand_now = EXCLUDED.demand_now, next_hour = EXCLUDED.next_hour,
                week_schedule = EXCLUDED.week_schedule, lead_start = EXCLUDED.lead_start,
                lead_plan = EXCLUDED.lead_plan, methods = EXCLUDED.methods, evidence = EXCLUDED.evidence,
                exhausted_at = EXCLUDED.exhausted_at, growth_per_day = EXCLUDED.growth_per_day,
                consolidation = EXCLUDED.consolidation, note = EXCLUDED.note, sites = EXCLUDED.sites,
                actions = EXCLUDED.actions, urgency = EXCLUDED.urgency",
        )
        .bind(Json(recs))
        .execute(&mut *tx)
        .await?;
        // Pools no longer recommended (no host of the fleet is in them) leave the pages, the
        // API, the gauges and the capacity rule.
        let kept: Vec<&str> = recs.iter().map(|r| r.pool.as_str()).collect();
        sqlx::query("DELETE FROM capacity_recommendations WHERE NOT (pool = ANY($1))")
            .bind(&kept)
            .execute(&mut *tx)
            .await?;
        // The next-hour capacity recommended for each hour, for the pool page's chart.
        let (pools, hours, gpus): (Vec<&str>, Vec<DateTime<Utc>>, Vec<i32>) = recs
            .iter()
            .filter(|r| !r.week_schedule.is_empty())
            .filter_map(|r| {
                let hour = r
                    .decided_at
                    .duration_trunc(Duration::hours(1))
                    .unwrap_or(r.decided_at);
                Some((r.pool.as_str(), hour, r.next_hour?))
            })
            .fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |mut acc, (p, h, g)| {
                    acc.0.push(p);
                    acc.1.push(h);
                    acc.2.push(g);
                    acc
                },
            );
        sqlx::query(
            "INSERT INTO capacity_history (pool, hour, recommended)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int[])
             ON CONFLICT (pool, hour) DO UPDATE SET recommended = EXCLUDED.recommended",
        )
        .bind(&pools)
        .bind(&hours)
        .bind(&gpus)
        .execute(&mut *tx)
        .await?;
        save_exhaustions_in(&mut tx, "pool", exhaustions).await?;
        tx.commit().await
    }

    /// Drop the dated disks of hosts taken out of the fleet (the disks are dated once a
    /// day; a host taken out meanwhile leaves at once).
    async fn forget_removed_disks(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM capacity_exhaustion WHERE kind = 'disk'
                AND NOT (key = ANY(ARRAY(SELECT name FROM hosts WHERE removed_at IS NULL)))",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn save_exhaustions(
        &self,
        kind: &str,
        rows: &[ExhaustionRow],
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        save_exhaustions_in(&mut tx, kind, rows).await?;
        tx.commit().await
    }

    /// Past next-hour recommendations of a pool in `[from, to)`.
    pub async fn capacity_history(
        &self,
        pool: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, i32)>, sqlx::Error> {
        let rows = sqlx::query!(
            "SELECT hour, recommended FROM capacity_history WHERE pool = $1 AND hour >= $2 AND hour < $3 ORDER BY hour",
            pool,
            from,
            to,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.hour, r.recommended)).collect())
    }

    /// Every pool's recommendation (or one pool's), by pool.
    pub async fn recommendations(
        &self,
        pool: Option<&str>,
    ) -> Result<Vec<PoolRecommendation>, sqlx::Error> {
        sqlx::query_as(
            "SELECT pool, computed_at, decided_at, installed_gpus, host_size, demand_now, next_hour, week_schedule,
                    lead_start, lead_plan, methods, evidence, exhausted_at, growth_per_day, consolidation, note,
                    sites, actions, urgency
               FROM capacity_recommendations WHERE ($1::text IS NULL OR pool = $1) ORDER BY pool",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await
    }

    /// One page of the pools with hosts at `site` (all pools: None), most urgent first:
    /// orders, then releases, then no change, each soonest to run out first.
    pub async fn recommendations_page(
        &self,
        site: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<PoolRecommendation>, sqlx::Error> {
        sqlx::query_as(
            "SELECT pool, computed_at, decided_at, installed_gpus, host_size, demand_now, next_hour, week_schedule,
                    lead_start, lead_plan, methods, evidence, exhausted_at, growth_per_day, consolidation, note,
                    sites, actions, urgency
               FROM capacity_recommendations WHERE ($1::text IS NULL OR $1 = ANY(sites))
              ORDER BY urgency, exhausted_at NULLS LAST, pool LIMIT $2 OFFSET $3",
        )
        .bind(site)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
    }

    /// Pools in all (site None), then per site, with how many need GPUs and how many can
    /// release some.
    pub async fn capacity_sites(&self) -> Result<Vec<SitePools>, sqlx::Error> {
        sqlx::query_as(
            "SELECT NULL::text AS site, count(*) AS pools, count(*) FILTER (WHERE urgency = 0) AS to_order,
                    count(*) FILTER (WHERE urgency = 1) AS to_release
               FROM capacity_recommendations
             UNION ALL
             SELECT s, count(*), count(*) FILTER (WHERE urgency = 0), count(*) FILTER (WHERE urgency = 1)
               FROM capacity_recommendations, unnest(sites) s GROUP BY s
             ORDER BY site NULLS FIRST",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Hosts that could be drained, per pool with hosts at `site` (all: None), by pool.
    pub async fn drains(&self, site: Option<&str>) -> Result<Vec<PoolDrains>, sqlx::Error> {
        let rows: Vec<(String, Json<Vec<DrainCandidate>>)> = sqlx::query_as(
            "SELECT pool, consolidation FROM capacity_recommendations
              WHERE consolidation <> '[]'::jsonb AND ($1::text IS NULL OR $1 = ANY(sites)) ORDER BY pool",
        )
        .bind(site)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(pool, hosts)| PoolDrains {
                pool,
                hosts: hosts.0,
            })
            .collect())
    }

    /// Up to `limit` exhaustion rows of `kind` (`rack` or `disk`) at `site` (all: None),
    /// soonest first (only those with a date: `dated`), and how many there are in all.
    pub async fn exhaustions_at(
        &self,
        kind: &str,
        site: Option<&str>,
        dated: bool,
        limit: i64,
    ) -> Result<(Vec<ExhaustionRow>, i64), sqlx::Error> {
        #[derive(sqlx::FromRow)]
        struct Counted {
            #[sqlx(flatten)]
            row: ExhaustionRow,
            total: i64,
        }
        let rows: Vec<Counted> = sqlx::query_as(
            "SELECT kind, key, computed_at, capacity, level_now, growth_per_day, unit, exhausted_at, trend,
                    growth_unit_per_day,
                    count(*) OVER () AS total
               FROM capacity_exhaustion e
              WHERE kind = $1 AND (NOT $3 OR exhausted_at IS NOT NULL)
                AND ($2::text IS NULL
                     OR (kind = 'rack' AND left(key, length($2) + 1) = $2 || '/')
                     OR (kind = 'disk' AND EXISTS (SELECT 1 FROM hosts h WHERE h.name = e.key AND h.site = $2)))
              ORDER BY exhausted_at NULLS LAST, key LIMIT $4",
        )
        .bind(kind)
        .bind(site)
        .bind(dated)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let total = rows.first().map_or(0, |r| r.total);
        Ok((rows.into_iter().map(|r| r.row).collect(), total))
    }

    /// Stored exhaustion dates of a kind (`pool`, `rack`, `disk`), soonest first.
    pub async fn exhaustions(&self, kind: Option<&str>) -> Result<Vec<ExhaustionRow>, sqlx::Error> {
        sqlx::query_as!(
            ExhaustionRow,
            "SELECT kind, key, computed_at, capacity, level_now, growth_per_day, unit, exhausted_at, trend,
                    growth_unit_per_day
               FROM capacity_exhaustion WHERE ($1::text IS NULL OR kind = $1)
              ORDER BY exhausted_at NULLS LAST, kind, key",
            kind,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The stored exhaustion of one pool, rack ("site/rack") or disk (host), if dated.
    pub async fn exhaustion(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<ExhaustionRow>, sqlx::Error> {
        sqlx::query_as!(
            ExhaustionRow,
            "SELECT kind, key, computed_at, capacity, level_now, growth_per_day, unit, exhausted_at, trend,
                    growth_unit_per_day
               FROM capacity_exhaustion WHERE kind = $1 AND key = $2",
            kind,
            key,
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Power budgets per "site/rack" in W: the configured ones, then host labels
    /// `rack_power_kw` (the configuration wins).
    async fn rack_budgets(
        &self,
        configured: &BTreeMap<String, f64>,
    ) -> Result<BTreeMap<String, f64>, sqlx::Error> {
        // `labels ? 'rack_power_kw'`: the label is there, so never null.
        let rows = sqlx::query!(
            r#"SELECT DISTINCT site, rack, labels->>'rack_power_kw' AS "kw!" FROM hosts
              WHERE labels ? 'rack_power_kw' AND rack <> ''"#,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for r in rows {
            let (site, rack, kw) = (r.site, r.rack, r.kw);
            if let Ok(v) = kw.trim().parse::<f64>() {
                if v.is_finite() && v > 0.0 {
                    // Hosts of one rack that disagree: the smaller budget holds (the safe
                    // side), whatever order the rows come in.
                    let key = rack_key(&site, &rack);
                    let was = *out.entry(key.clone()).or_insert(v);
                    if was != v {
                        tracing::warn!(
                            rack = %key,
                            "hosts of the rack disagree on the label rack_power_kw ({was} and {v}): the smaller holds; set it once in [capacity.racks]"
                        );
                        out.insert(key, was.min(v));
                    }
                }
            }
        }
        out.extend(configured.iter().map(|(k, v)| (k.clone(), *v)));
        Ok(out)
    }

    /// One rack's mean power per hour in `[from, to)`, W (GPUs and hosts), oldest first.
    pub async fn rack_power_series(
        &self,
        site: &str,
        rack: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, f64)>, sqlx::Error> {
        Ok(sqlx::query!(
            "SELECT hour, watts FROM rack_power_hourly
              WHERE site = $1 AND rack = $2 AND hour >= $3 AND hour < $4 ORDER BY hour",
            site,
            rack,
            from,
            to,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.hour, r.watts))
        .collect())
    }

    /// Mean power per "site/rack" and hour in `[from, to)`, W (GPUs and hosts), from the
    /// energy accounting's rack sums.
    async fn rack_power_hourly(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<(DateTime<Utc>, f64)>>, sqlx::Error> {
        let rows: Vec<(String, DateTime<Utc>, f64)> = sqlx::query_as(
            "SELECT site || '/' || rack, hour, watts FROM rack_power_hourly
              WHERE hour >= $1 AND hour < $2 ORDER BY 1, 2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, Vec<(DateTime<Utc>, f64)>> = HashMap::new();
        for (rack, hour, w) in rows {
            out.entry(rack).or_default().push((hour, w));
        }
        Ok(out)
    }

    async fn disks_computed_today(&self, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM capacity_exhaustion WHERE kind = 'disk' AND computed_at >= $1) AS "exists!""#,
            now.duration_trunc(Duration::days(1)).unwrap_or(now),
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Per host: disk size now, and the daily peak of space used in `[from, to)`.
    #[allow(clippy::type_complexity)]
    async fn disk_daily(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeMap<String, (f64, Vec<(DateTime<Utc>, f64)>)>, sqlx::Error> {
        // Grouped by host id before the names join: hashed per day partition, where
        // grouping by name sorted 5.4 million rows on disk (28 days of 2,000 hosts).
        let mut tx = self.pool.begin().await?;
        no_jit(&mut tx).await?;
        let rows: Vec<(String, DateTime<Utc>, f64, f64)> = sqlx::query_as(
            "SELECT h.name, d.day, d.used, d.total FROM (
                SELECT q.host_id, date_trunc('day', q.bucket, 'UTC') AS day,
                       max(q.disk_used_bytes)::float8 AS used, max(q.disk_total_bytes)::float8 AS total
                  FROM host_samples_15m q
                 WHERE q.bucket >= $1 AND q.bucket < $2 AND q.disk_used_bytes IS NOT NULL
                   AND q.disk_total_bytes > 0
                 GROUP BY 1, 2) d
               JOIN hosts h ON h.id = d.host_id
              ORDER BY 1, 2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out: BTreeMap<String, (f64, Vec<(DateTime<Utc>, f64)>)> = BTreeMap::new();
        for (host, day, used, total) in rows {
            let e = out.entry(host).or_insert((total, Vec::new()));
            e.0 = total;
            e.1.push((day, used));
        }
        Ok(out)
    }

    /// Record a scheduler's report of a pool's pending GPU requests. A late report (a
    /// scheduler's exporter catching up after an outage) also rewrites the queue of the
    /// demand slots it covers that the capacity job has already written, so it counts
    /// from the next run instead of being dropped. Returns those slots.
    pub async fn record_queue(
        &self,
        pool: &str,
        ts: DateTime<Utc>,
        pending_gpus: f64,
        source: &str,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO pool_queue (pool, ts, pending_gpus, source) VALUES ($1, $2, $3, $4)
             ON CONFLICT (pool, ts) DO UPDATE SET pending_gpus = EXCLUDED.pending_gpus, source = EXCLUDED.source",
            pool,
            ts,
            pending_gpus,
            source,
        )
        .execute(&mut *tx)
        .await?;
        // A slot reads the latest report in [its start - stale, its end): this one counts
        // for the slots starting in (ts - 5 min, ts + stale].
        let slots = sqlx::query!(
            "UPDATE pool_demand d SET queued_gpus = coalesce((SELECT q.pending_gpus FROM pool_queue q
                      WHERE q.pool = d.pool AND q.ts < d.bucket + interval '5 minutes'
                        AND q.ts >= d.bucket - make_interval(mins => $3)
                      ORDER BY q.ts DESC LIMIT 1), 0)::real
              WHERE d.pool = $1 AND d.bucket > $2::timestamptz - interval '5 minutes'
                AND d.bucket <= $2::timestamptz + make_interval(mins => $3)",
            pool,
            ts,
            QUEUE_STALE_MINUTES as i32,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(slots)
    }

    /// When a pool's scheduler last reported its queue.
    pub async fn last_queue_report(
        &self,
        pool: &str,
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar!("SELECT max(ts) FROM pool_queue WHERE pool = $1", pool)
            .fetch_one(&self.pool)
            .await
    }

    /// Pool demand slots, scheduler queue reports and past next-hour advice from before
    /// `cutoff` (retention); returns the rows deleted.
    pub async fn drop_capacity_history_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let mut n = 0;
        n += sqlx::query!("DELETE FROM pool_demand WHERE bucket < $1", cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        n += sqlx::query!("DELETE FROM pool_queue WHERE ts < $1", cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        n += sqlx::query!("DELETE FROM capacity_history WHERE hour < $1", cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// Pools with at least one host in the fleet (hosts taken out of it do not count, as in
    /// the capacity job).
    pub async fn pool_names(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar!(
            "SELECT DISTINCT pool FROM hosts WHERE pool <> '' AND removed_at IS NULL ORDER BY pool"
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Pools with hosts in the fleet (seen in the last day) that the capacity job has not
    /// yet recommended for, with their GPUs: a pool whose first hosts just reported. The
    /// gauges show its installed GPUs at once, so an autoscaler's fallback to them holds
    /// until the job's next run.
    pub async fn pools_not_yet_recommended(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT h.pool, count(g.gpu_index) FROM hosts h
                    LEFT JOIN gpus g ON g.host_id = h.id AND g.last_seen > now() - interval '1 day'
              WHERE h.pool <> '' AND h.removed_at IS NULL AND h.last_seen > now() - interval '1 day'
                AND NOT EXISTS (SELECT 1 FROM capacity_recommendations r WHERE r.pool = h.pool)
              GROUP BY h.pool ORDER BY h.pool",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// GPUs of a pool's hosts in the fleet; None when no host of the fleet is in it.
    pub async fn pool_gpus(&self, pool: &str) -> Result<Option<i64>, sqlx::Error> {
        let (hosts, gpus) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT count(*), coalesce((SELECT count(*) FROM gpus g JOIN hosts h ON h.id = g.host_id
                                         WHERE h.pool = $1 AND h.removed_at IS NULL), 0)
               FROM hosts WHERE pool = $1 AND removed_at IS NULL",
        )
        .bind(pool)
        .fetch_one(&self.pool)
        .await?;
        Ok((hosts > 0).then_some(gpus))
    }
}

/// A rack with a power budget, and how many more hosts of a pool its budget takes.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RackRoom {
    /// "site/rack".
    pub rack: String,
    pub budget_kw: f64,
    /// The trend of its daily peak, now.
    pub peak_kw: f64,
    /// Budget − peak (negative: over budget already).
    pub headroom_kw: f64,
    /// More hosts of the pool the headroom takes at the pool's host peak (null: the
    /// pool's hosts have no power accounted yet).
    pub hosts: Option<i64>,
}

/// Where more hosts of a pool could go: the most one of its hosts drew, and the racks with
/// a power budget at its sites, most room first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HostPower {
    /// The most one host of the pool drew in an hour over the last 7 days (each GPU's mean
    /// over the minutes it reported), kW; null before the energy accounting has any.
    pub host_peak_kw: Option<f64>,
    pub racks: Vec<RackRoom>,
}

/// The racks with a dated power budget at `sites`, with the hosts of `host_peak_w` each
/// takes, most room first.
pub fn rack_room(racks: &[ExhaustionRow], sites: &[String], host_peak_w: Option<f64>) -> HostPower {
    let mut out: Vec<RackRoom> = racks
        .iter()
        .filter(|e| e.kind == "rack")
        .filter(|e| {
            let site = e.key.split_once('/').map_or("", |(s, _)| s);
            sites.iter().any(|s| s == site)
        })
        .map(|e| {
            let headroom = e.capacity - e.level_now;
            RackRoom {
                rack: e.key.clone(),
                budget_kw: e.capacity / 1000.0,
                peak_kw: e.level_now / 1000.0,
                headroom_kw: headroom / 1000.0,
                hosts: host_peak_w
                    .filter(|w| *w > 0.0)
                    // (a trend fitted through logs lands a hair off an exact fit)
                    .map(|w| (headroom / w + 1e-6).floor().max(0.0) as i64),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.headroom_kw
            .total_cmp(&a.headroom_kw)
            .then(a.rack.cmp(&b.rack))
    });
    HostPower {
        host_peak_kw: host_peak_w.map(|w| w / 1000.0),
        racks: out,
    }
}

/// The most one of these hosts drew in an hour over their 7 days, W (None: none
/// accounted): the host peak a rack's headroom is set against.
pub fn host_peak_w<'a>(hosts: impl IntoIterator<Item = &'a PoolHost>) -> Option<f64> {
    hosts
        .into_iter()
        .filter_map(|h| h.peak_kw_7d)
        .reduce(f64::max)
        .map(|kw| kw * 1000.0)
}

/// What an order of hosts adds about power: how many more of the pool's hosts the racks
/// with a budget at its sites take (None: no budgeted rack there, or no host power yet).
pub fn room_line(room: &HostPower, sites: &[String]) -> Option<String> {
    let kw = room.host_peak_kw?;
    let best = room.racks.first()?;
    // "fra1", "ams2 and fra1", "ams2, fra1 and lon3": never a list that reads as a clause.
    let at = match sites {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    };
    let total: i64 = room.racks.iter().filter_map(|r| r.hosts).sum();
    Some(if total == 0 {
        format!(
            "power: none of the racks with a budget at {at} has room for another of these hosts (one draws up to {kw:.1} kW; the most headroom is {:.1} kW, in {}): plan rack power with the order",
            best.headroom_kw, best.rack
        )
    } else {
        let fitting: Vec<String> = room
            .racks
            .iter()
            .filter_map(|r| {
                r.hosts
                    .filter(|n| *n > 0)
                    .map(|n| format!("{} {n}", r.rack))
            })
            .collect();
        format!(
            "power: the racks with a budget at {at} take {total} more of these hosts at {kw:.1} kW each ({}{})",
            fitting[..fitting.len().min(3)].join(", "),
            if fitting.len() > 3 { ", …" } else { "" }
        )
    })
}

/// The largest queue a pool's scheduler may report: 100 × its installed GPUs, at least
/// 1,000. More is a unit mistake (jobs × GPUs counted twice, bytes for GPUs) that would
/// set the pool's demand, and with it the recommendations, for days.
pub fn queue_bound(installed_gpus: i64) -> f64 {
    (100 * installed_gpus).max(1000) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_line_lists_sites_so_that_none_reads_as_having_room() {
        let room = HostPower {
            host_peak_kw: Some(5.8),
            racks: vec![RackRoom {
                rack: "fra1/r03".into(),
                budget_kw: 40.0,
                peak_kw: 35.9,
                headroom_kw: 4.1,
                hosts: Some(0),
            }],
        };
        let sites = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            room_line(&room, &sites(&["ams2", "fra1"])).unwrap(),
            "power: none of the racks with a budget at ams2 and fra1 has room for another of these hosts (one draws up to 5.8 kW; the most headroom is 4.1 kW, in fra1/r03): plan rack power with the order"
        );
        let three = room_line(&room, &sites(&["ams2", "fra1", "lon3"])).unwrap();
        assert!(three.contains("at ams2, fra1 and lon3 has"), "{three}");
    }

    #[test]
    fn a_stored_exhaustion_draws_the_fitted_trend_of_either_shape() {
        let end: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        let now = end + Duration::minutes(40);
        for (trend, growth, want) in [
            (cap::Trend::Exponential, 0.02, "exponential"),
            (cap::Trend::Linear, 150.0, "linear"),
            (cap::Trend::Linear, -150.0, "linear"),
        ] {
            let x = cap::Exhaustion {
                capacity: 12_000.0,
                level_now: 9_000.0,
                growth_per_day: growth,
                relative_growth_per_day: match trend {
                    cap::Trend::Exponential => growth,
                    cap::Trend::Linear => growth / 9_000.0,
                },
                trend,
                date: None,
                days_fitted: 14,
                now: end,
                host_size: 1,
            };
            let row = ExhaustionRow::fitted("rack", "fra1/r1".into(), now, "W", &x);
            assert_eq!(row.trend, want);
            for days in [0.0, 0.5, 3.0, 20.0, 90.0] {
                let at = now + Duration::seconds((days * 86_400.0) as i64);
                let (got, fit) = (row.level_at(at), x.level_at(at));
                assert!(
                    (got - fit).abs() < 1e-6 * fit.max(1.0),
                    "{trend:?} {days}: {got} vs {fit}"
                );
            }
            let slope = (row.level_at(now + Duration::seconds(60)) - row.level_now) * 1440.0;
            assert!(
                (slope - row.growth_unit_per_day).abs() < 1e-3 * growth.abs().max(1.0) * 9.0,
                "{slope}"
            );
        }
    }

    #[test]
    fn a_budget_whose_date_has_passed_is_exceeded_already() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let out = |d: Option<&str>| budget_outlook(d.map(|d| d.parse().unwrap()), now, 90);
        assert_eq!(out(Some("2027-01-10T03:00:00Z")), "runs out on 2027-01-10");
        assert_eq!(out(Some("2026-12-07T11:00:00Z")), "is exceeded already");
        assert_eq!(out(None), "does not run out within 90 days");
    }

    fn rec(
        schedule: Vec<i32>,
        lead: Vec<i32>,
        installed: i32,
        host_size: i32,
    ) -> PoolRecommendation {
        let t: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        PoolRecommendation {
            pool: "p".into(),
            computed_at: t,
            decided_at: t,
            installed_gpus: installed,
            host_size,
            demand_now: Some(1.0),
            next_hour: Some(1),
            week_schedule: schedule,
            lead_start: t + Duration::days(7),
            lead_plan: lead,
            methods: Json(Methods::default()),
            evidence: Json(EvidenceView::default()),
            exhausted_at: None,
            growth_per_day: None,
            consolidation: Json(Vec::new()),
            note: String::new(),
            sites: Vec::new(),
            actions: Vec::new(),
            urgency: 0,
        }
    }

    #[test]
    fn actions_say_what_to_buy_and_what_to_release() {
        let t: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        // Growth: the plan a week ahead needs 40 on 32 installed, hosts of 8.
        let mut r = rec(vec![30; 168], vec![40; 168], 32, 8);
        r.growth_per_day = Some(0.02);
        assert_eq!(
            actions(&r, 7, t)[0],
            "add 1 host (8 GPUs) by 2026-12-14 (demand grows 2.0 %/day; the plan for the week from then needs 40 GPUs, 32 installed)"
        );
        // Demand already at the installed GPUs: now, the lead date the latest.
        r.growth_per_day = Some(0.0);
        r.exhausted_at = Some(t - Duration::hours(1));
        assert_eq!(
            actions(&r, 7, t)[0],
            "add 1 host (8 GPUs) now (demand (work + queue) already reaches the 32 installed GPUs at its peak; the plan for the week from 2026-12-14 needs 40 GPUs, 32 installed)"
        );
        // Short every hour of this week already: the advice says so.
        let mut short = rec(vec![36; 168], vec![40; 168], 32, 8);
        short.exhausted_at = Some(t - Duration::hours(1));
        assert_eq!(
            actions(&short, 7, t)[0],
            "add 1 host (8 GPUs) now (this week's schedule needs more than the 32 installed GPUs every hour, 36 at its lowest; the plan for the week from 2026-12-14 needs 40 GPUs, 32 installed)"
        );
        r.exhausted_at = None;
        // The same plan for a flat pool is only its safety margin: no order.
        r.growth_per_day = Some(0.0);
        assert!(
            actions(&r, 7, t)[0].starts_with("no change"),
            "{:?}",
            actions(&r, 7, t)
        );
        // A diurnal pool: 24 at night (22:00-07:00 UTC), 40 by day, 40 installed.
        let day: Vec<i32> = (0..168)
            .map(|i| if (7..22).contains(&(i % 24)) { 40 } else { 24 })
            .collect();
        let r = rec(day.clone(), day.clone(), 40, 1);
        let a = actions(&r, 7, t);
        assert_eq!(
            a[0],
            "release 16 GPUs nights 22:00–07:00 UTC (the schedule needs 24 then, 40 at the daily peak, 40 installed)"
        );
        assert_eq!(low_window(&r.week_schedule, t), Some((22, 7, 24)));
        // A pool that grows: the plan ahead needs 32 at night. The release holds until then,
        // and the advice says so.
        let grown: Vec<i32> = day.iter().map(|g| if *g == 24 { 32 } else { 40 }).collect();
        let r = rec(day.clone(), grown, 40, 1);
        assert_eq!(
            actions(&r, 7, t)[0],
            "release 16 GPUs nights 22:00–07:00 UTC (the schedule needs 24 then, 40 at the daily peak, 40 installed; from 2026-12-14 the plan ahead needs 32 then: release 8 GPUs then)"
        );
        assert_eq!(need_in_window(&r.lead_plan, r.lead_start, 22, 7), Some(32));
        assert_eq!(need_in_window(&r.lead_plan, r.lead_start, 8, 9), Some(40));
        // A schedule decided at 00:45: its night slots run 22:45–07:45, so the whole clock
        // hours at the low are 23:00–07:00 (the slot to 22:45 still needs 40).
        let off = t + Duration::minutes(45);
        let day_off: Vec<i32> = (0..168)
            .map(|i| {
                let h = (off + Duration::hours(i)).hour();
                if (7..22).contains(&h) {
                    40
                } else {
                    24
                }
            })
            .collect();
        assert_eq!(low_window(&day_off, off), Some((23, 7, 24)));
        // Enough and no pattern: no change.
        let r = rec(vec![10; 168], vec![10; 168], 10, 1);
        assert!(
            actions(&r, 7, t)[0].starts_with("no change"),
            "{:?}",
            actions(&r, 7, t)
        );
        // A young pool (no plan ahead yet) whose queue jumped: this week's schedule above
        // what is installed is an order, not "no change".
        let mut young = rec(vec![100; 168], Vec::new(), 8, 1);
        // Without a queue, a schedule above the installed GPUs is only its margin.
        assert!(actions(&young, 7, t)[0].starts_with("no change"));
        assert!(!short_within(&young, Duration::days(7), t));
        young.demand_now = Some(100.0);
        assert_eq!(
            actions(&young, 7, t)[0],
            "add 92 GPUs as soon as possible: this week's schedule needs more than the 8 installed GPUs every hour (100 at its lowest, 100 at its peak)"
        );
        assert!(short_within(&young, Duration::days(7), t));
        let calm = rec(vec![6; 168], Vec::new(), 8, 1);
        assert_eq!(
            actions(&calm, 7, t),
            ["no change: 8 installed GPUs cover the plan (peak 6 this week, no plan ahead yet)"]
        );
    }

    #[test]
    fn a_release_all_week_leaves_the_plan_ahead_its_gpus_and_never_sits_beside_an_order() {
        let t: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        let host = |name: &str, util: Option<f64>| (name.to_string(), 8, util, Some(1.0));
        // 64 installed in hosts of 8; this week peaks at 40, the plan ahead at 56: one host
        // (8 GPUs) is spare, not three. A host without a week of accounting is not named
        // (its load is unknown), and the hosts named are whole ones.
        let rows = vec![
            host("new", None),
            host("a", Some(1.0)),
            host("b", Some(2.0)),
            host("c", Some(3.0)),
        ];
        let drains = pick_drains(rows, 64 - 56, 8);
        assert_eq!(
            drains.iter().map(|d| d.host.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(drains[0].util_pct, 1.0);
        let mut r = rec(vec![40; 168], vec![56; 168], 64, 8);
        r.consolidation = Json(drains);
        assert_eq!(
            actions(&r, 7, t),
            ["release 1 host (8 GPUs) all week: the recommended peak is 40 (56 in the plan ahead) of 64 installed (drain a)"]
        );
        // A pool that must grow gets its order and no release beside it.
        r.lead_plan = vec![72; 168];
        r.growth_per_day = Some(0.01);
        r.exhausted_at = Some(t + Duration::days(5));
        let a = actions(&r, 7, t);
        assert!(
            a[0].starts_with("add 1 host (8 GPUs) by 2026-12-14"),
            "{a:?}"
        );
        assert!(!a.iter().any(|x| x.contains("all week")), "{a:?}");
        // A pool idle all week keeps one host.
        let rows = vec![host("a", Some(0.0)), host("b", Some(0.0))];
        assert_eq!(pick_drains(rows, 16, 8).len(), 1);
        // A host with no GPU seen lately, or of unknown use, is not the one that stays.
        let rows = vec![
            ("dead".to_string(), 0, None, None),
            host("new", None),
            host("a", Some(0.0)),
        ];
        assert!(pick_drains(rows, 16, 8).is_empty());
        // At the installed GPUs but falling: no order, and the words say why.
        let mut flat = rec(vec![30; 168], vec![30; 168], 32, 8);
        flat.growth_per_day = Some(-0.0025);
        flat.exhausted_at = Some(t);
        assert_eq!(
            actions(&flat, 7, t)[0],
            "no order yet: demand's daily peaks are at the 32 installed GPUs but not growing (-0.2 %/day), and the plan ahead needs 30"
        );
        // The alert agrees with the words: not short.
        assert!(!short_within(&flat, Duration::days(7), t));
        // A young pool has no plan ahead to quote.
        flat.lead_plan = Vec::new();
        assert!(actions(&flat, 7, t)[0]
            .ends_with("and there is no plan ahead yet (less history than the lead time)"));
        // Growing slowly past its trend's date, the plan ahead still fitting: an order, with
        // no date already gone, and the alert fires on it.
        let mut slow = rec(vec![30; 168], vec![31; 168], 32, 8);
        slow.growth_per_day = Some(0.0003);
        slow.exhausted_at = Some(t - Duration::days(1));
        assert_eq!(
            actions(&slow, 7, t)[0],
            "order more before the trend runs out: demand grows 0.03 %/day and its daily peaks already reach (32 GPUs installed; the plan for the week from 2026-12-14 needs 31)"
        );
        assert!(short_within(&slow, Duration::days(7), t));
        // Queued work every hour: an order, and no "no order yet" beside it.
        let mut queued = rec(vec![40; 168], vec![30; 168], 32, 8);
        queued.growth_per_day = Some(-0.001);
        queued.exhausted_at = Some(t);
        queued.demand_now = Some(40.0);
        let a = actions(&queued, 7, t);
        assert!(
            a[0].starts_with("add 1 host (8 GPUs) as soon as possible"),
            "{a:?}"
        );
        assert!(!a.iter().any(|x| x.starts_with("no order yet")), "{a:?}");
        assert!(short_within(&queued, Duration::days(7), t));
    }

    #[test]
    fn a_night_release_counts_whole_hosts_down() {
        let t: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        // 31 installed in hosts of 8 (a GPU dropped off), 8 needed at night: 23 spare is
        // two whole hosts, not three (which would leave 7 for 8).
        let week: Vec<i32> = (0..168)
            .map(|h| if (h % 24) < 8 { 8 } else { 30 })
            .collect();
        let r = rec(week, Vec::new(), 31, 8);
        let a = actions(&r, 7, t);
        assert!(
            a.iter()
                .any(|x| x.starts_with("release 2 hosts (16 GPUs) nights")),
            "{a:?}"
        );
    }

    #[test]
    fn the_demand_grid_places_slots_and_leaves_gaps() {
        let t: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        let p = |m: i64, v: f32| DemandPoint {
            bucket: t + Duration::minutes(m),
            busy_gpus: v,
            util_gpus: v,
            queued_gpus: 1.0,
            installed_gpus: 8,
        };
        let g = grid(
            &[p(0, 2.0), p(10, 3.0), p(60, 9.0)],
            t,
            t + Duration::minutes(30),
        );
        assert_eq!(g, vec![Some(3.0), None, Some(4.0), None, None, None]);
    }
}
