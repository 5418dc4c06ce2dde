//! Rackwatch forecasting engine.
//!
//! Hourly series (GPU utilization, power, disk, CPU, memory, network) are forecast by
//! MSE-trained direct linear models (linfa least squares with a ridge penalty) on features
//! built with polars: the current level (median of the last 3 h) and its decaying deviation
//! from the daily mean, rolling 24 h / 168 h means, same-hour-yesterday and
//! same-hour-last-week lags, 7-day and 3-week same-hour profiles, daily and weekly Fourier
//! terms. One pooled model per horizon block (steps 1-24 and 25-H), on the raw scale and on
//! a log scale. Each series gets its own choice per block among seasonal-naive 24 h,
//! seasonal-naive 168 h, the flat current level, the level with the week's trend of the
//! daily mean and the two linear models (or the mean of the best two), by a recency-weighted rolling-origin backtest over the last days before
//! the forecast origin. 80 % and 95 % intervals are split-conformal quantiles of the chosen
//! method's backtest residuals around each horizon step (log scale, so they are asymmetric
//! and never negative).
//!
//! * [`forecast`] is the product API (one series, one origin).
//! * [`eval`] runs the benchmark tasks and writes the scorer's CSV.
//!
//! See `docs/forecast.md` for the method and its measured accuracy.

mod eval;
mod features;
mod model;

use chrono::{DateTime, Datelike, Timelike, Utc};
pub use eval::{eval, eval_with, EvalSummary};
pub use features::Space;
use model::{conformal_quantile, predict_candidate, quantile, Linear};
pub use model::{Candidate, Config};

/// A forecast for the `horizon` hours after the last value of a series.
///
/// All vectors have `horizon` entries; entry `i` is the hour `last + i + 1`. Values are in
/// the series' own unit and never negative. `lo95 <= lo80 <= point <= hi80 <= hi95`.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// point forecast (MSE-trained models predict the conditional mean of their target
    /// space; for the log-space model that is close to the median)
    pub point: Vec<f64>,
    /// lower end of the central 80 % prediction interval
    pub lo80: Vec<f64>,
    /// upper end of the central 80 % prediction interval
    pub hi80: Vec<f64>,
    /// lower end of the central 95 % prediction interval
    pub lo95: Vec<f64>,
    /// upper end of the central 95 % prediction interval
    pub hi95: Vec<f64>,
    /// the model(s) chosen, e.g. `"ridge-log"` or `"h1-24:ridge h25-168:snaive168"`;
    /// `"zero"`, `"empty"` and `"short-history"` name the safe fallbacks
    pub model: String,
    /// mean absolute error of the chosen model(s) in the rolling-origin backtest, divided by
    /// the in-sample MAE of the 24 h seasonal-naive forecast (MASE; < 1 beats "same hour
    /// yesterday" on the history's terms). `None` when the history is too short to backtest.
    pub backtest_mase: Option<f64>,
}

/// Forecasts the next `horizon` hours of an hourly series with the default [`Config`].
///
/// * `series`: one value per hour, oldest first, the last entry is the forecast origin;
///   `None` (or a non-finite value) marks a gap. Gaps are filled for the features but never
///   used as training targets or backtest truth.
/// * `start`: the UTC time of `series[0]` when the timestamps are real UTC (calendar phase
///   for the Fourier terms); `None` for a relative time base (only the 24 h / 168 h periods
///   are used, counted from `series[0]`).
/// * `horizon`: number of hours to forecast (1..=168 is what the engine is tuned for).
///
/// Never panics on short, empty, all-zero or gappy input: it falls back to simpler models
/// and says so in [`Forecast::model`].
pub fn forecast(series: &[Option<f64>], start: Option<DateTime<Utc>>, horizon: usize) -> Forecast {
    forecast_with(series, start, horizon, &Config::default())
}

/// [`forecast`] with explicit tuning knobs.
pub fn forecast_with(
    series: &[Option<f64>],
    start: Option<DateTime<Utc>>,
    horizon: usize,
    cfg: &Config,
) -> Forecast {
    let phase_start = start
        .map(|s| s.weekday().num_days_from_monday() as i64 * 24 + s.hour() as i64)
        .unwrap_or(0);
    // only the recent history matters: training window + backtest + lag reach
    let cap = cfg.window + 24 * cfg.backtest_days + 3 * 168 + 48;
    let skip = series.len().saturating_sub(cap);
    let series = &series[skip..];
    let phase0 = (phase_start + skip as i64).rem_euclid(168);
    let observed: Vec<bool> = series
        .iter()
        .map(|v| v.is_some_and(|x| x.is_finite()))
        .collect();
    let y = fill_gaps(series);
    let n = y.len();
    if horizon == 0 {
        return constant(0, 0.0, "empty");
    }
    if !observed.iter().any(|&o| o) {
        return constant(horizon, 0.0, "empty");
    }
    let recent = n.saturating_sub(cfg.window);
    let (sum, cnt) = (recent..n)
        .filter(|&t| observed[t])
        .fold((0.0, 0usize), |(s, c), t| (s + y[t].abs(), c + 1));
    let scale = if cnt > 0 { sum / cnt as f64 } else { 0.0 };
    if scale <= 1e-12 || !scale.is_finite() {
        return constant(horizon, 0.0, "zero");
    }
    if n < 96 {
        return short_history(&y, &observed, horizon);
    }
    full(&y, &observed, scale, phase0, horizon, cfg)
        .unwrap_or_else(|_| short_history(&y, &observed, horizon))
}

fn constant(horizon: usize, v: f64, model: &str) -> Forecast {
    Forecast {
        point: vec![v; horizon],
        lo80: vec![v; horizon],
        hi80: vec![v; horizon],
        lo95: vec![v; horizon],
        hi95: vec![v; horizon],
        model: model.to_string(),
        backtest_mase: None,
    }
}

/// Fills gaps: linear interpolation for gaps of at most 3 h, else the value a week earlier,
/// a day earlier, or the last value before the gap.
fn fill_gaps(series: &[Option<f64>]) -> Vec<f64> {
    let n = series.len();
    let ok = |v: &Option<f64>| v.filter(|x| x.is_finite());
    let first = series.iter().find_map(ok).unwrap_or(0.0);
    let mut y = vec![f64::NAN; n];
    let mut last: Option<(usize, f64)> = None;
    let mut t = 0;
    while t < n {
        if let Some(v) = ok(&series[t]) {
            y[t] = v;
            last = Some((t, v));
            t += 1;
            continue;
        }
        let mut e = t;
        while e < n && ok(&series[e]).is_none() {
            e += 1;
        }
        let next = if e < n { ok(&series[e]) } else { None };
        for i in t..e {
            y[i] = match (last, next) {
                (Some((lt, lv)), Some(nv)) if e - t <= 3 => {
                    lv + (nv - lv) * (i - lt) as f64 / (e - lt) as f64
                }
                (Some((_, lv)), _) => {
                    if i >= 168 {
                        y[i - 168]
                    } else if i >= 24 {
                        y[i - 24]
                    } else {
                        lv
                    }
                }
                (None, _) => first,
            };
        }
        t = e;
    }
    y
}

/// Fallback for fewer than 96 hours: same hour yesterday (or the mean), intervals from the
/// spread of the history.
fn short_history(y: &[f64], observed: &[bool], horizon: usize) -> Forecast {
    let n = y.len();
    let obs: Vec<f64> = (0..n).filter(|&t| observed[t]).map(|t| y[t]).collect();
    let mean = obs.iter().sum::<f64>() / obs.len().max(1) as f64;
    let mut dev: Vec<f64> = obs.iter().map(|v| v - mean).collect();
    dev.sort_by(f64::total_cmp);
    let mut f = constant(horizon, 0.0, "short-history");
    for i in 0..horizon {
        let p = if n >= 24 {
            model::snaive(y, 24, n - 1, i + 1)
        } else {
            mean
        }
        .max(0.0);
        f.point[i] = p;
        f.lo80[i] = (p + quantile(&dev, 0.10)).max(0.0).min(p);
        f.hi80[i] = (p + quantile(&dev, 0.90)).max(p);
        f.lo95[i] = (p + quantile(&dev, 0.025)).max(0.0).min(f.lo80[i]);
        f.hi95[i] = (p + quantile(&dev, 0.975)).max(f.hi80[i]);
    }
    f
}

const CANDIDATES: [Candidate; 6] = [
    Candidate::SNaive24,
    Candidate::SNaive168,
    Candidate::Level,
    Candidate::Drift,
    Candidate::Linear(Space::Raw),
    Candidate::Linear(Space::Log),
];

fn full(
    y: &[f64],
    observed: &[bool],
    scale: f64,
    phase0: i64,
    horizon: usize,
    cfg: &Config,
) -> anyhow::Result<Forecast> {
    let n = y.len();
    let fr = model::frame(y, scale, phase0, horizon)?;
    let weekly = n >= 504;
    let blocks = model::blocks(horizon);
    let block_of = |h: usize| if h <= 24 { 0 } else { 1 };
    let nb = blocks.len();
    let g = |v: f64| Space::Log.forward(v, scale);
    let mut buf = Vec::with_capacity(32);

    // ---- rolling-origin backtest: models fitted on data up to the earliest origin ----
    let bdays = cfg.backtest_days.min(n.saturating_sub(96) / 24);
    // avail[block][candidate]: the candidate could be fitted for the backtest
    let mut avail = vec![[true; NC]; nb];
    let mut points: Vec<BtPoint> = Vec::new();
    if bdays > 0 {
        let bt_end = n - 1 - 24 * bdays;
        let lin: Vec<[Option<Linear>; 2]> = blocks
            .iter()
            .map(|&b| {
                [Space::Raw, Space::Log].map(|sp| {
                    Linear::fit(
                        (&fr, observed),
                        (sp, weekly),
                        b,
                        bt_end,
                        if b.0 == 1 { 1 } else { cfg.long_block_stride },
                        cfg,
                    )
                })
            })
            .collect();
        for (bi, a) in avail.iter_mut().enumerate() {
            for (ci, c) in CANDIDATES.iter().enumerate() {
                match c {
                    Candidate::Linear(sp) => a[ci] = lin[bi][*sp as usize].is_some(),
                    // Two days before the earliest origin.
                    Candidate::Drift => a[ci] = bt_end + 1 >= model::DRIFT_HISTORY,
                    _ => {}
                }
            }
        }
        for i in 1..=bdays {
            let o = n - 1 - 24 * i;
            for h in 1..=horizon.min(24 * i) {
                let t = o + h;
                if !observed[t] {
                    continue;
                }
                let bi = block_of(h);
                let mut p = [f64::NAN; NC];
                // compare candidates on the same points: skip a point that an available
                // candidate cannot predict
                let mut missing = false;
                for (ci, &c) in CANDIDATES.iter().enumerate() {
                    if avail[bi][ci] {
                        match predict_candidate(c, &lin[bi], &fr, y, o, h, &mut buf) {
                            Some(v) => p[ci] = v,
                            None => missing = true,
                        }
                    }
                }
                if !missing {
                    points.push(BtPoint { h, i, y: y[t], p });
                }
            }
        }
    }

    // ---- per-block choice by recency-weighted backtest MAE (level shifts make the latest
    // days the most telling): single candidates, then the mean of the best two ----
    let wmae = |m: Method, lo: usize, hi: usize| -> Option<f64> {
        let (s, ws) =
            points
                .iter()
                .filter(|x| x.h >= lo && x.h <= hi)
                .fold((0.0, 0.0), |(s, ws), x| {
                    let w = cfg.selection_decay.powi(x.i as i32 - 1);
                    (s + w * (x.y - m.of(&x.p)).abs(), ws + w)
                });
        (ws > 0.0).then(|| s / ws)
    };
    let mut chosen: Vec<Method> = Vec::with_capacity(nb);
    for (bi, &(lo, hi)) in blocks.iter().enumerate() {
        let mut singles: Vec<(f64, usize)> = (0..NC)
            .filter(|&ci| avail[bi][ci])
            .filter_map(|ci| wmae(Method(ci, ci), lo, hi).map(|e| (e, ci)))
            .collect();
        singles.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pick = match singles.as_slice() {
            [] if bi > 0 => chosen[0],
            [] => Method(0, 0),
            [(_, a)] => Method(*a, *a),
            [(ea, a), (_, b), ..] => {
                let pair = Method(*a.min(b), *a.max(b));
                match wmae(pair, lo, hi) {
                    Some(e) if cfg.combine && e < *ea => pair,
                    _ => Method(*a, *a),
                }
            }
        };
        chosen.push(pick);
    }

    // ---- final fits for the chosen linear models ----
    let mut finals: Vec<[Option<Linear>; 2]> = vec![[None, None]; nb];
    for (bi, &b) in blocks.iter().enumerate() {
        for ci in [chosen[bi].0, chosen[bi].1] {
            if let Candidate::Linear(sp) = CANDIDATES[ci] {
                if finals[bi][sp as usize].is_none() {
                    finals[bi][sp as usize] = Linear::fit(
                        (&fr, observed),
                        (sp, weekly),
                        b,
                        n - 1,
                        if b.0 == 1 { 1 } else { cfg.long_block_stride },
                        cfg,
                    );
                }
                if finals[bi][sp as usize].is_none() {
                    // safe fallback: the seasonal naive forecast
                    chosen[bi] = Method(0, 0);
                }
            }
        }
    }

    // in-sample seasonal-naive log residuals: interval fallback when the backtest is empty
    let mut sn_resid: Vec<f64> = (24..n)
        .filter(|&t| observed[t] && observed[t - 24])
        .map(|t| g(y[t]) - g(y[t - 24]))
        .collect();
    sn_resid.sort_by(f64::total_cmp);

    // log-scale residual of the chosen method at every backtest point
    let pt_resid: Vec<f64> = points
        .iter()
        .map(|x| g(x.y) - g(chosen[block_of(x.h)].of(&x.p)))
        .collect();
    let mut f = constant(horizon, 0.0, "");
    let mut resid: Vec<f64> = Vec::new();
    for h in 1..=horizon {
        let bi = block_of(h);
        let m = chosen[bi];
        let mut pred = |ci: usize| {
            predict_candidate(CANDIDATES[ci], &finals[bi], &fr, y, n - 1, h, &mut buf)
                .unwrap_or_else(|| model::snaive(y, 24, n - 1, h).max(0.0))
        };
        let p = if m.0 == m.1 {
            pred(m.0)
        } else {
            0.5 * (pred(m.0) + pred(m.1))
        };
        // residuals of the chosen candidate at nearby steps
        let mut w = (h / 8).max(1);
        loop {
            resid.clear();
            resid.extend(
                points
                    .iter()
                    .zip(&pt_resid)
                    .filter(|(x, _)| x.h + w >= h && x.h <= h + w && block_of(x.h) == bi)
                    .map(|(_, r)| *r),
            );
            if resid.len() >= 60 || w >= horizon {
                break;
            }
            w *= 2;
        }
        let r: &[f64] = if resid.len() >= 10 {
            resid.sort_by(f64::total_cmp);
            &resid
        } else {
            &sn_resid
        };
        let gp = g(p);
        let inf = cfg.interval_inflation * (1.0 + cfg.interval_growth * (h - 1) as f64 / 168.0);
        let back = |q: f64| Space::Log.inverse(gp + inf * q, scale).max(0.0);
        f.point[h - 1] = p;
        // The intervals hold the point: a model biased on its backtest (a level on a
        // filling disk: every residual positive) widens them to its point instead of
        // drawing bands that exclude it.
        f.lo80[h - 1] = back(conformal_quantile(r, 0.10)).min(p);
        f.hi80[h - 1] = back(conformal_quantile(r, 0.90)).max(p);
        f.lo95[h - 1] = back(conformal_quantile(r, 0.025)).min(f.lo80[h - 1]);
        f.hi95[h - 1] = back(conformal_quantile(r, 0.975)).max(f.hi80[h - 1]);
    }

    // ---- model name and backtest MASE ----
    f.model = if nb == 1 {
        chosen[0].name()
    } else {
        format!(
            "h1-24:{} h25-{}:{}",
            chosen[0].name(),
            horizon,
            chosen[1].name()
        )
    };
    let (sn_sum, sn_cnt) = (24..n)
        .filter(|&t| observed[t] && observed[t - 24])
        .fold((0.0, 0usize), |(s, c), t| {
            (s + (y[t] - y[t - 24]).abs(), c + 1)
        });
    let (e_sum, e_cnt) = points.iter().fold((0.0, 0usize), |(s, c), x| {
        (s + (x.y - chosen[block_of(x.h)].of(&x.p)).abs(), c + 1)
    });
    // undefined when the seasonal-naive forecast is (numerically) exact
    if sn_cnt > 0 && e_cnt > 0 && sn_sum / sn_cnt as f64 > 1e-9 * scale {
        f.backtest_mase = Some((e_sum / e_cnt as f64) / (sn_sum / sn_cnt as f64));
    }
    Ok(f)
}

const NC: usize = CANDIDATES.len();

/// One backtest forecast: step, origin (days before the cutoff), truth, candidates' values.
struct BtPoint {
    h: usize,
    i: usize,
    y: f64,
    p: [f64; NC],
}

/// A forecasting method: one candidate (`Method(a, a)`) or the mean of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Method(usize, usize);

impl Method {
    fn of(self, p: &[f64; NC]) -> f64 {
        if self.0 == self.1 {
            p[self.0]
        } else {
            0.5 * (p[self.0] + p[self.1])
        }
    }
    fn name(self) -> String {
        if self.0 == self.1 {
            CANDIDATES[self.0].name().to_string()
        } else {
            format!(
                "{}+{}",
                CANDIDATES[self.0].name(),
                CANDIDATES[self.1].name()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_gaps_interpolates_short_and_copies_long_gaps() {
        let mut s: Vec<Option<f64>> = (0..400).map(|t| Some((t % 24) as f64)).collect();
        s[10] = None;
        s[11] = None; // 2 h gap between 9 and 12: linear
        for v in s.iter_mut().take(300).skip(200) {
            *v = None; // 100 h gap: a week earlier
        }
        s[0] = None; // leading gap: first value
        let y = fill_gaps(&s);
        assert_eq!(y[10], 10.0);
        assert_eq!(y[11], 11.0);
        for (t, v) in y.iter().enumerate().take(300).skip(200) {
            assert_eq!(*v, (t % 24) as f64, "hour {t}");
        }
        assert_eq!(y[0], 1.0);
        assert!(y.iter().all(|v| v.is_finite()));
    }
}
