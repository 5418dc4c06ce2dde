//! Weekly plans (the `plan` and `plan_lead7` tracks): one capacity per hour for the
//! `hours` hours that start `lead` hours after the decision.
//!
//! Each candidate is a *level* (a P/(P+1) quantile of recent demand, computed one of
//! several ways) plus a safety margin. The pool's own past chooses the level: every
//! candidate is replayed from daily origins over the last `evidence_days` (the same lead,
//! and for a lead-time plan also lead 0, with the margin the plan will hold; the plan's
//! hours cut at the decision time) and the one with the lowest mean window cost at price P
//! wins; with no complete origin the first
//! candidate (VPA-style decayed p95.2, half-life 24 h) is used. A lead-time plan from less
//! history than its lead (`ShortHistory::Extrapolate`) holds the peak of that history.
//!
//! The margin is a setting, not a per-pool fit: on these pools the week-to-week level
//! shifts (replicas added, a burst of queued jobs) are not predictable from two or three
//! weeks of one pool's past, and per-pool backtest margins made the plans worse
//! (`docs/capacity.md`). A plan decided now and a lead-time plan have their own rule
//! (`Settings::plan_margin`, `Settings::lead_plan_margin`): by default the first holds
//! level × 1.2 all week, the second a fraction of the pool's mean demand of the last 7 days
//! that grows with each planned hour's distance from the decision.

use crate::cost::CostAcc;
use crate::grid::{quantile, round_up, weighted_quantile, Grid};
use crate::{Backtest, LeadBacktest, MarginBasis, MarginRule, PlanMethod, Settings};

/// Fewest hours of history before a backtest origin.
const MIN_ORIGIN_HOURS: usize = 48;

/// Decayed quantile of the samples before hour `t`.
fn decayed(g: &Grid, t: usize, q: f64, half_life_h: f64, window_days: u32) -> f64 {
    let hi = t * g.sph;
    let lo = t.saturating_sub(window_days as usize * 24) * g.sph;
    let mut v: Vec<(f64, f64)> = (lo..hi)
        .filter(|&i| !g.x[i].is_nan())
        .map(|i| {
            let age_h = (hi - 1 - i) as f64 / g.sph as f64;
            (
                g.x[i],
                (-age_h / half_life_h * std::f64::consts::LN_2).exp(),
            )
        })
        .collect();
    weighted_quantile(&mut v, q)
}

/// Plain quantile of the samples of the last `days` before hour `t`.
fn window_q(g: &Grid, t: usize, q: f64, days: u32) -> f64 {
    let lo = t.saturating_sub(days as usize * 24) * g.sph;
    let mut v: Vec<f64> = g.x[lo..t * g.sph]
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    quantile(&mut v, q)
}

/// Robust slope (per day) of the daily P/(P+1) quantiles of the last `days` before `t`
/// (Theil–Sen: the median of all pairwise slopes; 0 with fewer than 4 days).
pub(crate) fn daily_quantiles(g: &Grid, t: usize, q: f64, days: usize) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    for k in (1..=days).rev() {
        if t < 24 * k {
            continue;
        }
        let a = (t - 24 * k) * g.sph;
        let b = (t - 24 * (k - 1)) * g.sph;
        let mut v: Vec<f64> = g.x[a..b].iter().copied().filter(|v| !v.is_nan()).collect();
        // a day counts when a quarter of it was observed
        if v.len() * 4 >= 24 * g.sph {
            pts.push((-(k as f64) + 0.5, quantile(&mut v, q)));
        }
    }
    pts
}

/// Theil–Sen fit: (slope, intercept) of y on x; None with fewer than `min` points.
pub(crate) fn theil_sen(pts: &[(f64, f64)], min: usize) -> Option<(f64, f64)> {
    if pts.len() < min.max(2) {
        return None;
    }
    let mut slopes = Vec::with_capacity(pts.len() * (pts.len() - 1) / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dx = pts[j].0 - pts[i].0;
            if dx.abs() > 1e-12 {
                slopes.push((pts[j].1 - pts[i].1) / dx);
            }
        }
    }
    let b = quantile(&mut slopes, 0.5);
    let mut icpt: Vec<f64> = pts.iter().map(|p| p.1 - b * p.0).collect();
    let a = quantile(&mut icpt, 0.5);
    (b.is_finite() && a.is_finite()).then_some((b, a))
}

/// Clock hours either side of an hour that share its hour-of-day quantile. With 1 a
/// diurnal pool's plan holds the day level one hour early and one hour late (a guard band
/// against shifted start times); with 0 the quantiles are noisier and the plans cost more
/// (mean over 11 pseudo-weeks 0.782 vs 0.770, dev-week median 0.507 vs 0.330).
const HOD_HALF_WIDTH: usize = 1;

/// Per clock hour, the quantile of the samples within ±HOD_HALF_WIDTH h of it over the
/// last `days`.
fn hod_profile(g: &Grid, t: usize, q: f64, days: u32) -> [f64; 24] {
    let lo = t.saturating_sub(days as usize * 24);
    let mut by: [Vec<f64>; 24] = std::array::from_fn(|_| Vec::new());
    for h in lo..t {
        by[g.hod(h)].extend(g.hour(h).iter().copied().filter(|v| !v.is_nan()));
    }
    let mut out = [f64::NAN; 24];
    let mut scratch = Vec::new();
    for (c, o) in out.iter_mut().enumerate() {
        scratch.clear();
        for d in 0..=2 * HOD_HALF_WIDTH {
            scratch.extend_from_slice(&by[(c + 24 + d - HOD_HALF_WIDTH) % 24]);
        }
        *o = quantile(&mut scratch, q);
    }
    out
}

/// The unrounded schedule of one candidate decided at hour `t` for hours
/// `t + lead .. t + lead + hours`, before the margin. None if it has no data.
fn schedule(
    g: &Grid,
    t: usize,
    lead: usize,
    hours: usize,
    m: &PlanMethod,
    q: f64,
) -> Option<Vec<f64>> {
    let base = |t: usize| decayed(g, t, q, 24.0, 8);
    let flat = |v: f64| (v.is_finite()).then(|| vec![v; hours]);
    match *m {
        PlanMethod::Decayed {
            half_life_hours,
            window_days,
        } => flat(decayed(g, t, q, half_life_hours, window_days)),
        PlanMethod::Window { days } => flat(window_q(g, t, q, days)),
        PlanMethod::Peak { days } => flat(window_q(g, t, 1.0, days)),
        PlanMethod::HourOfDay { days } => {
            let lvl = base(t);
            if !lvl.is_finite() {
                return None;
            }
            let prof = hod_profile(g, t, q, days);
            Some(
                (0..hours)
                    .map(|k| {
                        let p = prof[g.hod(t + lead + k)];
                        if p.is_finite() {
                            p
                        } else {
                            lvl
                        }
                    })
                    .collect(),
            )
        }
        PlanMethod::Trend { days } => {
            let lvl = base(t);
            if !lvl.is_finite() {
                return None;
            }
            let slope = theil_sen(&daily_quantiles(g, t, q, days as usize), 4)
                .map(|(b, _)| b.max(0.0))
                .unwrap_or(0.0);
            // extrapolate to the middle of the planned hours
            let days_ahead = (lead as f64 + hours as f64 / 2.0) / 24.0;
            flat(lvl + slope * days_ahead)
        }
    }
}

/// Hours of history whose mean demand is the unit of a [`MarginBasis::MeanDemand`] margin.
const MEAN_HOURS: usize = 168;

/// Mean observed demand of the `MEAN_HOURS` before hour `t` (of all history before `t` if
/// those are all gaps; 0 with none).
fn recent_mean(g: &Grid, t: usize) -> f64 {
    let mean = |lo: usize| {
        let (mut sum, mut n) = (0.0, 0usize);
        for &v in &g.x[lo * g.sph..t * g.sph] {
            if !v.is_nan() {
                sum += v;
                n += 1;
            }
        }
        (n > 0).then(|| sum / n as f64)
    };
    mean(t.saturating_sub(MEAN_HOURS))
        .or_else(|| mean(0))
        .unwrap_or(0.0)
}

/// Rounded capacities of a schedule decided at hour `t` whose first hour is `lead` hours
/// ahead: level + margin, to whole GPUs or hosts.
fn rounded(g: &Grid, t: usize, sched: &[f64], lead: usize, m: &MarginRule, host: u32) -> Vec<u32> {
    let mean = match m.basis {
        MarginBasis::MeanDemand => recent_mean(g, t),
        MarginBasis::Level => 0.0,
    };
    sched
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let f = m.fraction(lead, k);
            let c = match m.basis {
                MarginBasis::Level => v * (1.0 + f),
                MarginBasis::MeanDemand => v + f * mean,
            };
            round_up(c, host)
        })
        .collect()
}

/// How a plan's margin reads in its method name, e.g. `x(1+0.20)` or `+ 0.30..0.40 x mean 7d`.
fn margin_name(m: &MarginRule, lead: usize, hours: usize) -> String {
    let (a, b) = (
        m.fraction(lead, 0),
        m.fraction(lead, hours.saturating_sub(1)),
    );
    let range = if (b - a).abs() < 5e-3 {
        format!("{a:.2}")
    } else {
        format!("{a:.2}..{b:.2}")
    };
    match m.basis {
        MarginBasis::Level => format!("x(1+{range})"),
        MarginBasis::MeanDemand => format!("+ {range} x mean 7d"),
    }
}

/// The VPA-style reference plan: 1.15 × the p95 of a decaying histogram (half-life 24 h,
/// 8 days), the best simple plan baseline on the dev pools.
fn vpa_baseline(g: &Grid, t: usize, hours: usize, host: u32) -> Option<Vec<u32>> {
    let v = decayed(g, t, 0.95, 24.0, 8);
    v.is_finite().then(|| vec![round_up(1.15 * v, host); hours])
}

/// Chooses and builds the plan on grid `g` (decision at its end).
pub(crate) fn decide(
    g: &Grid,
    lead: usize,
    hours: usize,
    s: &Settings,
) -> (Vec<u32>, String, Backtest) {
    let t = g.hours;
    let q = s.quantile();
    let cands = &s.plan_methods;
    let host = s.host_size;
    let margin = if lead == 0 {
        &s.plan_margin
    } else {
        &s.lead_plan_margin
    };
    if lead > t {
        // less history than the lead (ShortHistory::Extrapolate): no backtest is possible;
        // hold the peak of the history
        let peak =
            g.x.iter()
                .copied()
                .filter(|v| !v.is_nan())
                .fold(0.0, f64::max);
        let caps = rounded(g, t, &vec![peak; hours], lead, margin, host);
        let name = format!("peak(all history) {}", margin_name(margin, lead, hours));
        let ev = Backtest {
            method: name.clone(),
            baseline: "VPA p95 x1.15 (half-life 24 h)".to_string(),
            ..Backtest::default()
        };
        return (caps, name, ev);
    }
    // daily origins, newest first, whose plans would have started before the decision:
    // (origin hour, its lead, the margin its candidates carry and the lead that margin is
    // taken at); a lead-time plan may also be replayed from plans decided at the start of
    // their week
    let mut kinds: Vec<(usize, &MarginRule, usize)> = vec![(lead, margin, lead)];
    if lead > 0 {
        match s.lead_backtest {
            LeadBacktest::SameLead => {}
            LeadBacktest::PooledAsHeld => kinds.insert(0, (0, margin, lead)),
            LeadBacktest::PooledAtOrigin => kinds.insert(0, (0, margin, 0)),
            LeadBacktest::PooledAsDecided => kinds.insert(0, (0, &s.plan_margin, 0)),
        }
    }
    let mut origins = Vec::new();
    for &(bl, m, ml) in &kinds {
        for k in 1..=s.evidence_days as usize {
            let Some(o) = t.checked_sub(bl + 24 * k) else {
                break;
            };
            if o < MIN_ORIGIN_HOURS {
                break;
            }
            origins.push((o, bl, m, ml));
        }
    }
    let mut accs: Vec<CostAcc> = vec![CostAcc::new(g.sph); cands.len()];
    let mut per_window: Vec<f64> = vec![0.0; cands.len()];
    let mut n_windows = vec![0usize; cands.len()];
    let mut base_acc = CostAcc::new(g.sph);
    for &(o, bl, m, ml) in &origins {
        let w0 = o + bl;
        let w1 = (w0 + hours).min(t);
        if w1 <= w0 {
            continue;
        }
        for (i, c) in cands.iter().enumerate() {
            let Some(sched) = schedule(g, o, bl, hours, c, q) else {
                continue;
            };
            let caps = rounded(g, o, &sched[..w1 - w0], ml, m, host);
            let mut acc = CostAcc::new(g.sph);
            for h in w0..w1 {
                acc.add_hour(f64::from(caps[h - w0]), g.hour(h));
            }
            per_window[i] += acc.cost(s.price, g.mean);
            n_windows[i] += 1;
            accs[i].merge(&acc);
        }
        if let Some(caps) = vpa_baseline(g, o, hours, s.host_size) {
            for h in w0..w1 {
                base_acc.add_hour(f64::from(caps[h - w0]), g.hour(h));
            }
        }
    }
    // the candidate with the lowest mean window cost; ties and no evidence keep the order
    let mut best: Option<(usize, f64)> = None;
    let most = n_windows.iter().copied().max().unwrap_or(0);
    for i in 0..cands.len() {
        if most == 0 || n_windows[i] < most {
            continue;
        }
        let c = per_window[i] / n_windows[i] as f64;
        if best.is_none_or(|(_, b)| c < b - 1e-12) {
            best = Some((i, c));
        }
    }
    let mut order: Vec<usize> = best.map(|(i, _)| i).into_iter().collect();
    order.extend((0..cands.len()).filter(|i| Some(*i) != best.map(|b| b.0)));
    for i in order {
        if let Some(sched) = schedule(g, t, lead, hours, &cands[i], q) {
            let name = format!("{} {}", cands[i].name(), margin_name(margin, lead, hours));
            let ev = Backtest {
                method: name.clone(),
                ours: accs[i].summary(s.price, g.mean),
                baseline: "VPA p95 x1.15 (half-life 24 h)".to_string(),
                baseline_cost: base_acc.summary(s.price, g.mean),
            };
            return (rounded(g, t, &sched, lead, margin, host), name, ev);
        }
    }
    // no candidate had data (cannot happen with an observation, kept as a safe answer)
    let peak =
        g.x.iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(0.0, f64::max);
    let caps = rounded(g, t, &vec![peak; hours], lead, margin, host);
    let name = "fallback:peak".to_string();
    let ev = Backtest {
        method: name.clone(),
        ..Backtest::default()
    };
    (caps, name, ev)
}
