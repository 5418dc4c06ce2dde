//! `capacity-eval DATA_DIR TASKS OUT.csv [options]`: runs the capacity benchmark (the same
//! library call the product CLI `rackwatch capacity eval` makes) and writes the scorer's CSV.
//!
//! Options (defaults = `Settings::default()`; used for cross-validation):
//!   --score                 also print the scorer's headline cost per track (Rust copy)
//!   --price P               price of an unserved GPU-hour (also used by --score)
//!   --plan-margin F         relative plan margin
//!   --lead-margin F         extra margin per week of lead
//!   --ensemble K            next-hour candidates averaged
//!   --window-days D         next-hour calibration window
//!   --plan-methods LIST     comma list of dec:HL:DAYS | win:DAYS | peak:DAYS | hod:DAYS | trend:DAYS
//!   --host-size N           GPUs per host

use anyhow::{anyhow, bail, Context, Result};
use rackwatch_capacity::{eval_with, score_predictions, PlanMethod, Settings, ShortHistory};
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
                s.plan_margin = val(i)?.parse()?;
                i += 1;
            }
            "--lead-margin" => {
                s.lead_margin_per_week = val(i)?.parse()?;
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
                println!("usage: capacity-eval DATA_DIR TASKS OUT.csv [--score] [--price P] [--plan-margin F] [--lead-margin F] [--ensemble K] [--window-days D] [--plan-methods LIST] [--host-size N]");
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
