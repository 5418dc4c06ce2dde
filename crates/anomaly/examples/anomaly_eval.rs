//! `anomaly-eval --dataset smd|asd|nab --data DIR --out DIR [--gpu]`
//! The benchmark runner behind `scripts/bench-anomaly` and the cross-validation driver
//! `scripts/anomaly_cv.py`. `RW_ANOMALY_OPTS` may hold a JSON `EvalOptions` (defaults
//! otherwise); `anomaly-eval --print-defaults` prints the defaults in that form, complete, so a
//! driver can change one setting and pass everything else unchanged.

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
            "--print-defaults" => {
                println!("{}", serde_json::to_string_pretty(&EvalOptions::default())?);
                return Ok(());
            }
            _ => bail!("unknown argument {a}"),
        }
    }
    let dataset = dataset.context("--dataset smd|asd|nab")?;
    let data = data.context("--data DIR")?;
    if throughput {
        return measure_throughput(&data, gpu);
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

/// Best-of-7 causal scoring rate (rows/s) of `det` over `rows` on `backend`, and the best-of-5
/// rate of the prediction + residual-energy kernel alone.
fn rates(
    backend: &dyn Backend,
    det: &rackwatch_anomaly::Detector,
    rows: &rackwatch_anomaly::Matrix,
) -> Result<(f64, f64)> {
    let mut best = 0.0f64;
    for _ in 0..7 {
        let mut d = det.clone();
        let t = std::time::Instant::now();
        let (s, _) = d.score_alerts(backend, rows)?;
        best = best.max(s.len() as f64 / t.elapsed().as_secs_f64());
    }
    let (n, dd, lags) = (rows.rows, rows.cols, det.config.lags);
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
        let e = backend.residual_energy(&zpad, n, dd, lags, w, &det.inv_resid_scale, 100.0)?;
        kbest = kbest.max(e.len() as f64 / dd as f64 / t.elapsed().as_secs_f64());
    }
    Ok((best, kbest))
}

/// Causal scoring throughput on the first test series of an SMD/ASD-style directory (rows/s,
/// the test part scored 4x back to back per repeat) on the CPU backend and, with `gpu`, on the
/// GPU backend in the same run, with their ratio.
fn measure_throughput(data: &std::path::Path, gpu: bool) -> Result<()> {
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
    let (best, kbest) = rates(&cpu, &det, &big)?;
    eprintln!("kernel only: {kbest:.0} rows/s");
    if std::env::var("RW_PROFILE").is_ok() {
        let one = CpuBackend::single_threaded();
        for _ in 0..3 {
            let (a1, k1) = rates(&one, &det, &big)?;
            eprintln!(
                "1 thread: kernel {:.0} ns/row, full {:.0} ns/row",
                1e9 / k1,
                1e9 / a1
            );
        }
    }
    println!(
        "throughput: {best:.0} rows/s ({} metrics, {} rows per batch, {})",
        big.cols,
        big.rows,
        cpu.name()
    );
    if gpu {
        let g = gpu_backend()?;
        // The first call compiles and uploads; leave it out of the timing.
        det.clone()
            .score_alerts(g.as_ref(), &big.slice_rows(0, 1024))?;
        let (gbest, gk) = rates(g.as_ref(), &det, &big)?;
        println!(
            "gpu throughput: {gbest:.0} rows/s, kernel only {gk:.0} rows/s ({})",
            g.name()
        );
        println!(
            "gpu ratio: {:.2} (end to end), {:.2} (kernel only)",
            gbest / best,
            gk / kbest
        );
    }
    Ok(())
}
