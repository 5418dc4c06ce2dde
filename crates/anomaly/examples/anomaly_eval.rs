//! `anomaly-eval --dataset smd|asd|nab --data DIR --out DIR [--gpu]`
//! Stand-in for `rackwatch anomaly eval` until the CLI is wired. `RW_ANOMALY_OPTS` may hold a
//! JSON `EvalOptions` (for experiments; defaults otherwise).

use anyhow::{bail, Context, Result};
use rackwatch_anomaly::{eval_with, Backend, CpuBackend, EvalOptions};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dataset, mut data, mut out, mut gpu) = (None, None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dataset" => dataset = args.next(),
            "--data" => data = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--gpu" => gpu = true,
            _ => bail!("unknown argument {a}"),
        }
    }
    let dataset = dataset.context("--dataset smd|asd|nab")?;
    let data = data.context("--data DIR")?;
    let out = out.context("--out DIR")?;
    let opts: EvalOptions = match std::env::var("RW_ANOMALY_OPTS") {
        Ok(s) if !s.is_empty() => serde_json::from_str(&s)?,
        _ => EvalOptions::default(),
    };
    let backend: Box<dyn Backend> = if gpu {
        gpu_backend()?
    } else {
        Box::new(CpuBackend::default())
    };
    let summary = eval_with(backend.as_ref(), &dataset, &data, &out, &opts)?;
    println!("{summary}");
    Ok(())
}

#[cfg(feature = "gpu")]
fn gpu_backend() -> Result<Box<dyn Backend>> {
    Ok(Box::new(rackwatch_anomaly::GpuBackend::new()?))
}

#[cfg(not(feature = "gpu"))]
fn gpu_backend() -> Result<Box<dyn Backend>> {
    bail!("built without the `gpu` feature")
}
