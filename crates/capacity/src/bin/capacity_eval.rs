//! `capacity-eval DATA_DIR TASKS OUT.csv [options]`: runs the capacity benchmark (the same
//! library call the product CLI `rackwatch capacity eval` makes) and writes the scorer's CSV.
//!
//! Options (defaults = `Settings::default()`; used for cross-validation):
//!   --score                 also print the scorer's headline cost per track (Rust copy)
//!   --price P               price of an unserved GPU-hour (also used by --score)
//!   --plan-margin RULE      margin of weekly plans decided now, BASIS:GROWTH:AT:PER_WEEK with
//!                           BASIS level|mean, GROWTH plan|hour (default level:plan:0.2:0)
//!   --lead-margin RULE      margin of lead-time plans (default mean:hour:0.2:0.1)
//!   --lead-backtest B       same | as-held | at-origin | as-decided (LeadBacktest: lead-0
//!                           origins too, with the lead plan's margin at its lead, at lead 0,
//!                           or with the plan margin; default as-held)
//!   --ensemble K            next-hour candidates averaged
//!   --window-days D         next-hour calibration window
//!   --plan-methods LIST     comma list of dec:HL:DAYS | win:DAYS | peak:DAYS | hod:DAYS | trend:DAYS
//!   --host-size N           GPUs per host

use anyhow::{anyhow, bail, Context, Result};
use rackwatch_capacity::{
    eval_with, score_predictions, LeadBacktest, MarginBasis, MarginGrowth, MarginRule, PlanMethod,
    Settings, ShortHistory,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn parse_methods(s: &str) -> Result<Vec<PlanMethod>> {
    s.split(',')
        .map(|m| {
            let p: Vec<&str> = m.split(':').collect();
            let num = |i: usize| -> Result<f64> {
                p.get(i)
                    .ok_or_else(|| anyhow!("plan method {m:?}: missing field {i}"))?
                    .parse::<f64>()
                    .map_err(|_| anyhow!("plan method {m:?}: bad number"))
            };
            Ok(match p[0] {
                "dec" => PlanMethod::Decayed {
                    half_life_hours: num(1)?,
                    window_days: num(2)? as u32,
                },
                "win" => PlanMethod::Window {
                    days: num(1)? as u32,
                },
                "peak" => PlanMethod::Peak {
                    days: num(1)? as u32,
                },
                "hod" => PlanMethod::HourOfDay {
                    days: num(1)? as u32,
                },
                "trend" => PlanMethod::Trend {
                    days: num(1)? as u32,
                },
                o => bail!("unknown plan method {o:?} (dec, win, hod, trend)"),
            })
        })
        .collect()
}

/// `BASIS:GROWTH:AT:PER_WEEK`, e.g. `level:plan:0.2:0` or `mean:hour:0.2:0.1`.
fn parse_margin(s: &str) -> Result<MarginRule> {
    let p: Vec<&str> = s.split(':').collect();
    let [basis, growth, at, per_week] = p[..] else {
        bail!("margin {s:?}: want BASIS:GROWTH:AT:PER_WEEK, e.g. mean:hour:0.2:0.1");
    };
    Ok(MarginRule {
        basis: match basis {
            "level" => MarginBasis::Level,
            "mean" => MarginBasis::MeanDemand,
            o => bail!("margin basis {o:?}: level or mean"),
        },
        growth: match growth {
            "plan" => MarginGrowth::PerPlan,
            "hour" => MarginGrowth::PerHour,
            o => bail!("margin growth {o:?}: plan or hour"),
        },
        at_decision: at
            .parse()
            .map_err(|_| anyhow!("margin {s:?}: bad number {at:?}"))?,
        per_week: per_week
            .parse()
            .map_err(|_| anyhow!("margin {s:?}: bad number {per_week:?}"))?,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pos = Vec::new();
    let mut s = Settings {
        short_history: ShortHistory::Extrapolate,
        ..Settings::default()
    };
    let mut score = false;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let val = |i: usize| -> Result<&String> {
            args.get(i + 1).ok_or_else(|| anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--score" => score = true,
            "--price" => {
                s.price = val(i)?.parse()?;
                i += 1;
            }
            "--plan-margin" => {
                s.plan_margin = parse_margin(val(i)?)?;
                i += 1;
            }
            "--lead-margin" => {
                s.lead_plan_margin = parse_margin(val(i)?)?;
                i += 1;
            }
            "--lead-backtest" => {
                s.lead_backtest = match val(i)?.as_str() {
                    "same" => LeadBacktest::SameLead,
                    "as-held" => LeadBacktest::PooledAsHeld,
                    "at-origin" => LeadBacktest::PooledAtOrigin,
                    "as-decided" => LeadBacktest::PooledAsDecided,
                    o => bail!("--lead-backtest {o:?}: same, as-held, at-origin or as-decided"),
                };
                i += 1;
            }
            "--ensemble" => {
                s.autoscale_ensemble = val(i)?.parse()?;
                i += 1;
            }
            "--window-days" => {
                s.autoscale_window_days = val(i)?.parse()?;
                i += 1;
            }
            "--host-size" => {
                s.host_size = val(i)?.parse()?;
                i += 1;
            }
            "--plan-methods" => {
                s.plan_methods = parse_methods(val(i)?)?;
                i += 1;
            }
            "-h" | "--help" => {
                println!("usage: capacity-eval DATA_DIR TASKS OUT.csv [--score] [--price P] [--plan-margin BASIS:GROWTH:AT:PER_WEEK] [--lead-margin BASIS:GROWTH:AT:PER_WEEK] [--lead-backtest same|as-held|at-origin|as-decided] [--ensemble K] [--window-days D] [--plan-methods LIST] [--host-size N]");
                return Ok(());
            }
            _ if a.starts_with("--") => bail!("unknown option {a}"),
            _ => pos.push(PathBuf::from(a)),
        }
        i += 1;
    }
    let [data, tasks, out] = <[PathBuf; 3]>::try_from(pos).map_err(|_| {
        anyhow!("usage: capacity-eval DATA_DIR TASKS OUT.csv [options] (see --help)")
    })?;
    let sum = eval_with(&data, &tasks, &out, &s).context("capacity eval")?;
    println!("{sum}");
    println!("wrote {}", out.display());
    if score {
        let rows = score_predictions(&data, &tasks, &out, s.price)?;
        let mut by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in &rows {
            by.entry(r.track.as_str()).or_default().push(r.cost);
        }
        for (t, v) in &by {
            let mut m = v.clone();
            m.sort_by(f64::total_cmp);
            let med = if m.len() % 2 == 1 {
                m[m.len() / 2]
            } else {
                0.5 * (m[m.len() / 2 - 1] + m[m.len() / 2])
            };
            println!(
                "SCORE {t} mean={:.4} median={med:.4} n={}",
                v.iter().sum::<f64>() / v.len() as f64,
                v.len()
            );
        }
        for r in &rows {
            println!("SERIES {} {} {:.4}", r.track, r.series_id, r.cost);
        }
    }
    Ok(())
}
