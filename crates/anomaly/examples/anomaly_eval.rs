//! `anomaly-eval --dataset smd|asd|nab --data DIR --out DIR [--gpu]`
//! Stand-in for `rackwatch anomaly eval` until the CLI is wired. `RW_ANOMALY_OPTS` may hold a
//! JSON `EvalOptions` (for experiments; defaults otherwise).

use anyhow::{bail, Context, Result};
use rackwatch_anomaly::{eval_with, Backend, CpuBackend, EvalOptions};
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dataset, mut data, mut out, mut gpu, mut throughput) =
        (None, None, None, false, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dataset" => dataset = args.next(),
            "--data" => data = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--gpu" => gpu = true,
            "--throughput" => throughput = true,
            _ => bail!("unknown argument {a}"),
        }
    }
    let dataset = dataset.context("--dataset smd|asd|nab")?;
    let data = data.context("--data DIR")?;
    if throughput {
        return measure_throughput(&data);
    }
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

/// Best-of-7 causal scoring throughput on the first test series of an SMD/ASD-style directory
/// (rows/s, CPU backend, the test part scored 4x back to back per repeat).
fn measure_throughput(data: &std::path::Path) -> Result<()> {
    use rackwatch_anomaly::{data::read_matrix, Detector, DetectorConfig, Matrix};
    let mut tests: Vec<PathBuf> = std::fs::read_dir(data.join("test"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    tests.sort();
    let test_path = tests.first().context("no test files")?;
    let name = test_path.file_name().unwrap().to_string_lossy().to_string();
    let train = read_matrix(&data.join("train").join(&name))?;
    let test = read_matrix(test_path)?;
    let mut big = Vec::with_capacity(test.data.len() * 4);
    for _ in 0..4 {
        big.extend_from_slice(&test.data);
    }
    let big = Matrix::new(test.rows * 4, test.cols, big);
    let det = Detector::fit(&train, DetectorConfig::default())?;
    let cpu = CpuBackend::default();
    let mut best = 0.0f64;
    for _ in 0..7 {
        let mut d = det.clone();
        let t = std::time::Instant::now();
        let (s, _) = d.score_alerts(&cpu, &big)?;
        let rate = s.len() as f64 / t.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    // Kernel alone (prediction + residual energy), for the breakdown.
    let (n, dd, lags) = (big.rows, big.cols, det.config.lags);
    let zpad: Vec<f32> = (0..(n + lags) * dd)
        .map(|i| (i % 97) as f32 * 0.01)
        .collect();
    let w = rackwatch_anomaly::backend::LagWeights {
        weights: &det.weights,
        bias: &det.bias,
    };
    let mut kbest = 0.0f64;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let e = cpu.residual_energy(&zpad, n, dd, lags, w, &det.inv_resid_scale, 100.0)?;
        kbest = kbest.max(e.len() as f64 / dd as f64 / t.elapsed().as_secs_f64());
    }
    eprintln!("kernel only: {kbest:.0} rows/s");
    if std::env::var("RW_PROFILE").is_ok() {
        let one = CpuBackend::single_threaded();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            one.residual_energy(&zpad, n, dd, lags, w, &det.inv_resid_scale, 100.0)?;
            let k1 = t.elapsed().as_secs_f64();
            let mut d1 = det.clone();
            let t = std::time::Instant::now();
            d1.score_alerts(&one, &big)?;
            let a1 = t.elapsed().as_secs_f64();
            eprintln!(
                "1 thread: kernel {:.0} ns/row, full {:.0} ns/row",
                k1 / n as f64 * 1e9,
                a1 / n as f64 * 1e9
            );
        }
    }
    println!(
        "throughput: {best:.0} rows/s ({} metrics, {} rows per batch, {})",
        big.cols,
        big.rows,
        cpu.name()
    );
    Ok(())
}
