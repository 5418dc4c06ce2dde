//! Next-hour capacity (the `autoscale` track).
//!
//! Nine *bases* say where demand is now and how far it may come back up: the last sample,
//! the peak of the last 1 h and 3 h, and the last sample moved a fraction λ of the way
//! towards the peak of the last 24 h (λ = 0.1, 0.25, 0.5, 0.75) or 6 h (λ = 0.25, 0.5).
//! Each base becomes two candidates by adding an offset *recalibrated for the price*: the
//! P/(P+1) quantile of the pool's own residuals (sample − base) over the last week, either
//! one offset for all hours or one per hour of day (hours within ±5 h of the same clock
//! hour). That quantile is exactly the offset that minimizes idle + P × unserved on those
//! residuals. The 18 candidates are ranked by what they would have cost on the same week
//! (whole GPUs or hosts, price P) and the best four are averaged.
//!
//! Why these and not one: on the 15 dev pools a single base with a recalibrated offset
//! costs 0.191 / 0.232 (dev week / week before), the hindsight-best constant offset on the
//! best single base 0.183 / 0.225, and the per-pool ranked top-4 0.170 / 0.215
//! (`docs/capacity.md`).

use crate::cost::{hour_cost, CostAcc};
use crate::grid::{quantile, round_up, Grid};
use crate::{Backtest, Settings};

/// Where a candidate starts from at a decision boundary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Base {
    /// the last observed sample
    Last,
    /// the peak of the last `n` hours
    Max(usize),
    /// the last sample moved `lambda` of the way to the peak of the last `hours` hours
    Toward { lambda: f64, hours: usize },
}

impl Base {
    fn name(self) -> String {
        match self {
            Base::Last => "last".to_string(),
            Base::Max(n) => format!("max{n}h"),
            Base::Toward { lambda, hours } => format!("last+{lambda}(max{hours}h-last)"),
        }
    }
}

/// The bases, in the order ties are broken.
pub(crate) const BASES: [Base; 9] = [
    Base::Max(1),
    Base::Last,
    Base::Max(3),
    Base::Toward {
        lambda: 0.1,
        hours: 24,
    },
    Base::Toward {
        lambda: 0.25,
        hours: 24,
    },
    Base::Toward {
        lambda: 0.5,
        hours: 24,
    },
    Base::Toward {
        lambda: 0.75,
        hours: 24,
    },
    Base::Toward {
        lambda: 0.25,
        hours: 6,
    },
    Base::Toward {
        lambda: 0.5,
        hours: 6,
    },
];

/// Hours either side of a clock hour whose residuals calibrate that hour's offset (5: an
/// 11-hour band, day or night; dev / week before at ±1, 3, 5, 7, 10 h: 0.174 / 0.228,
/// 0.170 / 0.220, 0.170 / 0.216, 0.173 / 0.217, 0.175 / 0.220; both weeks pick 5).
const HOD_HALF_WIDTH: usize = 5;
/// Hours of history a window hour needs before it (the longest base looks back 24 h).
const MIN_LOOKBACK: usize = 24;
/// Fewest calibration hours for a recalibrated candidate; below it the fallback is used.
const MIN_WINDOW_HOURS: usize = 24;

/// Base values at every hour boundary of a grid.
pub(crate) struct BaseValues {
    /// last observed sample before boundary t (NaN until the first observation)
    last: Vec<f64>,
    /// hour peaks, gaps filled forward
    hmf: Vec<f64>,
}

impl BaseValues {
    pub fn new(g: &Grid) -> BaseValues {
        let mut last = vec![f64::NAN; g.hours + 1];
        let mut cur = f64::NAN;
        for h in 0..g.hours {
            if let Some(&v) = g.hour(h).iter().rev().find(|v| !v.is_nan()) {
                cur = v;
            }
            last[h + 1] = cur;
        }
        let mut hmf = g.hour_max();
        let mut prev = f64::NAN;
        for v in hmf.iter_mut() {
            if v.is_nan() {
                *v = prev;
            } else {
                prev = *v;
            }
        }
        BaseValues { last, hmf }
    }

    fn max_before(&self, t: usize, n: usize) -> f64 {
        if t < n {
            return f64::NAN;
        }
        self.hmf[t - n..t]
            .iter()
            .filter(|v| !v.is_nan())
            .fold(f64::NAN, |m, &v| if m.is_nan() || v > m { v } else { m })
    }

    /// The base's value at boundary `t` (start of hour `t`), from hours before `t` only.
    pub fn value(&self, base: Base, t: usize) -> f64 {
        let last = self.last[t];
        match base {
            Base::Last => last,
            Base::Max(n) => self.max_before(t, n),
            Base::Toward { lambda, hours } => last + lambda * (self.max_before(t, hours) - last),
        }
    }
}

/// Residuals of one base over a calibration window, grouped by clock hour.
struct Residuals {
    all: Vec<f64>,
    by_hod: [Vec<f64>; 24],
}

impl Residuals {
    fn collect(g: &Grid, bv: &BaseValues, base: Base, lo: usize, hi: usize) -> (Residuals, usize) {
        let mut r = Residuals {
            all: Vec::with_capacity((hi - lo) * g.sph),
            by_hod: std::array::from_fn(|_| Vec::new()),
        };
        let mut hours = 0;
        for h in lo..hi {
            let b = bv.value(base, h);
            if b.is_nan() {
                continue;
            }
            hours += 1;
            let hod = g.hod(h);
            for &d in g.hour(h) {
                if !d.is_nan() {
                    r.all.push(d - b);
                    r.by_hod[hod].push(d - b);
                }
            }
        }
        (r, hours)
    }

    fn global_offset(&self, q: f64, scratch: &mut Vec<f64>) -> f64 {
        scratch.clear();
        scratch.extend_from_slice(&self.all);
        let o = quantile(scratch, q);
        if o.is_nan() {
            0.0
        } else {
            o
        }
    }

    fn hod_offsets(&self, q: f64, scratch: &mut Vec<f64>) -> [f64; 24] {
        let mut out = [0.0; 24];
        for (g, o) in out.iter_mut().enumerate() {
            scratch.clear();
            for d in 0..=2 * HOD_HALF_WIDTH {
                let hod = (g + 24 + d - HOD_HALF_WIDTH) % 24;
                scratch.extend_from_slice(&self.by_hod[hod]);
            }
            let v = quantile(scratch, q);
            *o = if v.is_nan() { 0.0 } else { v };
        }
        out
    }
}

/// A recalibrated candidate: a base plus one offset, or one offset per clock hour.
#[derive(Clone, Debug)]
pub(crate) struct Calibrated {
    pub base: Base,
    pub by_hod: bool,
    offsets: [f64; 24],
    /// mean cost per window hour (idle + P × unserved GPU-h) of the rounded capacity
    pub window_cost: f64,
}

impl Calibrated {
    fn offset(&self, hod: usize) -> f64 {
        self.offsets[hod]
    }

    /// The candidate's name as shown to the planner.
    pub fn name(&self) -> String {
        format!(
            "{}+q{}",
            self.base.name(),
            if self.by_hod { "(hour-of-day)" } else { "" }
        )
    }
}

/// Calibrates the candidates of `bases` on hours `[lo, hi)` and scores them there, best first.
fn calibrate(
    g: &Grid,
    bv: &BaseValues,
    bases: &[Base],
    lo: usize,
    hi: usize,
    s: &Settings,
) -> Vec<Calibrated> {
    let q = s.quantile();
    let mut scratch = Vec::with_capacity((hi - lo) * g.sph);
    let mut out = Vec::with_capacity(2 * bases.len());
    for &base in bases {
        let (res, hours) = Residuals::collect(g, bv, base, lo, hi);
        if hours < MIN_WINDOW_HOURS.min(hi - lo) || res.all.is_empty() {
            continue;
        }
        let global = [res.global_offset(q, &mut scratch); 24];
        let hod = res.hod_offsets(q, &mut scratch);
        for (by_hod, offsets) in [(false, global), (true, hod)] {
            let mut c = Calibrated {
                base,
                by_hod,
                offsets,
                window_cost: 0.0,
            };
            let (mut tot, mut n) = (0.0, 0usize);
            for h in lo..hi {
                let b = bv.value(base, h);
                if b.is_nan() {
                    continue;
                }
                let cap = f64::from(round_up(b + c.offset(g.hod(h)), s.host_size));
                tot += hour_cost(cap, g.hour(h), s.price, g.sph);
                n += 1;
            }
            c.window_cost = if n > 0 { tot / n as f64 } else { f64::INFINITY };
            out.push(c);
        }
    }
    // stable: ties keep the BASES order, global before hour-of-day
    out.sort_by(|a, b| a.window_cost.total_cmp(&b.window_cost));
    out
}

/// Capacity (unrounded) of an ensemble of calibrated candidates at boundary `t`.
fn ensemble_value(g: &Grid, bv: &BaseValues, members: &[Calibrated], t: usize) -> f64 {
    let vals: Vec<f64> = members
        .iter()
        .map(|c| bv.value(c.base, t) + c.offset(g.hod(t)))
        .filter(|v| !v.is_nan())
        .collect();
    if vals.is_empty() {
        f64::NAN
    } else {
        vals.iter().sum::<f64>() / vals.len() as f64
    }
}

/// The highest sample of the last `hours` hours before boundary `t` (all history if none).
fn recent_max(g: &Grid, t: usize, hours: usize) -> f64 {
    let lo = t.saturating_sub(hours) * g.sph;
    let m = g.x[lo..t * g.sph]
        .iter()
        .filter(|v| !v.is_nan())
        .fold(f64::NAN, |m, &v| if m.is_nan() || v > m { v } else { m });
    if m.is_nan() {
        g.x[..t * g.sph]
            .iter()
            .filter(|v| !v.is_nan())
            .fold(0.0, |m, &v| f64::max(m, v))
    } else {
        m
    }
}

/// The next-hour decision on a grid: (capacity, method name, chosen ensemble).
pub(crate) fn decide(g: &Grid, bv: &BaseValues, s: &Settings) -> (u32, String, Vec<Calibrated>) {
    let t = g.hours;
    let window = s.autoscale_window_days as usize * 24;
    let lo = t.saturating_sub(window).max(MIN_LOOKBACK);
    if t < lo + MIN_WINDOW_HOURS {
        let cap = round_up(recent_max(g, t, 24), s.host_size);
        return (cap, "fallback:max24h".to_string(), Vec::new());
    }
    let ranked = calibrate(g, bv, &BASES, lo, t, s);
    let members: Vec<Calibrated> = ranked
        .into_iter()
        .filter(|c| !bv.value(c.base, t).is_nan())
        .take(s.autoscale_ensemble.max(1))
        .collect();
    let v = ensemble_value(g, bv, &members, t);
    if v.is_nan() {
        let cap = round_up(recent_max(g, t, 24), s.host_size);
        return (cap, "fallback:max24h".to_string(), Vec::new());
    }
    let name = format!(
        "mean of {}",
        members
            .iter()
            .map(Calibrated::name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    (round_up(v, s.host_size), name, members)
}

/// What the chosen ensemble, recalibrated once a week on the week before, would have cost
/// over the last `evidence_days`, next to the 24-hour moving-window max. The earliest
/// block starts once a day of history is there to calibrate it, so a pool with a few days
/// of history gets its evidence over the days after its first two.
pub(crate) fn evidence(
    g: &Grid,
    bv: &BaseValues,
    members: &[Calibrated],
    method: &str,
    s: &Settings,
) -> Backtest {
    let t = g.hours;
    let span = s.evidence_days as usize * 24;
    let window = s.autoscale_window_days as usize * 24;
    let mut ours = CostAcc::new(g.sph);
    let mut base = CostAcc::new(g.sph);
    let mut block_end = t;
    while block_end > t.saturating_sub(span) && block_end > MIN_LOOKBACK + MIN_WINDOW_HOURS {
        let block_start = block_end
            .saturating_sub(168)
            .max(t.saturating_sub(span))
            .max(MIN_LOOKBACK + MIN_WINDOW_HOURS);
        let lo = block_start.saturating_sub(window).max(MIN_LOOKBACK);
        if block_start >= lo + MIN_WINDOW_HOURS {
            // recalibrate the chosen members on the week before the block
            let recal: Vec<Calibrated> = if members.is_empty() {
                Vec::new()
            } else {
                let mut bases: Vec<Base> = Vec::new();
                for m in members {
                    if !bases.contains(&m.base) {
                        bases.push(m.base);
                    }
                }
                let all = calibrate(g, bv, &bases, lo, block_start, s);
                members
                    .iter()
                    .filter_map(|m| {
                        all.iter()
                            .find(|c| c.base == m.base && c.by_hod == m.by_hod)
                            .cloned()
                    })
                    .collect()
            };
            for h in block_start..block_end {
                let v = if recal.is_empty() {
                    recent_max(g, h, 24)
                } else {
                    ensemble_value(g, bv, &recal, h)
                };
                if v.is_nan() {
                    continue;
                }
                ours.add_hour(f64::from(round_up(v, s.host_size)), g.hour(h));
                base.add_hour(
                    f64::from(round_up(recent_max(g, h, 24), s.host_size)),
                    g.hour(h),
                );
            }
        }
        block_end = block_start;
    }
    Backtest {
        method: method.to_string(),
        ours: ours.summary(s.price, g.mean),
        baseline: "moving-window max 24 h".to_string(),
        baseline_cost: base.summary(s.price, g.mean),
    }
}
