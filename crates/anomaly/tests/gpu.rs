//! GPU backend vs CPU backend (needs `--features gpu` and a wgpu adapter, e.g. lavapipe).
#![cfg(feature = "gpu")]
mod common;
use common::{synthetic, Rng};
use rackwatch_anomaly::backend::LagWeights;
use rackwatch_anomaly::{Backend, CpuBackend, Detector, DetectorConfig, GpuBackend};

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs()),
            "{i}: cpu {x} gpu {y}"
        );
    }
}

#[test]
fn gpu_matches_cpu() {
    let gpu = GpuBackend::new().expect("wgpu adapter");
    eprintln!("backend: {}", gpu.name());
    let cpu = CpuBackend::default();
    let mut rng = Rng::new(21);
    let (d, lags, n) = (38usize, 3usize, 2500usize);
    let train = synthetic(n, d, 0, &mut rng);
    let zpad: Vec<f32> = train.data.iter().map(|v| (v - 0.5) * 4.0).collect();
    let m = n - lags;
    // Kernels.
    let (cx, cy) = cpu.cross_products(&zpad, m, d, lags).unwrap();
    let (gx, gy) = gpu.cross_products(&zpad, m, d, lags).unwrap();
    let f32v = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    close(&f32v(&cx), &f32v(&gx), 1e-4);
    close(&f32v(&cy), &f32v(&gy), 1e-4);
    let weights: Vec<f32> = (0..lags * d * d)
        .map(|_| (rng.normal() * 0.05) as f32)
        .collect();
    let bias: Vec<f32> = (0..d).map(|_| rng.normal() as f32 * 0.1).collect();
    let inv: Vec<f32> = (0..d).map(|j| 1.0 + j as f32 * 0.1).collect();
    let w = LagWeights {
        weights: &weights,
        bias: &bias,
    };
    let ce = cpu
        .residual_energy(&zpad, m, d, lags, w, &inv, 5.0)
        .unwrap();
    let ge = gpu
        .residual_energy(&zpad, m, d, lags, w, &inv, 5.0)
        .unwrap();
    close(&ce, &ge, 1e-4);
    // The whole detector: same code path, both backends.
    let test = synthetic(1000, d, n, &mut rng);
    let mut dc = Detector::fit_with(&cpu, &train, DetectorConfig::default()).unwrap();
    let mut dg = Detector::fit_with(&gpu, &train, DetectorConfig::default()).unwrap();
    close(&dc.weights, &dg.weights, 1e-2);
    let sc = dc.score_with(&cpu, &test).unwrap();
    let sg = dg.score_with(&gpu, &test).unwrap();
    close(&sc, &sg, 2e-2);
}
