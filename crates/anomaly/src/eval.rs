//! Benchmark evaluation: score every series of an SMD/ASD/NAB-style directory and write score
//! files (`score,alert`) in the format of `shared/eval/anomaly/score.py`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::{Backend, CpuBackend};
use crate::data::{read_matrix, read_nab_values, read_text, write_scores};
use crate::detector::{top_contributions, Detector, DetectorConfig};
use crate::stream::{score_series, StreamConfig};

/// Settings for [`eval_with`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalOptions {
    pub detector: DetectorConfig,
    pub stream: StreamConfig,
}

/// What an evaluation run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvalSummary {
    pub dataset: String,
    pub backend: String,
    /// Series scored.
    pub series: usize,
    /// Test rows scored (all series).
    pub rows_scored: usize,
    /// Training rows used (all series).
    pub rows_trained: usize,
    /// Seconds spent in causal scoring (backend + smoothing), excluding I/O and training.
    pub score_seconds: f64,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Share of rows alerted by the label-free threshold.
    pub alert_rate: f64,
    /// Interpretation check (SMD/ASD with `interpretation_label/`): HitRate@100% and @150% of
    /// the labelled metrics among the top contributing metrics, averaged over anomalous rows.
    pub hit_rate_100: Option<f64>,
    pub hit_rate_150: Option<f64>,
}

impl EvalSummary {
    /// Scoring throughput, rows per second.
    pub fn rows_per_second(&self) -> f64 {
        if self.score_seconds > 0.0 {
            self.rows_scored as f64 / self.score_seconds
        } else {
            0.0
        }
    }
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} series, {} rows scored in {:.3} s ({:.0} rows/s, {}), trained on {} rows in {:.2} s, alert rate {:.4}",
            self.dataset,
            self.series,
            self.rows_scored,
            self.score_seconds,
            self.rows_per_second(),
            self.backend,
            self.rows_trained,
            self.train_seconds,
            self.alert_rate
        )?;
        if let (Some(a), Some(b)) = (self.hit_rate_100, self.hit_rate_150) {
            write!(f, ", interpretation HitRate@100%={a:.3} @150%={b:.3}")?;
        }
        Ok(())
    }
}

/// Score every series under `data_dir` (`smd`/`asd`: `train/`, `test/`; `nab`: `series/<cat>/`)
/// with the default settings on the CPU backend and write score files under `out_dir`.
pub fn eval(dataset: &str, data_dir: &Path, out_dir: &Path) -> Result<EvalSummary> {
    eval_with(
        &CpuBackend::default(),
        dataset,
        data_dir,
        out_dir,
        &EvalOptions::default(),
    )
}

fn list_series(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            list_series(&p, out)?;
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            if name.ends_with(".csv") || name.ends_with(".csv.gz") {
                out.push(p);
            }
        }
    }
    Ok(())
}

fn stem(p: &Path) -> String {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.trim_end_matches(".gz")
        .trim_end_matches(".csv")
        .to_string()
}

fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [".csv.gz", ".csv"]
        .iter()
        .map(|ext| dir.join(format!("{stem}{ext}")))
        .find(|p| p.exists())
}

/// [`eval`] with an explicit backend and settings.
pub fn eval_with(
    backend: &dyn Backend,
    dataset: &str,
    data_dir: &Path,
    out_dir: &Path,
    opts: &EvalOptions,
) -> Result<EvalSummary> {
    let ds = dataset.to_ascii_lowercase();
    let mut sum = EvalSummary {
        dataset: ds.to_uppercase(),
        backend: backend.name(),
        ..Default::default()
    };
    match ds.as_str() {
        "smd" | "asd" => eval_multivariate(backend, &ds, data_dir, out_dir, opts, &mut sum)?,
        "nab" => eval_nab(backend, data_dir, out_dir, opts, &mut sum)?,
        other => bail!("unknown dataset {other:?} (expected smd, asd or nab)"),
    }
    Ok(sum)
}

/// Interpretation labels: `(start, end_exclusive, metrics 0-based)`.
fn read_interpretation(
    path: &Path,
    end_inclusive: bool,
) -> Result<Vec<(usize, usize, Vec<usize>)>> {
    let mut out = Vec::new();
    for line in read_text(path)?.lines() {
        let Some((range, dims)) = line.trim().split_once(':') else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (a, mut b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
        if end_inclusive {
            b += 1;
        }
        let dims = dims
            .split(',')
            .filter_map(|d| d.trim().parse::<usize>().ok())
            .filter(|&d| d > 0)
            .map(|d| d - 1)
            .collect();
        out.push((a, b, dims));
    }
    Ok(out)
}

fn eval_multivariate(
    backend: &dyn Backend,
    ds: &str,
    data_dir: &Path,
    out_dir: &Path,
    opts: &EvalOptions,
    sum: &mut EvalSummary,
) -> Result<()> {
    let mut tests = Vec::new();
    list_series(&data_dir.join("test"), &mut tests)?;
    tests.sort();
    anyhow::ensure!(
        !tests.is_empty(),
        "no test series under {}",
        data_dir.display()
    );
    let (mut alerts, mut hits100, mut hits150, mut hit_rows) = (0usize, 0.0f64, 0.0f64, 0usize);
    for test_path in &tests {
        let name = stem(test_path);
        let train_path = find_file(&data_dir.join("train"), &name)
            .with_context(|| format!("no train file for {name}"))?;
        let train = read_matrix(&train_path)?;
        let test = read_matrix(test_path)?;
        let t0 = Instant::now();
        let mut det = Detector::fit_with(backend, &train, opts.detector.clone())?;
        let t1 = Instant::now();
        let mut det_scoring = det.clone();
        let (scores, alert) = det_scoring.score_alerts(backend, &test)?;
        sum.score_seconds += t1.elapsed().as_secs_f64();
        sum.train_seconds += (t1 - t0).as_secs_f64();
        alerts += alert.iter().filter(|&&a| a).count();
        write_scores(&out_dir.join(format!("{name}.csv")), &scores, &alert)?;
        // Explanations against the interpretation labels, when shipped.
        if let Some(ip) = find_file(&data_dir.join("interpretation_label"), &name)
            .or_else(|| {
                Some(
                    data_dir
                        .join("interpretation_label")
                        .join(format!("{name}.txt")),
                )
            })
            .filter(|p| p.exists())
        {
            let segs = read_interpretation(&ip, ds == "asd")?;
            let rows = det.score_explained(backend, &test, det.dim)?;
            for (a, b, dims) in segs {
                if dims.is_empty() {
                    continue;
                }
                for r in rows.iter().take(b.min(rows.len())).skip(a) {
                    let ranked: Vec<usize> = r.top.iter().map(|c| c.metric).collect();
                    let g = dims.len();
                    let k150 = (g * 3).div_ceil(2);
                    let h = |k: usize| {
                        dims.iter()
                            .filter(|m| ranked[..k.min(ranked.len())].contains(m))
                            .count() as f64
                            / g as f64
                    };
                    hits100 += h(g);
                    hits150 += h(k150);
                    hit_rows += 1;
                }
            }
        }
        sum.series += 1;
        sum.rows_scored += test.rows;
        sum.rows_trained += train.rows;
    }
    sum.alert_rate = alerts as f64 / sum.rows_scored.max(1) as f64;
    if hit_rows > 0 {
        sum.hit_rate_100 = Some(hits100 / hit_rows as f64);
        sum.hit_rate_150 = Some(hits150 / hit_rows as f64);
    }
    Ok(())
}

fn eval_nab(
    backend: &dyn Backend,
    data_dir: &Path,
    out_dir: &Path,
    opts: &EvalOptions,
    sum: &mut EvalSummary,
) -> Result<()> {
    let root = data_dir.join("series");
    let mut files = Vec::new();
    list_series(&root, &mut files)?;
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no series under {}", root.display());
    let mut alerts = 0usize;
    for p in &files {
        let rel = p.strip_prefix(&root)?.to_path_buf();
        let values = read_nab_values(p)?;
        let t0 = Instant::now();
        let (score, alert) = score_series(backend, &values, &opts.stream)?;
        sum.score_seconds += t0.elapsed().as_secs_f64();
        alerts += alert.iter().filter(|&&a| a).count();
        let out = out_dir
            .join(rel.parent().unwrap_or(Path::new("")))
            .join(format!("{}.csv", stem(p)));
        write_scores(&out, &score, &alert)?;
        sum.series += 1;
        sum.rows_scored += values.len();
    }
    sum.alert_rate = alerts as f64 / sum.rows_scored.max(1) as f64;
    Ok(())
}

/// Explanation helper for callers holding per-metric energies.
pub fn explain(energy: &[f32], k: usize) -> Vec<crate::detector::Contribution> {
    top_contributions(energy, k)
}
