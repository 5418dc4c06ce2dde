//! `anomaly_dump --dataset smd|asd --data DIR --out DIR`: for experiments on what happens after
//! the model (smoothing, aggregation over metrics, alert rules), write each series' per-metric
//! energies before smoothing, for the training rows (in-sample) and the test rows (the stream
//! continued), as little-endian f32 files `<name>.train.f32` / `<name>.test.f32` (rows × metrics,
//! row-major) with `<name>.shape` = "train_rows test_rows metrics". Settings as anomaly-eval
//! (`RW_ANOMALY_OPTS`); the EMA span is forced to 1 so the energies are the raw ones.

use anyhow::{bail, Context, Result};
use rackwatch_anomaly::{data::read_matrix, CpuBackend, Detector, EvalOptions, Matrix};
use std::path::{Path, PathBuf};

fn energies(det: &mut Detector, rows: &Matrix) -> Result<Vec<f32>> {
    let d = det.dim;
    let scored = det.score_explained(&CpuBackend::default(), rows, d)?;
    let mut out = vec![0.0f32; rows.rows * d];
    for (t, r) in scored.iter().enumerate() {
        let total = r.score * d as f32;
        for c in &r.top {
            out[t * d + c.metric] = c.share * total;
        }
    }
    Ok(out)
}

fn write_f32(path: &Path, v: &[f32]) -> Result<()> {
    let mut b = Vec::with_capacity(v.len() * 4);
    v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
    std::fs::write(path, b).with_context(|| format!("writing {}", path.display()))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut dataset, mut data, mut out) = (None, None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dataset" => dataset = args.next(),
            "--data" => data = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            _ => bail!("unknown argument {a}"),
        }
    }
    let _ = dataset.context("--dataset smd|asd")?;
    let data = data.context("--data DIR")?;
    let out = out.context("--out DIR")?;
    std::fs::create_dir_all(&out)?;
    let mut opts: EvalOptions = match std::env::var("RW_ANOMALY_OPTS") {
        Ok(s) if !s.is_empty() => serde_json::from_str(&s)?,
        _ => EvalOptions::default(),
    };
    opts.detector.ema_span = 1.0;
    let mut tests: Vec<PathBuf> = std::fs::read_dir(data.join("test"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    tests.sort();
    for test_path in tests {
        let file = test_path.file_name().unwrap().to_string_lossy().to_string();
        let name = file.trim_end_matches(".gz").trim_end_matches(".csv");
        let train = read_matrix(&data.join("train").join(&file))?;
        let test = read_matrix(&test_path)?;
        let det = Detector::fit(&train, opts.detector.clone())?;
        let mut replay = det.clone();
        replay.reset_stream();
        let e_train = energies(&mut replay, &train)?;
        let mut cont = det.clone();
        let e_test = energies(&mut cont, &test)?;
        write_f32(&out.join(format!("{name}.train.f32")), &e_train)?;
        write_f32(&out.join(format!("{name}.test.f32")), &e_test)?;
        std::fs::write(
            out.join(format!("{name}.shape")),
            format!("{} {} {}\n", train.rows, test.rows, train.cols),
        )?;
        println!(
            "{name}: {} + {} rows x {}",
            train.rows, test.rows, train.cols
        );
    }
    Ok(())
}
