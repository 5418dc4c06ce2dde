//! `plan-cv DATA_DIR [--quick]`: the held-out protocol behind the plan defaults
//! (`docs/capacity.md`, "Cross-validation").
//!
//! Plan tracks have one decision per series and week, so besides the two task weeks the
//! plan settings are scored on *pseudo-weeks*: the `plan` and `plan_lead7` tasks of the dev
//! week moved `k` = 0 … 10 days earlier (k = 0 is the dev week of `tasks.csv`, k = 7 the
//! week before of `tasks_tune.csv`; a decision needs a day of history). Every cell of a
//! grid answers every pseudo-task through the public `plan()` and is scored with the
//! scorer's arithmetic (idle + P × unserved GPU-hours over the 5-minute demand, divided by
//! the series' mean demand before the window × scored hours; imputed slots skipped):
//!
//! * plans decided now (lead 0): `plan_margin` structure (level per plan, level per hour,
//!   mean demand per hour) × `at_decision` {0 … 0.25} × `per_week` {0 … 0.4};
//! * lead-time plans (lead 168 h): `lead_plan_margin` structure × `lead_backtest` ×
//!   `at_decision` × `per_week` (`PooledAsDecided` also × the plan margin it is costed
//!   with).
//!
//! Each track's cell is chosen by its own mean cost on some weeks and pools and scored on
//! another:
//!
//! * dev week ← pseudo-weeks k = 7 … 10 (their windows end before the dev week starts),
//!   and ← the week before;
//! * week before ← the dev week (k = 0; every other pseudo-week overlaps the week before);
//! * leave one source out: the cell the other source's pseudo-weeks choose;
//! * in-sample: chosen on all 11 pseudo-weeks.
//!
//! `--quick` scores only the shipped defaults, the first release's and the second's.

use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use flate2::read::GzDecoder;
use rackwatch_capacity::{
    plan, LeadBacktest, MarginBasis, MarginGrowth, MarginRule, Settings, ShortHistory, Step,
};
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

/// One setting of one track (`plan`: lead 0, `plan_lead7`: lead 168 h) and its cost on
/// every series and pseudo-week.
struct Cell {
    /// e.g. `level/per-plan` or `mean/per-hour as-held`
    structure: String,
    /// the margins, e.g. `0.20/0.10`, and for `as-decided` the plan margin it is costed with
    params: String,
    settings: Settings,
    /// [series][k] cost, NaN where the pseudo-task has under a day of history
    c: Vec<[f64; KS]>,
}

impl Cell {
    fn name(&self) -> String {
        format!("{} {}", self.structure, self.params)
    }

    /// Mean cost over series `pools` and pseudo-weeks `ks`.
    fn cost(&self, ks: &[usize], pools: &[usize]) -> f64 {
        mean(
            pools
                .iter()
                .flat_map(|&i| ks.iter().map(move |&k| self.c[i][k])),
        )
    }
}

/// The cheapest of `cells` over `ks` × `pools` (the first of equals).
fn pick<'a>(cells: impl Iterator<Item = &'a Cell>, ks: &[usize], pools: &[usize]) -> &'a Cell {
    cells
        .min_by(|a, b| a.cost(ks, pools).total_cmp(&b.cost(ks, pools)))
        .expect("cells")
}

fn week(costs: &[f64]) -> String {
    format!(
        "{:.3} ({:.3})",
        mean(costs.iter().copied()),
        median(costs.to_vec())
    )
}

/// Which weeks and pools choose a setting, and which week and pools it is then scored on.
struct Part {
    ks_in: Vec<usize>,
    pools_in: Vec<usize>,
    k_out: usize,
    pools_out: Vec<usize>,
}

/// A held-out scoring: one part, or one per source (leave one source out).
struct Fold {
    label: String,
    parts: Vec<Part>,
}

/// Chooses a plan cell and / or a lead-plan cell on the weeks and pools given.
type Chooser<'a> = dyn Fn(&[usize], &[usize]) -> [Option<&'a Cell>; 2] + 'a;

/// Scores `choose` on every fold: per fold the per-series costs of both tracks and the
/// cells chosen.
fn held_out<'a>(
    folds: &[Fold],
    n: usize,
    choose: &Chooser<'a>,
) -> Vec<([Vec<f64>; 2], Vec<String>)> {
    folds
        .iter()
        .map(|f| {
            let mut costs = [vec![f64::NAN; n], vec![f64::NAN; n]];
            let mut chosen = Vec::new();
            for p in &f.parts {
                let cells = choose(&p.ks_in, &p.pools_in);
                let names: Vec<String> = cells.iter().flatten().map(|c| c.name()).collect();
                chosen.push(names.join(" + "));
                for (l, cell) in cells.iter().enumerate() {
                    if let Some(cell) = cell {
                        for &i in &p.pools_out {
                            costs[l][i] = cell.c[i][p.k_out];
                        }
                    }
                }
            }
            (costs, chosen)
        })
        .collect()
}

fn print_held_out(title: &str, folds: &[Fold], n: usize, choose: &Chooser<'_>) {
    println!("{title}");
    for (f, (costs, chosen)) in folds.iter().zip(held_out(folds, n, choose)) {
        let track = |l: usize, name: &str| {
            if costs[l].iter().any(|c| c.is_finite()) {
                format!("  {name} {}", week(&costs[l]))
            } else {
                String::new()
            }
        };
        println!(
            "  {:<34}{}{}   [{}]",
            f.label,
            track(0, "plan"),
            track(1, "lead7"),
            chosen.join("; ")
        );
    }
}

/// Answers every pseudo-task of lead `lead` with every cell, on all cores.
fn score_cells(
    data: &[(String, Series)],
    lead: u32,
    grid: Vec<(String, String, Settings)>,
) -> Result<Vec<Cell>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = grid.len().div_ceil(threads).max(1);
    let mut grid = grid;
    let mut parts = Vec::new();
    while !grid.is_empty() {
        let rest = grid.split_off(chunk.min(grid.len()));
        parts.push(std::mem::replace(&mut grid, rest));
    }
    let run = |part: Vec<(String, String, Settings)>| -> Result<Vec<Cell>> {
        let mut out = Vec::new();
        for (structure, params, settings) in part {
            let mut c = vec![[f64::NAN; KS]; data.len()];
            for (i, (sid, s)) in data.iter().enumerate() {
                for (k, slot) in c[i].iter_mut().enumerate() {
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
                    .with_context(|| format!("{sid} k={k} lead={lead} {structure} {params}"))?;
                    *slot = cost(s, w0, &d.capacities);
                }
            }
            out.push(Cell {
                structure,
                params,
                settings,
                c,
            });
        }
        Ok(out)
    };
    let results: Vec<Result<Vec<Cell>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|p| sc.spawn(move || run(p)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut cells = Vec::new();
    for r in results {
        cells.extend(r?);
    }
    Ok(cells)
}

const AT: [f64; 6] = [0.0, 0.05, 0.10, 0.15, 0.20, 0.25];
const PER_WEEK: [f64; 5] = [0.0, 0.1, 0.2, 0.3, 0.4];

/// The margin structures compared: (name, basis, growth).
const STRUCTURES: [(&str, MarginBasis, MarginGrowth); 3] = [
    ("level/per-plan", MarginBasis::Level, MarginGrowth::PerPlan),
    ("level/per-hour", MarginBasis::Level, MarginGrowth::PerHour),
    (
        "mean/per-hour",
        MarginBasis::MeanDemand,
        MarginGrowth::PerHour,
    ),
];

const BACKTESTS: [(&str, LeadBacktest); 4] = [
    ("same-lead", LeadBacktest::SameLead),
    ("as-held", LeadBacktest::PooledAsHeld),
    ("at-origin", LeadBacktest::PooledAtOrigin),
    ("as-decided", LeadBacktest::PooledAsDecided),
];

fn rule(basis: MarginBasis, growth: MarginGrowth, at: f64, per_week: f64) -> MarginRule {
    MarginRule {
        basis,
        growth,
        at_decision: at,
        per_week,
    }
}

fn quick(data: &[(String, Series)], base: &Settings) -> Result<()> {
    let second = MarginRule::LEAD_PLAN;
    let first_lead = rule(MarginBasis::Level, MarginGrowth::PerPlan, 0.20, 0.20);
    let settings = [
        ("shipped default", base.clone()),
        (
            "first release (level x 1.2 / level x 1.4 per plan, same-lead backtest)",
            Settings {
                lead_plan_margin: first_lead,
                lead_backtest: LeadBacktest::SameLead,
                ..base.clone()
            },
        ),
        (
            "second release (mean 0.20 + 0.10 / week per hour, both; at-origin)",
            Settings {
                plan_margin: second,
                lead_backtest: LeadBacktest::PooledAtOrigin,
                ..base.clone()
            },
        ),
    ];
    let all: Vec<usize> = (0..data.len()).collect();
    for (name, s) in settings {
        println!("{name}");
        for (lead, track) in [(0u32, "plan"), (168, "lead7")] {
            let cell = score_cells(data, lead, vec![(String::new(), String::new(), s.clone())])?
                .pop()
                .expect("one cell");
            let col = |k: usize| -> Vec<f64> { all.iter().map(|&i| cell.c[i][k]).collect() };
            let pw: Vec<String> = (0..KS)
                .map(|k| match mean(col(k).into_iter()) {
                    m if m.is_nan() => "-".to_string(),
                    m => format!("{m:.3}"),
                })
                .collect();
            println!(
                "  {track:<5} dev week {}  week before {}  per pseudo-week k=0..10: {} (all {:.3})",
                week(&col(0)),
                week(&col(7)),
                pw.join(" "),
                cell.cost(&(0..KS).collect::<Vec<_>>(), &all)
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    if args.iter().any(|a| a == "--quick") {
        return quick(&data, &base);
    }
    // plans decided now: every structure, the second fraction only where it is used
    let mut plan_grid = Vec::new();
    for (sn, basis, growth) in STRUCTURES {
        for at in AT {
            for pw in PER_WEEK {
                if growth == MarginGrowth::PerPlan && pw > 0.0 {
                    continue;
                }
                plan_grid.push((
                    sn.to_string(),
                    format!("{at:.2}/{pw:.2}"),
                    Settings {
                        plan_margin: rule(basis, growth, at, pw),
                        ..base.clone()
                    },
                ));
            }
        }
    }
    // lead-time plans: every structure and backtest; `as-decided` also for every plan
    // margin of the shipped plan structure (level, per plan)
    let mut lead_grid = Vec::new();
    for (sn, basis, growth) in STRUCTURES {
        for (bn, bt) in BACKTESTS {
            let plan_ats: &[f64] = if bt == LeadBacktest::PooledAsDecided {
                if basis != MarginBasis::MeanDemand {
                    continue;
                }
                &AT
            } else {
                &[MarginRule::PLAN.at_decision]
            };
            for at in AT {
                for pw in PER_WEEK {
                    for &pa in plan_ats {
                        let mut params = format!("{at:.2}/{pw:.2}");
                        if bt == LeadBacktest::PooledAsDecided {
                            params.push_str(&format!(" (plan x{:.2})", 1.0 + pa));
                        }
                        lead_grid.push((
                            format!("{sn} {bn}"),
                            params,
                            Settings {
                                plan_margin: MarginRule {
                                    at_decision: pa,
                                    ..MarginRule::PLAN
                                },
                                lead_plan_margin: rule(basis, growth, at, pw),
                                lead_backtest: bt,
                                ..base.clone()
                            },
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "{} plan cells, {} lead-plan cells x {} series x {KS} pseudo-weeks",
        plan_grid.len(),
        lead_grid.len(),
        data.len()
    );
    let plans = score_cells(&data, 0, plan_grid)?;
    let leads = score_cells(&data, 168, lead_grid)?;
    let n = data.len();
    let all: Vec<usize> = (0..n).collect();
    let ks_all: Vec<usize> = (0..KS).collect();
    let mut sources: Vec<String> = data.iter().map(|d| d.1.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let of_source = |src: &str, same: bool| -> Vec<usize> {
        (0..n)
            .filter(|&i| (data[i].1.source == src) == same)
            .collect()
    };
    let simple = |label: &str, ks_in: &[usize], k_out: usize| Fold {
        label: label.to_string(),
        parts: vec![Part {
            ks_in: ks_in.to_vec(),
            pools_in: all.clone(),
            k_out,
            pools_out: all.clone(),
        }],
    };
    let loso = |k_out: usize| Fold {
        label: format!(
            "{} <- other source",
            if k_out == 0 { "dev" } else { "week before" }
        ),
        parts: sources
            .iter()
            .map(|src| Part {
                ks_in: ks_all.clone(),
                pools_in: of_source(src, false),
                k_out,
                pools_out: of_source(src, true),
            })
            .collect(),
    };
    let folds = vec![
        simple("dev <- k=7..10", &[7, 8, 9, 10], 0),
        simple("dev <- week before", &[7], 0),
        simple("week before <- dev", &[0], 7),
        loso(0),
        loso(7),
        simple("in-sample: dev <- all k", &ks_all, 0),
        simple("in-sample: week before <- all k", &ks_all, 7),
    ];
    // the plan margin the shipped structure (level, per plan) chooses on these weeks
    let plan_pick = |ks: &[usize], pools: &[usize]| {
        pick(
            plans.iter().filter(|c| c.structure == "level/per-plan"),
            ks,
            pools,
        )
    };
    // lead cells of `structure` (a prefix) that are consistent with that plan margin
    let lead_pick = |prefix: &str, ks: &[usize], pools: &[usize]| {
        let pa = plan_pick(ks, pools).settings.plan_margin.at_decision;
        pick(
            leads.iter().filter(|c| {
                c.structure.starts_with(prefix)
                    && (c.settings.lead_backtest != LeadBacktest::PooledAsDecided
                        || (c.settings.plan_margin.at_decision - pa).abs() < 1e-9)
            }),
            ks,
            pools,
        )
    };
    println!(
        "cells compared: {} plan, {} lead plan",
        plans.len(),
        leads.len()
    );
    print_held_out(
        "\nshipped structure (plan: level per plan; lead plan: mean per hour, as-held backtest):",
        &folds,
        n,
        &|ks, pools| {
            [
                Some(plan_pick(ks, pools)),
                Some(lead_pick("mean/per-hour as-held", ks, pools)),
            ]
        },
    );
    println!("\nplans decided now, per structure (margins chosen on the held-in weeks):");
    for (sn, _, _) in STRUCTURES {
        print_held_out(&format!(" {sn}"), &folds, n, &|ks, pools| {
            [
                Some(pick(plans.iter().filter(|c| c.structure == sn), ks, pools)),
                None,
            ]
        });
        let b = pick(plans.iter().filter(|c| c.structure == sn), &ks_all, &all);
        println!(
            "  best over all k: {} = {:.3}",
            b.name(),
            b.cost(&ks_all, &all)
        );
    }
    println!(
        "\nlead-time plans, per structure and backtest (margins chosen on the held-in weeks):"
    );
    for (sn, _, _) in STRUCTURES {
        for (bn, _) in BACKTESTS {
            let name = format!("{sn} {bn}");
            if !leads.iter().any(|c| c.structure == name) {
                continue;
            }
            print_held_out(&format!(" {name}"), &folds, n, &|ks, pools| {
                [None, Some(lead_pick(&name, ks, pools))]
            });
            let b = lead_pick(&name, &ks_all, &all);
            println!(
                "  best over all k: {} = {:.3}",
                b.name(),
                b.cost(&ks_all, &all)
            );
        }
    }
    // the shipped defaults themselves, over all pseudo-weeks
    let shipped = |cells: &[Cell], s: &Settings| -> Option<String> {
        cells
            .iter()
            .find(|c| {
                c.settings.plan_margin == s.plan_margin
                    && c.settings.lead_plan_margin == s.lead_plan_margin
                    && c.settings.lead_backtest == s.lead_backtest
            })
            .map(|c| {
                format!(
                    "{}: dev {} before {} all-k {:.3}",
                    c.name(),
                    week(&all.iter().map(|&i| c.c[i][0]).collect::<Vec<_>>()),
                    week(&all.iter().map(|&i| c.c[i][7]).collect::<Vec<_>>()),
                    c.cost(&ks_all, &all)
                )
            })
    };
    println!("\nshipped defaults (in-sample), and the best of the shipped structure over all pseudo-weeks:");
    let best = [
        plan_pick(&ks_all, &all),
        lead_pick("mean/per-hour as-held", &ks_all, &all),
    ];
    for ((track, cells), b) in [("plan", &plans), ("lead7", &leads)].into_iter().zip(best) {
        println!(
            "  {track:<5} {}\n        best {} all-k {:.3}",
            shipped(cells, &base).unwrap_or_else(|| "not in the grid".into()),
            b.name(),
            b.cost(&ks_all, &all)
        );
    }
    Ok(())
}
