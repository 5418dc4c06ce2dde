//! Offline evaluation on the shared benchmark: read `DIR/5min/<series>.csv.gz` (with
//! `DIR/imputed.csv` slots as gaps) and a tasks file, answer every task with the product's
//! functions, and write the scorer's prediction CSV. Also a Rust copy of the scorer's
//! headline cost for cross-validation loops.

use crate::cost::CostAcc;
use crate::{next_hour, plan, Settings, ShortHistory, Step};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use flate2::read::GzDecoder;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

/// What an evaluation run did and how long its decisions took.
#[derive(Clone, Debug, Default)]
pub struct EvalSummary {
    /// series read
    pub series: usize,
    /// tasks answered
    pub tasks: usize,
    /// prediction rows written
    pub rows: usize,
    /// tasks per track
    pub tasks_by_track: BTreeMap<String, usize>,
    /// median CPU milliseconds per decision (one library call per task), all tracks
    pub median_ms: f64,
    /// median CPU milliseconds per decision, per track
    pub median_ms_by_track: BTreeMap<String, f64>,
    /// 90th percentile of CPU milliseconds per decision, all tracks
    pub p90_ms: f64,
    /// CPU milliseconds of all decisions (reading and writing files excluded)
    pub total_ms: f64,
    /// how often each plan method was chosen, keyed `track: method`
    pub plan_methods: BTreeMap<String, usize>,
    /// how often each base appeared in a next-hour ensemble
    pub autoscale_members: BTreeMap<String, usize>,
    /// lead-time tasks whose history was shorter than the lead (planned by extrapolation)
    pub short_history: usize,
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "capacity eval: {} tasks on {} series, {} rows; CPU per decision median {:.3} ms \
             (p90 {:.3} ms, total {:.0} ms); {} lead-time task(s) with less history than the lead",
            self.tasks,
            self.series,
            self.rows,
            self.median_ms,
            self.p90_ms,
            self.total_ms,
            self.short_history
        )?;
        for (t, n) in &self.tasks_by_track {
            writeln!(
                f,
                "  {t}: {n} tasks, median {:.3} ms",
                self.median_ms_by_track.get(t).copied().unwrap_or(0.0)
            )?;
        }
        let mut members: Vec<_> = self.autoscale_members.iter().collect();
        members.sort_by(|a, b| b.1.cmp(a.1));
        let shown: Vec<String> = members
            .iter()
            .take(8)
            .map(|(m, c)| format!("{m} ×{c}"))
            .collect();
        writeln!(f, "  next-hour ensemble members: {}", shown.join(", "))?;
        let plans: Vec<String> = self
            .plan_methods
            .iter()
            .map(|(m, c)| format!("{m} ×{c}"))
            .collect();
        write!(f, "  plan methods: {}", plans.join(", "))
    }
}

/// One benchmark task.
#[derive(Clone, Debug)]
struct Task {
    series_id: String,
    track: String,
    decision_raw: String,
    decision: DateTime<Utc>,
    start: DateTime<Utc>,
    h: usize,
}

/// A task time: `2026-01-08T00:00:00` (UTC), with a space for the `T`, or RFC 3339 with
/// its offset (`2026-01-08T00:00:00Z`).
fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

const TS_FORMAT: &str = "like 2026-01-08T00:00:00 (UTC) or 2026-01-08T00:00:00Z";

/// A series id names a file under `5min/`: a plain name, never a path.
fn check_series_id(sid: &str) -> std::result::Result<(), String> {
    let plain = !sid.is_empty()
        && !sid.starts_with('.')
        && sid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | ':'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "series_id {sid:?} must be a plain name (letters, digits, - _ . + :), not a path"
        ))
    }
}

fn fmt_ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Columns of a CSV header, by name.
fn columns(header: &str, need: &[&str], path: &Path) -> Result<Vec<usize>> {
    let cols: Vec<String> = header
        .trim()
        .split(',')
        .map(|c| c.trim().to_lowercase())
        .collect();
    need.iter()
        .map(|n| {
            cols.iter().position(|c| c == n).ok_or_else(|| {
                anyhow!(
                    "{}: missing column {n:?} (header: {})",
                    path.display(),
                    header.trim()
                )
            })
        })
        .collect()
}

fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    let f =
        File::open(path).with_context(|| format!("{}: cannot open tasks file", path.display()))?;
    let read = || format!("{}: cannot read tasks file", path.display());
    let mut lines = BufReader::new(f).lines();
    let header = lines
        .next()
        .ok_or_else(|| anyhow!("{}: empty tasks file", path.display()))?
        .with_context(read)?;
    let c = columns(
        &header,
        &["series_id", "track", "decision_ts", "start_ts", "h"],
        path,
    )?;
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.with_context(read)?;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let at = |k: usize| f.get(c[k]).map(|s| s.trim()).unwrap_or("");
        let lno = i + 2;
        let ts = |k: usize, name: &str| {
            parse_ts(at(k)).ok_or_else(|| {
                anyhow!(
                    "{}:{lno}: bad {name} {:?} ({TS_FORMAT})",
                    path.display(),
                    at(k)
                )
            })
        };
        let decision = ts(2, "decision_ts")?;
        let start = ts(3, "start_ts")?;
        let h: usize = at(4)
            .parse()
            .map_err(|_| anyhow!("{}:{lno}: bad H {:?}", path.display(), at(4)))?;
        check_series_id(at(0)).map_err(|e| anyhow!("{}:{lno}: {e}", path.display()))?;
        out.push(Task {
            series_id: at(0).to_string(),
            track: at(1).to_string(),
            decision_raw: at(2).to_string(),
            decision,
            start,
            h,
        });
    }
    Ok(out)
}

/// `series_id -> imputed slot times` from `DIR/imputed.csv` (absent file: none).
fn read_imputed(dir: &Path) -> Result<HashMap<String, HashSet<DateTime<Utc>>>> {
    let path = dir.join("imputed.csv");
    let mut out: HashMap<String, HashSet<DateTime<Utc>>> = HashMap::new();
    let Ok(f) = File::open(&path) else {
        return Ok(out);
    };
    let mut lines = BufReader::new(f).lines();
    let Some(header) = lines.next() else {
        return Ok(out);
    };
    let c = columns(&header?, &["series_id", "timestamp"], &path)?;
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let sid = f.get(c[0]).map(|s| s.trim()).unwrap_or("");
        let ts = f
            .get(c[1])
            .and_then(|s| parse_ts(s))
            .ok_or_else(|| anyhow!("{}:{}: bad timestamp in {line:?}", path.display(), i + 2))?;
        out.entry(sid.to_string()).or_default().insert(ts);
    }
    Ok(out)
}

/// One series on its 5-minute grid: start time and samples (imputed slots as gaps).
struct Series {
    start: DateTime<Utc>,
    values: Vec<Option<f64>>,
}

fn read_series(dir: &Path, sid: &str, imputed: Option<&HashSet<DateTime<Utc>>>) -> Result<Series> {
    let path = dir.join("5min").join(format!("{sid}.csv.gz"));
    let f = File::open(&path)
        .with_context(|| format!("{}: demand file missing for series {sid}", path.display()))?;
    let mut lines = BufReader::new(GzDecoder::new(f)).lines();
    let header = lines
        .next()
        .ok_or_else(|| anyhow!("{}: empty file", path.display()))?
        .with_context(|| format!("{}: not a gzip CSV", path.display()))?;
    let c = columns(&header, &["timestamp", "demand"], &path)?;
    let mut start = None;
    let mut values = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.with_context(|| format!("{}: read error", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let lno = i + 2;
        let f: Vec<&str> = line.split(',').collect();
        let ts = f
            .get(c[0])
            .and_then(|s| parse_ts(s))
            .ok_or_else(|| anyhow!("{}:{lno}: bad timestamp in {line:?}", path.display()))?;
        let v: f64 = f
            .get(c[1])
            .map(|s| s.trim())
            .unwrap_or("")
            .parse()
            .map_err(|_| anyhow!("{}:{lno}: bad demand in {line:?}", path.display()))?;
        if !v.is_finite() || v < 0.0 {
            bail!(
                "{}:{lno}: demand {v} is not a finite number >= 0",
                path.display()
            );
        }
        let s0 = *start.get_or_insert(ts);
        let expect = s0 + chrono::Duration::minutes(5 * values.len() as i64);
        if ts != expect {
            bail!(
                "{}:{lno}: timestamps are not a gap-free 5-minute grid (expected {}, got {})",
                path.display(),
                fmt_ts(expect),
                fmt_ts(ts)
            );
        }
        let gap = imputed.is_some_and(|s| s.contains(&ts));
        values.push(if gap { None } else { Some(v) });
    }
    let start = start.ok_or_else(|| anyhow!("{}: no samples", path.display()))?;
    Ok(Series { start, values })
}

/// CPU time of the process, milliseconds (the recommender runs on one thread).
fn cpu_ms() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6;
        }
    }
    use std::sync::OnceLock;
    static T0: OnceLock<std::time::Instant> = OnceLock::new();
    T0.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1e3
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Runs the benchmark with the default [`Settings`] (lead-time plans from short histories
/// are extrapolated, not refused) and writes the scorer's CSV to `out`:
/// `series_id,track,decision_ts,ts,capacity`, whole GPUs, `\n` line ends.
///
/// * `data_dir`: holds `5min/<series_id>.csv.gz` (`timestamp,demand`, gap-free 5-minute
///   grid) and optionally `imputed.csv` (`series_id,timestamp`: slots read as gaps).
/// * `tasks`: `series_id,track,decision_ts,start_ts,H`. Track `autoscale` asks the next hour
///   (H = 1, start = decision); any other track is a plan of H hours starting at `start_ts`,
///   with lead = start_ts − decision_ts (whole hours).
///
/// Each decision sees only the samples that start before its `decision_ts` (the library
/// slices there). Returns counts and the CPU time per decision.
pub fn eval(data_dir: &Path, tasks: &Path, out: &Path) -> Result<EvalSummary> {
    let settings = Settings {
        short_history: ShortHistory::Extrapolate,
        ..Settings::default()
    };
    eval_with(data_dir, tasks, out, &settings)
}

/// [`eval`] with explicit settings.
pub fn eval_with(
    data_dir: &Path,
    tasks: &Path,
    out: &Path,
    settings: &Settings,
) -> Result<EvalSummary> {
    settings.validate()?;
    let tasks = read_tasks(tasks)?;
    let imputed = read_imputed(data_dir)?;
    let mut by_series: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in &tasks {
        by_series.entry(t.series_id.as_str()).or_default().push(t);
    }
    // Written beside `out` and renamed over it once complete: a failed run leaves no
    // half-written predictions behind.
    let partial = Partial(out.with_file_name(format!(
        ".{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("predictions")
    )));
    let file = File::create(&partial.0)
        .with_context(|| format!("{}: cannot create", partial.0.display()))?;
    let mut w = BufWriter::new(file);
    w.write_all(b"series_id,track,decision_ts,ts,capacity\n")?;
    let mut sum = EvalSummary {
        series: by_series.len(),
        ..EvalSummary::default()
    };
    let mut times: Vec<f64> = Vec::with_capacity(tasks.len());
    let mut times_by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (sid, list) in by_series {
        let s = read_series(data_dir, sid, imputed.get(sid))?;
        for t in list {
            let track = t.track.to_lowercase();
            let lead_s = (t.start - t.decision).num_seconds();
            if lead_s < 0 || lead_s % 3600 != 0 {
                bail!(
                    "{sid}/{}/{}: start_ts must be whole hours at or after decision_ts",
                    t.track,
                    t.decision_raw
                );
            }
            let lead = (lead_s / 3600) as u32;
            let tic = cpu_ms();
            let d = if track == "autoscale" {
                if t.h != 1 || lead != 0 {
                    bail!(
                        "{sid}/{}: autoscale tasks have H = 1 and start_ts = decision_ts",
                        t.decision_raw
                    );
                }
                next_hour(&s.values, Step::FIVE_MINUTES, s.start, t.decision, settings)
            } else {
                plan(
                    &s.values,
                    Step::FIVE_MINUTES,
                    s.start,
                    t.decision,
                    lead,
                    t.h,
                    settings,
                )
            }
            .with_context(|| format!("{sid}/{}/{}", t.track, t.decision_raw))?;
            let ms = cpu_ms() - tic;
            times.push(ms);
            times_by.entry(track.clone()).or_default().push(ms);
            *sum.tasks_by_track.entry(track.clone()).or_default() += 1;
            if track == "autoscale" {
                for m in d.method.trim_start_matches("mean of ").split(", ") {
                    *sum.autoscale_members.entry(m.to_string()).or_default() += 1;
                }
            } else {
                *sum.plan_methods
                    .entry(format!("{track}: {}", d.method))
                    .or_default() += 1;
                let hist_h = (t.decision - s.start).num_hours();
                if i64::from(lead) > hist_h {
                    sum.short_history += 1;
                }
            }
            if d.capacities.len() != t.h {
                bail!(
                    "{sid}/{}: {} capacities for H = {}",
                    t.decision_raw,
                    d.capacities.len(),
                    t.h
                );
            }
            for (k, c) in d.capacities.iter().enumerate() {
                let ts = t.start + chrono::Duration::hours(k as i64);
                writeln!(w, "{sid},{},{},{},{c}", t.track, t.decision_raw, fmt_ts(ts))?;
                sum.rows += 1;
            }
            sum.tasks += 1;
        }
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&partial.0, out).with_context(|| format!("{}: cannot write", out.display()))?;
    sum.total_ms = times.iter().sum();
    sum.median_ms = median(&mut times.clone());
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        sum.p90_ms = times[((times.len() as f64 * 0.9) as usize).min(times.len() - 1)];
    }
    for (k, mut v) in times_by {
        sum.median_ms_by_track.insert(k, median(&mut v));
    }
    Ok(sum)
}

/// A file being written; removed unless renamed into place.
struct Partial(std::path::PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The scorer's metrics of one (series, track).
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesScore {
    /// series
    pub series_id: String,
    /// track (lower case)
    pub track: String,
    /// headline cost: (idle + price × unserved) / (history mean × hours)
    pub cost: f64,
    /// unserved GPU-hours
    pub unserved_gpu_hours: f64,
    /// idle GPU-hours
    pub idle_gpu_hours: f64,
}

/// Scores a prediction CSV like the shared scorer's headline (`score.py`, cost at `price`):
/// per series the scale is the mean non-imputed demand before the series' earliest task
/// start; every task hour must be present. For cross-validation loops; the published
/// figures come from `score.py` itself.
pub fn score_predictions(
    data_dir: &Path,
    tasks: &Path,
    preds: &Path,
    price: f64,
) -> Result<Vec<SeriesScore>> {
    let tasks = read_tasks(tasks)?;
    let imputed = read_imputed(data_dir)?;
    let f = File::open(preds).with_context(|| format!("{}: cannot open", preds.display()))?;
    let mut lines = BufReader::new(f).lines();
    let header = lines
        .next()
        .ok_or_else(|| anyhow!("{}: empty", preds.display()))??;
    let c = columns(
        &header,
        &["series_id", "track", "decision_ts", "ts", "capacity"],
        preds,
    )?;
    let mut caps: HashMap<(String, String, DateTime<Utc>, DateTime<Utc>), f64> = HashMap::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let at = |k: usize| f.get(c[k]).map(|s| s.trim()).unwrap_or("");
        let bad = || anyhow!("{}:{}: bad row {line:?}", preds.display(), i + 2);
        let key = (
            at(0).to_string(),
            at(1).to_lowercase(),
            parse_ts(at(2)).ok_or_else(bad)?,
            parse_ts(at(3)).ok_or_else(bad)?,
        );
        caps.insert(key, at(4).parse().map_err(|_| bad())?);
    }
    let mut by_series: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in &tasks {
        by_series.entry(t.series_id.as_str()).or_default().push(t);
    }
    let mut out = Vec::new();
    for (sid, list) in by_series {
        let s = read_series(data_dir, sid, imputed.get(sid))?;
        let w0 = list.iter().map(|t| t.start).min().unwrap_or(s.start);
        let k0 = ((w0 - s.start).num_minutes() / 5).max(0) as usize;
        let hist: Vec<f64> = s.values[..k0.min(s.values.len())]
            .iter()
            .flatten()
            .copied()
            .collect();
        let scale = if hist.is_empty() {
            0.0
        } else {
            hist.iter().sum::<f64>() / hist.len() as f64
        };
        let mut accs: BTreeMap<String, CostAcc> = BTreeMap::new();
        for t in list {
            let track = t.track.to_lowercase();
            let acc = accs
                .entry(track.clone())
                .or_insert_with(|| CostAcc::new(12));
            for k in 0..t.h {
                let ts = t.start + chrono::Duration::hours(k as i64);
                let cap = *caps
                    .get(&(sid.to_string(), track.clone(), t.decision, ts))
                    .ok_or_else(|| {
                        anyhow!(
                            "missing prediction {sid},{track},{},{}",
                            t.decision_raw,
                            fmt_ts(ts)
                        )
                    })?;
                let minutes = (ts - s.start).num_minutes();
                if minutes < 0 || minutes % 5 != 0 {
                    bail!(
                        "task hour {} of {sid} is {} (the series starts {} and has a slot every 5 minutes)",
                        fmt_ts(ts),
                        if minutes < 0 { "before its demand data" } else { "not on a 5-minute slot" },
                        fmt_ts(s.start)
                    );
                }
                let b = (minutes / 5) as usize;
                if b + 12 > s.values.len() {
                    bail!("demand data for {sid} does not cover {}", fmt_ts(ts));
                }
                let d: Vec<f64> = s.values[b..b + 12]
                    .iter()
                    .map(|v| v.unwrap_or(f64::NAN))
                    .collect();
                acc.add_hour(cap, &d);
            }
        }
        for (track, acc) in accs {
            let sm = acc.summary(price, scale);
            out.push(SeriesScore {
                series_id: sid.to_string(),
                track,
                cost: sm.cost,
                unserved_gpu_hours: sm.unserved_gpu_hours,
                idle_gpu_hours: sm.idle_gpu_hours,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    /// A data dir with one series `s1`: 3 days of 5-minute demand.
    fn data() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("5min")).unwrap();
        let f = File::create(dir.path().join("5min/s1.csv.gz")).unwrap();
        let mut gz = GzEncoder::new(f, flate2::Compression::fast());
        writeln!(gz, "timestamp,demand").unwrap();
        let t0 = parse_ts("2026-01-01T00:00:00").unwrap();
        for i in 0..3 * 288 {
            let t = t0 + chrono::Duration::minutes(5 * i);
            writeln!(gz, "{},{}", fmt_ts(t), 8 + (i % 12) / 4).unwrap();
        }
        gz.finish().unwrap();
        dir
    }

    fn tasks(dir: &Path, rows: &str) -> std::path::PathBuf {
        let p = dir.join("tasks.csv");
        std::fs::write(
            &p,
            format!("series_id,track,decision_ts,start_ts,H\n{rows}"),
        )
        .unwrap();
        p
    }

    #[test]
    fn task_times_take_rfc3339_and_a_failed_run_leaves_no_predictions() {
        let d = data();
        let out = d.path().join("preds.csv");
        let ok = tasks(
            d.path(),
            "s1,autoscale,2026-01-03T12:00:00Z,2026-01-03T12:00:00,1\n",
        );
        let sum = eval(d.path(), &ok, &out).unwrap();
        assert_eq!((sum.tasks, sum.rows), (1, 1));
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.starts_with("series_id,track,decision_ts,ts,capacity\ns1,autoscale,"),
            "{text}"
        );
        std::fs::remove_file(&out).unwrap();

        let bad = tasks(
            d.path(),
            "s1,autoscale,2026-01-03T12:00:00,2026-01-03T12:00:00,1\n../s1,autoscale,2026-01-03T13:00:00,2026-01-03T13:00:00,1\n",
        );
        let e = format!("{:#}", eval(d.path(), &bad, &out).unwrap_err());
        assert!(
            e.contains(":3: series_id \"../s1\" must be a plain name"),
            "{e}"
        );
        let garbled = tasks(d.path(), "s1,autoscale,noon,2026-01-03T12:00:00,1\n");
        let e = format!("{:#}", eval(d.path(), &garbled, &out).unwrap_err());
        assert!(
            e.contains("bad decision_ts \"noon\" (like 2026-01-08T00:00:00"),
            "{e}"
        );
        // A task that fails after others were answered: no file, complete or partial.
        let late = tasks(
            d.path(),
            "s1,autoscale,2026-01-03T12:00:00,2026-01-03T12:00:00,1\ns1,autoscale,2026-01-03T12:30:00,2026-01-03T13:00:00,1\n",
        );
        assert!(eval(d.path(), &late, &out).is_err());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("preds"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let e = format!("{:#}", eval(d.path(), d.path(), &out).unwrap_err());
        assert!(
            e.contains(&d.path().display().to_string()),
            "a directory as tasks: {e}"
        );
    }

    #[test]
    fn scoring_a_task_outside_its_series_is_an_error_not_a_panic() {
        let d = data();
        let preds = d.path().join("p.csv");
        for (start, said) in [
            ("2025-12-31T23:00:00", "before its demand data"),
            ("2026-01-02T12:02:00", "not on a 5-minute slot"),
        ] {
            let t = tasks(d.path(), &format!("s1,autoscale,{start},{start},1\n"));
            std::fs::write(
                &preds,
                format!(
                    "series_id,track,decision_ts,ts,capacity\ns1,autoscale,{start},{start},8\n"
                ),
            )
            .unwrap();
            let e = format!(
                "{:#}",
                score_predictions(d.path(), &t, &preds, 20.0).unwrap_err()
            );
            assert!(e.contains(said), "{e}");
        }
    }
}
