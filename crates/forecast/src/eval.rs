//! Benchmark evaluation: read `DIR/hourly/<series>.csv` and a tasks file, forecast every
//! (series, cutoff) once with the longest horizon asked there, write the scorer's CSV.

use crate::{forecast_with, Config, Forecast};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufWriter, Write};
use std::path::Path;

/// What an evaluation run did.
#[derive(Clone, Debug, Default)]
pub struct EvalSummary {
    /// number of fits: one per (series, cutoff), with H = the longest horizon asked there
    pub fits: usize,
    /// process CPU time spent in fitting and forecasting (features, backtests, final fits,
    /// intervals), in milliseconds; reading and writing files is not included
    pub total_fit_ms: f64,
    /// number of tasks (series, track, cutoff) answered
    pub tasks: usize,
    /// prediction rows written
    pub rows: usize,
    /// number of series
    pub series: usize,
    /// how often each model (or per-block model pair) was chosen
    pub models: BTreeMap<String, usize>,
    /// mean backtest MASE of the chosen models over the fits that had a backtest
    pub mean_backtest_mase: Option<f64>,
}

impl EvalSummary {
    /// CPU milliseconds per fit.
    pub fn ms_per_fit(&self) -> f64 {
        if self.fits == 0 {
            0.0
        } else {
            self.total_fit_ms / self.fits as f64
        }
    }
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let models: Vec<String> = self
            .models
            .iter()
            .rev()
            .map(|(m, c)| format!("{m} ×{c}"))
            .collect();
        write!(
            f,
            "Forecast eval: {} tasks on {} series, {} fits ({} prediction rows) in {:.0} ms CPU, \
             {:.2} ms per fit. Models chosen by backtest: {}.",
            self.tasks,
            self.series,
            self.fits,
            self.rows,
            self.total_fit_ms,
            self.ms_per_fit(),
            if models.is_empty() {
                "none".to_string()
            } else {
                models.join(", ")
            }
        )?;
        if let Some(m) = self.mean_backtest_mase {
            write!(f, " Mean backtest MASE of the chosen models: {m:.3}.")?;
        }
        Ok(())
    }
}

/// Runs the forecasting engine on every task of `tasks` (CSV `series_id,track,cutoff,H`)
/// with the series in `data_dir/hourly/<series_id>.csv` (`timestamp,value`, hourly) and
/// writes the predictions to `out` in the scorer's format:
/// `method,series_id,track,cutoff,h,yhat,lo80,hi80,lo95,hi95`.
///
/// Only values at or before each task's cutoff are used. Hours listed in
/// `data_dir/imputed_hours.csv` (if present) are treated as gaps. With the environment
/// variable `FC_DEBUG` set, the model chosen at every cutoff is printed to stderr.
pub fn eval(data_dir: &Path, tasks: &Path, out: &Path) -> Result<EvalSummary> {
    eval_with(data_dir, tasks, out, &Config::default())
}

struct Task {
    track: String,
    cutoff: String,
    h: usize,
}

/// A timestamp of the data set: real UTC (`...Z`, `+00:00`) or relative (no zone).
fn parse_ts(s: &str) -> Result<(NaiveDateTime, bool)> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok((dt.with_timezone(&Utc).naive_utc(), true));
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%:z") {
        return Ok((dt.with_timezone(&Utc).naive_utc(), true));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok((dt, false));
        }
    }
    bail!("unparseable timestamp {s:?} (expected e.g. 2013-09-01T21:00:00Z or 1970-01-07T18:00:00)")
}

/// One series on its hourly grid.
struct Series {
    start: NaiveDateTime,
    utc: bool,
    values: Vec<Option<f64>>,
}

fn read_series(path: &Path, imputed: Option<&HashSet<NaiveDateTime>>) -> Result<Series> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if !header.starts_with("timestamp,value") {
        bail!(
            "{}: expected header timestamp,value, found {header:?}",
            path.display()
        );
    }
    let mut rows: Vec<(NaiveDateTime, Option<f64>)> = Vec::new();
    let mut utc = false;
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (ts, v) = line
            .split_once(',')
            .ok_or_else(|| anyhow!("{}:{}: expected timestamp,value", path.display(), i + 2))?;
        let (t, z) = parse_ts(ts).with_context(|| format!("{}:{}", path.display(), i + 2))?;
        utc = z;
        let v = v.trim();
        let v = if v.is_empty() || v.eq_ignore_ascii_case("nan") {
            None
        } else {
            Some(
                v.parse::<f64>()
                    .with_context(|| format!("{}:{}: bad value {v:?}", path.display(), i + 2))?,
            )
        };
        rows.push((t, v));
    }
    let start = rows
        .iter()
        .map(|r| r.0)
        .min()
        .ok_or_else(|| anyhow!("{}: no rows", path.display()))?;
    let end = rows.iter().map(|r| r.0).max().unwrap_or(start);
    let len = (end - start).num_hours() as usize + 1;
    let mut values = vec![None; len];
    for (t, v) in rows {
        let d = t - start;
        if d.num_minutes() % 60 != 0 {
            bail!("{}: timestamp {t} is not on the hour", path.display());
        }
        let i = d.num_hours() as usize;
        let masked = imputed.is_some_and(|s| s.contains(&t));
        values[i] = if masked { None } else { v };
    }
    Ok(Series { start, utc, values })
}

/// Like [`eval`], with explicit tuning knobs.
pub fn eval_with(data_dir: &Path, tasks: &Path, out: &Path, cfg: &Config) -> Result<EvalSummary> {
    // tasks grouped by series then cutoff, in file order
    let text =
        std::fs::read_to_string(tasks).with_context(|| format!("reading {}", tasks.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    let idx = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            anyhow!(
                "{}: missing column {name}; expected series_id,track,cutoff,H",
                tasks.display()
            )
        })
    };
    let (i_sid, i_track, i_cut, i_h) =
        (idx("series_id")?, idx("track")?, idx("cutoff")?, idx("H")?);
    let mut order: Vec<String> = Vec::new();
    let mut by_series: HashMap<String, Vec<Task>> = HashMap::new();
    let mut ntasks = 0;
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |j: usize| {
            f.get(j)
                .copied()
                .ok_or_else(|| anyhow!("{}:{}: too few columns", tasks.display(), i + 2))
        };
        let sid = get(i_sid)?.to_string();
        let h: usize = get(i_h)?
            .parse()
            .with_context(|| format!("{}:{}: bad H", tasks.display(), i + 2))?;
        // A horizon is at least an hour, and at most a year of hours.
        if !(1..=MAX_HORIZON_HOURS).contains(&h) {
            bail!(
                "{}:{}: H = {h} hours; a horizon is 1 to {MAX_HORIZON_HOURS}",
                tasks.display(),
                i + 2
            );
        }
        if !by_series.contains_key(&sid) {
            order.push(sid.clone());
        }
        by_series.entry(sid).or_default().push(Task {
            track: get(i_track)?.to_string(),
            cutoff: get(i_cut)?.to_string(),
            h,
        });
        ntasks += 1;
    }

    // imputed hours are treated as gaps
    let mut imputed: HashMap<String, HashSet<NaiveDateTime>> = HashMap::new();
    let imp_path = data_dir.join("imputed_hours.csv");
    if imp_path.exists() {
        let text = std::fs::read_to_string(&imp_path)?;
        for line in text.lines().skip(1) {
            if let Some((sid, ts)) = line.split_once(',') {
                if let Ok((t, _)) = parse_ts(ts) {
                    imputed.entry(sid.to_string()).or_default().insert(t);
                }
            }
        }
    }

    // Written beside `out` and renamed over it once complete: a run that fails (a series
    // missing) leaves the previous predictions as they were, not half of new ones.
    let partial = Partial(out.with_file_name(format!(
        ".{}.partial",
        out.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("predictions")
    )));
    let file = std::fs::File::create(&partial.0)
        .with_context(|| format!("creating {}", partial.0.display()))?;
    let mut w = BufWriter::new(file);
    writeln!(
        w,
        "method,series_id,track,cutoff,h,yhat,lo80,hi80,lo95,hi95"
    )?;
    let mut sum = EvalSummary {
        tasks: ntasks,
        series: order.len(),
        ..Default::default()
    };
    let (mut bt_sum, mut bt_n) = (0.0, 0usize);
    for sid in &order {
        let path = data_dir.join("hourly").join(format!("{sid}.csv"));
        let series = read_series(&path, imputed.get(sid))?;
        let tasks = &by_series[sid];
        // cutoffs in first-seen order, with the longest horizon asked there
        let mut cutoffs: Vec<(&str, NaiveDateTime, usize)> = Vec::new();
        for t in tasks {
            let (ct, _) = parse_ts(&t.cutoff)?;
            match cutoffs.iter_mut().find(|c| c.1 == ct) {
                Some(c) => c.2 = c.2.max(t.h),
                None => cutoffs.push((&t.cutoff, ct, t.h)),
            }
        }
        for (_, ct, hmax) in cutoffs {
            let d = ct - series.start;
            if d.num_hours() < 0 || d.num_hours() as usize >= series.values.len() {
                bail!(
                    "{sid}: cutoff {ct} outside the series ({} .. {} hours)",
                    series.start,
                    series.values.len()
                );
            }
            let ci = d.num_hours() as usize;
            let history = &series.values[..=ci];
            let start = series.utc.then(|| series.start.and_utc());
            let c0 = cpu_ms();
            let fc = forecast_with(history, start, hmax, cfg);
            sum.total_fit_ms += cpu_ms() - c0;
            sum.fits += 1;
            *sum.models.entry(fc.model.clone()).or_default() += 1;
            if std::env::var_os("FC_DEBUG").is_some() {
                eprintln!(
                    "{sid} {ct} n={} {} bt={:?}",
                    history.len(),
                    fc.model,
                    fc.backtest_mase
                );
            }
            if let Some(m) = fc.backtest_mase {
                bt_sum += m;
                bt_n += 1;
            }
            for t in tasks
                .iter()
                .filter(|t| parse_ts(&t.cutoff).map(|p| p.0).ok() == Some(ct))
            {
                sum.rows += write_rows(&mut w, "rackwatch", sid, &t.track, &t.cutoff, t.h, &fc)?;
            }
        }
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&partial.0, out).with_context(|| format!("writing {}", out.display()))?;
    if bt_n > 0 {
        sum.mean_backtest_mase = Some(bt_sum / bt_n as f64);
    }
    Ok(sum)
}

/// The longest horizon a task may ask for, in hours (a year).
const MAX_HORIZON_HOURS: usize = 366 * 24;

/// A file being written; removed unless renamed into place.
struct Partial(std::path::PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Formats a value for the CSV: fixed notation, never NaN or inf.
fn num(v: f64) -> String {
    let v = if v.is_finite() { v } else { 0.0 };
    format!("{v:.6}")
}

/// Writes the first `h` steps of `fc` as scorer rows; returns the number of rows.
pub(crate) fn write_rows<W: Write>(
    w: &mut W,
    method: &str,
    sid: &str,
    track: &str,
    cutoff: &str,
    h: usize,
    fc: &Forecast,
) -> Result<usize> {
    for i in 0..h.min(fc.point.len()) {
        writeln!(
            w,
            "{method},{sid},{track},{cutoff},{},{},{},{},{},{}",
            i + 1,
            num(fc.point[i]),
            num(fc.lo80[i]),
            num(fc.hi80[i]),
            num(fc.lo95[i]),
            num(fc.hi95[i])
        )?;
    }
    Ok(h.min(fc.point.len()))
}

/// Process CPU time in milliseconds (all threads, so polars' pool is counted too).
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
