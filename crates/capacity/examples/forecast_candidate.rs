//! `forecast-candidate DATA_DIR TASKS OUT_DIR` (feature `forecast`): the forecasting
//! engine's conformal bounds as capacity candidates, to decide whether they earn a place
//! in the recommender. For every task the hourly peaks before `decision_ts` are forecast
//! `lead + H` hours ahead with `rackwatch_forecast::forecast_with` (default `Config`), and
//! the upper ends of the 95 % and 80 % intervals, rounded up to whole GPUs, are written as
//! two scorer files (`fc_hi95.csv`, `fc_hi80.csv`). For the next hour it also writes
//! `fc_recal.csv`: the one-step point forecast plus the P/(P+1) = 20/21 quantile of the
//! 5-minute residuals of the same one-step forecasts over the week before (the
//! recommender's recalibration applied to the forecast as a base; the product would store
//! past forecasts, so a decision costs one fit). Prints CPU milliseconds per fit.

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use flate2::read::GzDecoder;
use rackwatch_forecast::{forecast_with, Config};
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

fn ts(s: &str) -> Result<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S")
        .map(|t| t.and_utc())
        .map_err(|e| anyhow!("bad timestamp {s:?}: {e}"))
}

/// A task: (track, decision_ts as written, decision_ts, start_ts, H).
type Task = (String, String, DateTime<Utc>, DateTime<Utc>, usize);

fn cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into our own timespec; valid clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// 5-minute series (imputed slots as gaps): start and samples.
fn read_series(
    dir: &Path,
    sid: &str,
    imputed: &HashSet<(String, DateTime<Utc>)>,
) -> Result<(DateTime<Utc>, Vec<Option<f64>>)> {
    let p = dir.join("5min").join(format!("{sid}.csv.gz"));
    let f = File::open(&p).with_context(|| p.display().to_string())?;
    let mut start = None;
    let mut v = Vec::new();
    for line in BufReader::new(GzDecoder::new(f)).lines().skip(1) {
        let line = line?;
        let (t, d) = line
            .split_once(',')
            .ok_or_else(|| anyhow!("bad line {line:?}"))?;
        let t = ts(t)?;
        start.get_or_insert(t);
        let gap = imputed.contains(&(sid.to_string(), t));
        v.push(if gap {
            None
        } else {
            Some(d.trim().parse::<f64>()?)
        });
    }
    Ok((start.ok_or_else(|| anyhow!("{}: empty", p.display()))?, v))
}

fn main() -> Result<()> {
    let a: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [data, tasks, out] = <[PathBuf; 3]>::try_from(a)
        .map_err(|_| anyhow!("usage: forecast-candidate DATA_DIR TASKS OUT_DIR"))?;
    std::fs::create_dir_all(&out)?;
    let mut imputed = HashSet::new();
    if let Ok(f) = File::open(data.join("imputed.csv")) {
        for line in BufReader::new(f).lines().skip(1) {
            let line = line?;
            if let Some((s, t)) = line.split_once(',') {
                imputed.insert((s.to_string(), ts(t)?));
            }
        }
    }
    let mut by: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for line in BufReader::new(File::open(&tasks)?).lines().skip(1) {
        let line = line?;
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            continue;
        }
        by.entry(f[0].to_string()).or_default().push((
            f[1].to_string(),
            f[2].to_string(),
            ts(f[2])?,
            ts(f[3])?,
            f[4].trim().parse()?,
        ));
    }
    let mut wrc = BufWriter::new(File::create(out.join("fc_recal.csv"))?);
    wrc.write_all(b"series_id,track,decision_ts,ts,capacity\n")?;
    let mut w95 = BufWriter::new(File::create(out.join("fc_hi95.csv"))?);
    let mut w80 = BufWriter::new(File::create(out.join("fc_hi80.csv"))?);
    for w in [&mut w95, &mut w80] {
        w.write_all(b"series_id,track,decision_ts,ts,capacity\n")?;
    }
    let cfg = Config::default();
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut models: BTreeMap<String, usize> = BTreeMap::new();
    for (sid, list) in &by {
        let (start, v) = read_series(&data, sid, &imputed)?;
        let n_hours = v.len() / 12;
        let peaks_all: Vec<Option<f64>> = (0..n_hours)
            .map(|k| {
                v[k * 12..(k + 1) * 12]
                    .iter()
                    .flatten()
                    .copied()
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
            })
            .collect();
        // one-step point forecasts for every hour h (from hours < h), computed once
        let first_auto = list
            .iter()
            .filter(|t| t.0 == "autoscale")
            .map(|t| ((t.2 - start).num_hours()) as usize)
            .min();
        let mut point1 = vec![f64::NAN; n_hours];
        if let Some(fa) = first_auto {
            for h in fa.saturating_sub(168).max(48)..n_hours {
                point1[h] = forecast_with(&peaks_all[..h], Some(start), 1, &cfg).point[0];
            }
        }
        for (track, draw, dec, st, h) in list {
            let n = ((*dec - start).num_minutes() / 5) as usize;
            let hours = n / 12;
            let peaks: Vec<Option<f64>> = (0..hours)
                .map(|k| {
                    v[k * 12..(k + 1) * 12]
                        .iter()
                        .flatten()
                        .copied()
                        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                })
                .collect();
            let lead = ((*st - *dec).num_hours()) as usize;
            if track == "autoscale" {
                let mut res: Vec<f64> = Vec::new();
                for h in hours.saturating_sub(168)..hours {
                    if point1[h].is_nan() {
                        continue;
                    }
                    res.extend(
                        v[h * 12..(h + 1) * 12]
                            .iter()
                            .flatten()
                            .map(|d| d - point1[h]),
                    );
                }
                res.sort_by(f64::total_cmp);
                let off = if res.is_empty() {
                    0.0
                } else {
                    let pos = (20.0 / 21.0) * (res.len() - 1) as f64;
                    let lo = pos.floor() as usize;
                    let hi = (lo + 1).min(res.len() - 1);
                    res[lo] + (pos - lo as f64) * (res[hi] - res[lo])
                };
                let c = (point1[hours] + off - 1e-6).ceil().max(0.0);
                writeln!(
                    wrc,
                    "{sid},{track},{draw},{},{c}",
                    st.format("%Y-%m-%dT%H:%M:%S")
                )?;
            }
            let tic = cpu_ms();
            let fc = forecast_with(&peaks, Some(start), lead + h, &cfg);
            times.entry(track.clone()).or_default().push(cpu_ms() - tic);
            *models.entry(format!("{track}: {}", fc.model)).or_default() += 1;
            for k in 0..*h {
                let t = (*st + Duration::hours(k as i64)).format("%Y-%m-%dT%H:%M:%S");
                let c95 = (fc.hi95[lead + k] - 1e-6).ceil().max(0.0);
                let c80 = (fc.hi80[lead + k] - 1e-6).ceil().max(0.0);
                writeln!(w95, "{sid},{track},{draw},{t},{c95}")?;
                writeln!(w80, "{sid},{track},{draw},{t},{c80}")?;
            }
        }
    }
    for w in [&mut w95, &mut w80, &mut wrc] {
        w.flush()?;
    }
    println!("models: {models:?}");
    for (t, mut v) in times {
        v.sort_by(f64::total_cmp);
        println!(
            "{t}: {} fits, CPU per fit median {:.2} ms",
            v.len(),
            v[v.len() / 2]
        );
    }
    Ok(())
}
