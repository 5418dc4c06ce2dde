//! `plan-cv DATA_DIR [--quick]`: the held-out protocol behind the plan defaults
//! (`docs/capacity.md`, "Cross-validation").
//!
//! Plan tracks have one decision per series and week, so besides the two task weeks the
//! plan settings are scored on *pseudo-weeks*: the `plan` and `plan_lead7` tasks of the dev
//! week moved `k` = 0 … 10 days earlier (k = 0 is the dev week of `tasks.csv`, k = 7 the
//! week before of `tasks_tune.csv`; a decision needs a day of history). Every cell of a
//! grid of plan settings (margin basis × growth × lead backtest × plan margin × margin per
//! week) answers every pseudo-task through the public `plan()`, and is scored with the
//! scorer's arithmetic (idle + P × unserved GPU-hours over the 5-minute demand, divided by
//! the series' mean demand before the window × scored hours; imputed slots skipped).
//!
//! Then each figure is chosen on some weeks and scored on another, by the sum of the mean
//! plan and lead-plan costs:
//!
//! * dev week ← pseudo-weeks k = 7 … 10 (their windows end before the dev week starts);
//! * week before ← the dev week (k = 0; every other pseudo-week overlaps the week before);
//! * leave one source out: the cell the other source's pseudo-weeks choose;
//! * shipped: chosen on all 11 pseudo-weeks (in-sample for both task weeks).
//!
//! `--quick` scores only the shipped default and the first release's settings.

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use flate2::read::GzDecoder;
use rackwatch_capacity::{plan, MarginBasis, MarginGrowth, Settings, ShortHistory, Step};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

const PRICE: f64 = 20.0;
const KS: usize = 11;

fn ts(s: &str) -> Result<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S")
        .map(|t| t.and_utc())
        .map_err(|e| anyhow!("bad timestamp {s:?}: {e}"))
}

struct Series {
    source: String,
    start: DateTime<Utc>,
    values: Vec<Option<f64>>,
    /// first hour of the dev week (the `plan` task's start in tasks.csv)
    dev_start: DateTime<Utc>,
}

fn read_data(dir: &Path) -> Result<Vec<(String, Series)>> {
    let mut dev: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let tasks = dir.join("tasks.csv");
    let f = File::open(&tasks).with_context(|| tasks.display().to_string())?;
    for line in BufReader::new(f).lines().skip(1) {
        let line = line?;
        let c: Vec<&str> = line.split(',').collect();
        if c.len() >= 4 && c[1] == "plan" {
            dev.insert(c[0].to_string(), ts(c[3])?);
        }
    }
    let mut sources: HashMap<String, String> = HashMap::new();
    if let Ok(f) = File::open(dir.join("manifest.csv")) {
        for line in BufReader::new(f).lines().skip(1) {
            let line = line?;
            let c: Vec<&str> = line.split(',').collect();
            if c.len() > 1 {
                sources.insert(c[0].to_string(), c[1].to_string());
            }
        }
    }
    let mut imputed: HashSet<(String, DateTime<Utc>)> = HashSet::new();
    if let Ok(f) = File::open(dir.join("imputed.csv")) {
        for line in BufReader::new(f).lines().skip(1) {
            let line = line?;
            if let Some((s, t)) = line.split_once(',') {
                imputed.insert((s.to_string(), ts(t)?));
            }
        }
    }
    let mut out = Vec::new();
    for (sid, dev_start) in dev {
        let p = dir.join("5min").join(format!("{sid}.csv.gz"));
        let f = File::open(&p).with_context(|| p.display().to_string())?;
        let mut start = None;
        let mut values = Vec::new();
        for line in BufReader::new(GzDecoder::new(f)).lines().skip(1) {
            let line = line?;
            let (t, d) = line
                .split_once(',')
                .ok_or_else(|| anyhow!("{}: bad line {line:?}", p.display()))?;
            let t = ts(t)?;
            start.get_or_insert(t);
            let v: f64 = d.trim().parse()?;
            values.push((!imputed.contains(&(sid.clone(), t))).then_some(v));
        }
        let source = sources.get(&sid).cloned().unwrap_or_else(|| {
            sid.rsplit_once('_')
                .map_or(sid.clone(), |(a, _)| a.to_string())
        });
        let start = start.ok_or_else(|| anyhow!("{}: empty", p.display()))?;
        out.push((
            sid,
            Series {
                source,
                start,
                values,
                dev_start,
            },
        ));
    }
    if out.is_empty() {
        bail!("{}: no plan tasks", tasks.display());
    }
    Ok(out)
}

/// The scorer's cost of `caps` (one per hour from `w0`) against the series' demand.
fn cost(s: &Series, w0: DateTime<Utc>, caps: &[u32]) -> f64 {
    let i0 = ((w0 - s.start).num_minutes() / 5) as usize;
    let hist: Vec<f64> = s.values[..i0].iter().flatten().copied().collect();
    let scale = hist.iter().sum::<f64>() / hist.len().max(1) as f64;
    let (mut c, mut n) = (0.0, 0usize);
    for (h, &cap) in caps.iter().enumerate() {
        for v in s.values[i0 + 12 * h..i0 + 12 * (h + 1)].iter().flatten() {
            let cap = f64::from(cap);
            c += if cap > *v { cap - v } else { PRICE * (v - cap) };
            n += 1;
        }
    }
    if n == 0 {
        return 0.0;
    }
    (c / 12.0) / (scale * n as f64 / 12.0)
}

#[derive(Clone)]
struct Cell {
    name: String,
    settings: Settings,
    /// [lead index][series][k] cost, NaN where the pseudo-task has under a day of history
    c: [Vec<[f64; KS]>; 2],
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Mean cost over series `pools` and pseudo-weeks `ks`, plan + lead plan.
fn objective(cell: &Cell, ks: &[usize], pools: &[usize]) -> f64 {
    (0..2)
        .map(|l| {
            mean(
                pools
                    .iter()
                    .flat_map(|&i| ks.iter().map(move |&k| cell.c[l][i][k])),
            )
        })
        .sum()
}

fn pick<'a>(cells: &'a [Cell], ks: &[usize], pools: &[usize]) -> &'a Cell {
    cells
        .iter()
        .min_by(|a, b| objective(a, ks, pools).total_cmp(&objective(b, ks, pools)))
        .expect("cells")
}

fn week(costs: &[f64]) -> String {
    format!(
        "{:.3} ({:.3})",
        mean(costs.iter().copied()),
        median(costs.to_vec())
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("usage: plan-cv DATA_DIR [--quick]"))?;
    let data = read_data(&dir)?;
    let base = Settings {
        short_history: ShortHistory::Extrapolate,
        ..Settings::default()
    };
    let mut grid: Vec<(String, Settings)> = Vec::new();
    if quick {
        grid.push(("shipped default".into(), base.clone()));
        grid.push((
            "first release (level, per plan, same-lead backtest, 0.20 / 0.20)".into(),
            Settings {
                margin_basis: MarginBasis::Level,
                margin_growth: MarginGrowth::PerPlan,
                lead_backtest_pooled: false,
                plan_margin: 0.20,
                lead_margin_per_week: 0.20,
                ..base.clone()
            },
        ));
    } else {
        let structures = [
            (
                "level/per-plan/same",
                MarginBasis::Level,
                MarginGrowth::PerPlan,
                false,
            ),
            (
                "level/per-plan/pooled",
                MarginBasis::Level,
                MarginGrowth::PerPlan,
                true,
            ),
            (
                "level/per-hour/pooled",
                MarginBasis::Level,
                MarginGrowth::PerHour,
                true,
            ),
            (
                "mean/per-hour/pooled",
                MarginBasis::MeanDemand,
                MarginGrowth::PerHour,
                true,
            ),
        ];
        for (sn, basis, growth, pooled) in structures {
            for a in [0.0, 0.05, 0.10, 0.15, 0.20, 0.25] {
                for b in [0.0, 0.1, 0.2, 0.3, 0.4] {
                    grid.push((
                        format!("{sn} {a:.2}/{b:.2}"),
                        Settings {
                            margin_basis: basis,
                            margin_growth: growth,
                            lead_backtest_pooled: pooled,
                            plan_margin: a,
                            lead_margin_per_week: b,
                            ..base.clone()
                        },
                    ));
                }
            }
        }
    }
    eprintln!(
        "{} cells x {} series x {KS} pseudo-weeks x 2 leads",
        grid.len(),
        data.len()
    );
    let mut cells = Vec::new();
    for (name, settings) in grid {
        let mut c = [
            vec![[f64::NAN; KS]; data.len()],
            vec![[f64::NAN; KS]; data.len()],
        ];
        for (li, lead) in [0u32, 168].into_iter().enumerate() {
            for (i, (sid, s)) in data.iter().enumerate() {
                for (k, slot) in c[li][i].iter_mut().enumerate() {
                    let w0 = s.dev_start - Duration::days(k as i64);
                    let now = w0 - Duration::hours(i64::from(lead));
                    if now < s.start + Duration::hours(24) {
                        continue;
                    }
                    let d = plan(
                        &s.values,
                        Step::FIVE_MINUTES,
                        s.start,
                        now,
                        lead,
                        168,
                        &settings,
                    )
                    .with_context(|| format!("{sid} k={k} lead={lead} {name}"))?;
                    *slot = cost(s, w0, &d.capacities);
                }
            }
        }
        cells.push(Cell { name, settings, c });
    }
    let all: Vec<usize> = (0..data.len()).collect();
    let by_source = |src: &str, same: bool| -> Vec<usize> {
        (0..data.len())
            .filter(|&i| (data[i].1.source == src) == same)
            .collect()
    };
    let ks_all: Vec<usize> = (0..KS).collect();
    let col = |cell: &Cell, l: usize, k: usize| -> Vec<f64> {
        all.iter().map(|&i| cell.c[l][i][k]).collect()
    };
    let show = |label: &str, cell: &Cell, k: usize| {
        println!(
            "{label:<34} {:<40} plan {}  lead7 {}",
            cell.name,
            week(&col(cell, 0, k)),
            week(&col(cell, 1, k))
        );
    };
    println!("cells compared: {}", cells.len());
    if quick {
        for cell in &cells {
            for (k, w) in [(0, "dev week (k=0)"), (7, "week before (k=7)")] {
                show(w, cell, k);
            }
            for (l, track) in [(0, "plan"), (1, "lead7")] {
                let pw: Vec<String> = (0..KS)
                    .map(|k| match mean(col(cell, l, k).into_iter()) {
                        m if m.is_nan() => "-".to_string(),
                        m => format!("{m:.3}"),
                    })
                    .collect();
                println!(
                    "  {track} mean per pseudo-week k=0..10: {} (all {:.3})",
                    pw.join(" "),
                    mean(all.iter().flat_map(|&i| cell.c[l][i].iter().copied()))
                );
            }
        }
        return Ok(());
    }
    show(
        "held out: dev <- k=7..10",
        pick(&cells, &[7, 8, 9, 10], &all),
        0,
    );
    show("held out: dev <- week before", pick(&cells, &[7], &all), 0);
    show("held out: week before <- dev", pick(&cells, &[0], &all), 7);
    let sources: Vec<String> = {
        let mut v: Vec<String> = data.iter().map(|d| d.1.source.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    // each source scored with the cell chosen on all the other sources' pseudo-weeks
    let loso = |cells: &[Cell], k: usize| -> (Vec<f64>, Vec<f64>, Vec<String>) {
        let mut p0 = vec![f64::NAN; data.len()];
        let mut p1 = vec![f64::NAN; data.len()];
        let mut chosen = Vec::new();
        for src in &sources {
            let cell = pick(cells, &ks_all, &by_source(src, false));
            chosen.push(format!("{src} <- {}", cell.name));
            for i in by_source(src, true) {
                p0[i] = cell.c[0][i][k];
                p1[i] = cell.c[1][i][k];
            }
        }
        (p0, p1, chosen)
    };
    for k in [0usize, 7] {
        let (p0, p1, chosen) = loso(&cells, k);
        println!(
            "{:<34} plan {}  lead7 {}   [{}]",
            format!("held out: leave-source-out k={k}"),
            week(&p0),
            week(&p1),
            chosen.join("; ")
        );
    }
    let shipped = pick(&cells, &ks_all, &all);
    show("in-sample: all pseudo-weeks, dev", shipped, 0);
    show("in-sample: all pseudo-weeks, before", shipped, 7);
    println!(
        "shipped cell: plan_margin {:.2}, lead_margin_per_week {:.2}, {:?}, {:?}, pooled {}",
        shipped.settings.plan_margin,
        shipped.settings.lead_margin_per_week,
        shipped.settings.margin_basis,
        shipped.settings.margin_growth,
        shipped.settings.lead_backtest_pooled
    );
    // the best cell of each structure on all pseudo-weeks, and its held-out figures
    println!("\nper structure (chosen on all pseudo-weeks / held out as above):");
    let mut names: Vec<String> = cells
        .iter()
        .map(|c| {
            c.name
                .rsplit_once(' ')
                .map_or(c.name.clone(), |x| x.0.to_string())
        })
        .collect();
    names.dedup();
    for sn in names {
        let sub: Vec<Cell> = cells
            .iter()
            .filter(|c| c.name.starts_with(&format!("{sn} ")))
            .cloned()
            .collect();
        let b = pick(&sub, &ks_all, &all);
        let d = pick(&sub, &[7, 8, 9, 10], &all);
        let t = pick(&sub, &[0], &all);
        println!(
            "  {sn:<24} all-k {} = {:.3} / {:.3} | in-sample dev {} / {}, before {} / {} | held out dev {} / {} ({}), before {} / {} ({})",
            b.name,
            mean(all.iter().flat_map(|&i| b.c[0][i].iter().copied())),
            mean(all.iter().flat_map(|&i| b.c[1][i].iter().copied())),
            week(&col(b, 0, 0)),
            week(&col(b, 1, 0)),
            week(&col(b, 0, 7)),
            week(&col(b, 1, 7)),
            week(&col(d, 0, 0)),
            week(&col(d, 1, 0)),
            d.name.rsplit_once(' ').map_or("", |x| x.1),
            week(&col(t, 0, 7)),
            week(&col(t, 1, 7)),
            t.name.rsplit_once(' ').map_or("", |x| x.1),
        );
        let (a0, a1, _) = loso(&sub, 0);
        let (b0, b1, _) = loso(&sub, 7);
        println!(
            "  {:<24} leave-source-out: dev {} / {}, before {} / {}",
            "",
            week(&a0),
            week(&a1),
            week(&b0),
            week(&b1)
        );
    }
    Ok(())
}
