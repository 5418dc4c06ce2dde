//! GPU backend vs CPU backend (needs `--features gpu` and a wgpu adapter, e.g. lavapipe).
//!
//! Tolerances, and why:
//! * cross products: |gpu − cpu| ≤ 1e-5 · √(G_aa · G_bb) (G = the Gram matrix of the lag
//!   windows; Cauchy–Schwarz bounds every entry by that). The GPU sums 256-row chunks in
//!   f32 and the chunks pairwise; the CPU sums in f64.
//! * absolute residuals: |gpu − cpu| ≤ 2 · (F + 2) · 2⁻²⁴ · (|y| + |b| + Σ|x·w|), twice the
//!   textbook bound of an f32 dot product of F + 2 terms (both backends round).
//! * detectors: weights within 1e-3 absolute, residual scales and alert thresholds within
//!   1e-3 relative; scores and levels within 1e-3 relative (1e-4 absolute near zero); alerts
//!   equal except where score and level are within that tolerance; the top metric equal
//!   except where the top two shares are within 1e-3.
//!
//! Each test prints the largest error it measured.
#![cfg(feature = "gpu")]
mod common;
mod fleet;

use common::{synthetic, Rng};
use rackwatch_anomaly::backend::{FitJob, LagWeights, ModelKey, ResidualJob, Series};
use rackwatch_anomaly::{
    Backend, BackendChoice, BackendError, BackendKind, CpuBackend, Detector, DetectorConfig,
    GpuBackend, GpuOptions, Matrix, ScoreInput, ScoredRow, SelectOptions, SelectedBackend,
    TrainInput,
};

fn gpu() -> GpuBackend {
    let g = GpuBackend::new().expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    eprintln!("backend: {}", Backend::info(&g));
    g
}

/// Every pair within `tol` relative (absolute near zero); prints the largest error.
fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let e = (x - y).abs() / (1.0 + x.abs());
        worst = worst.max(e);
        assert!(e <= tol, "{i}: cpu {x} gpu {y}");
    }
    println!("largest error {worst:.2e} (bound {tol:.0e})");
}

#[test]
fn gpu_matches_cpu() {
    let gpu = gpu();
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
    // The module's detector tolerances: weights 1e-3 absolute, scores 1e-3 relative and
    // 1e-4 absolute near zero.
    let weights: f32 = dc
        .weights
        .iter()
        .zip(&dg.weights)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(weights <= 1e-3, "weights differ by {weights:.2e}");
    let sc = dc.score_with(&cpu, &test).unwrap();
    let sg = dg.score_with(&gpu, &test).unwrap();
    for (i, (x, y)) in sc.iter().zip(&sg).enumerate() {
        assert!(
            (x - y).abs() <= 1e-3 * x.abs() + 1e-4,
            "score {i}: cpu {x} gpu {y}"
        );
    }
    println!("weights within {weights:.2e}; scores within 1e-3 relative + 1e-4");
}

/// Largest normalized cross-product error of one host (see the module doc).
fn cross_error(s: &Series<'_>, c: &(Vec<f64>, Vec<f64>), g: &(Vec<f64>, Vec<f64>)) -> f64 {
    let (d, lags, n) = (s.d, s.lags, s.n);
    let (fx, f, m) = (lags * d, lags * d + 1, (lags + 1) * d);
    // Diagonal of the full window Gram matrix (the constant column's is n).
    let mut diag = vec![0.0f64; m];
    for t in 0..n {
        for (c, g) in diag.iter_mut().enumerate() {
            let v = s.zpad[t * d + c] as f64;
            *g += v * v;
        }
    }
    let dg = |a: usize| if a < fx { diag[a] } else { n as f64 };
    let mut worst = 0.0f64;
    for a in 0..f {
        for b in 0..f {
            let e = (c.0[a * f + b] - g.0[a * f + b]).abs() / (dg(a) * dg(b)).sqrt().max(1e-30);
            worst = worst.max(e);
        }
        for j in 0..d {
            let e =
                (c.1[a * d + j] - g.1[a * d + j]).abs() / (dg(a) * diag[fx + j]).sqrt().max(1e-30);
            worst = worst.max(e);
        }
    }
    worst
}

#[test]
fn batched_cross_products_and_residuals_agree_on_a_fleet() {
    let gpu = gpu();
    let cpu = CpuBackend::default();
    let fleet = fleet::fleet(3);
    let zs: Vec<Vec<f32>> = fleet
        .iter()
        .map(|h| fleet::zpad(&h.train, h.config.lags))
        .collect();
    let series: Vec<Series<'_>> = fleet
        .iter()
        .zip(&zs)
        .map(|(h, z)| Series {
            zpad: z,
            n: h.train.rows,
            d: h.train.cols,
            lags: h.config.lags,
        })
        .collect();
    let c = cpu.cross_products_batch(&series);
    let g = gpu.cross_products_batch(&series);
    assert_eq!(g.len(), fleet.len());
    let mut worst = 0.0f64;
    for (i, ((s, c), g)) in series.iter().zip(&c).zip(&g).enumerate() {
        let (c, g) = (c.as_ref().unwrap(), g.as_ref().unwrap());
        let e = cross_error(
            s,
            &(c.xtx.clone(), c.xty.clone()),
            &(g.xtx.clone(), g.xty.clone()),
        );
        assert!(e <= 1e-5, "host {i} (d {} n {}): {e:e}", s.d, s.n);
        // The constant feature's diagonal is the row count, exactly.
        let f = s.features();
        assert_eq!(g.xtx[f * f - 1], s.n as f64);
        worst = worst.max(e);
    }
    eprintln!(
        "cross products: largest error {worst:.2e} of sqrt(G_aa G_bb) over {} hosts",
        fleet.len()
    );
    // Residuals with random weights.
    let mut rng = Rng::new(5);
    let ws: Vec<(Vec<f32>, Vec<f32>)> = series
        .iter()
        .map(|s| {
            let w = (0..s.lags * s.d * s.d)
                .map(|_| (rng.normal() * 0.3 / s.d as f64) as f32)
                .collect();
            let b = (0..s.d).map(|_| (rng.normal() * 0.1) as f32).collect();
            (w, b)
        })
        .collect();
    let jobs: Vec<ResidualJob<'_>> = series
        .iter()
        .zip(&ws)
        .map(|(s, (w, b))| ResidualJob {
            series: *s,
            weights: LagWeights {
                weights: w,
                bias: b,
            },
        })
        .collect();
    let c = cpu.abs_residuals_batch(&jobs);
    let g = gpu.abs_residuals_batch(&jobs);
    let mut worst = 0.0f64;
    for (j, (c, g)) in jobs.iter().zip(c.iter().zip(&g)) {
        let (c, g) = (c.as_ref().unwrap(), g.as_ref().unwrap());
        let s = j.series;
        let fx = s.lags * s.d;
        assert_eq!(c.len(), s.n * s.d);
        assert_eq!(g.len(), s.n * s.d);
        let bound = 2.0 * (fx + 2) as f64 * (2.0f64).powi(-24);
        for t in 0..s.n {
            for k in 0..s.d {
                let mut mag =
                    (s.zpad[(t + s.lags) * s.d + k].abs() + j.weights.bias[k].abs()) as f64;
                for f in 0..fx {
                    mag += (s.zpad[t * s.d + f] * j.weights.weights[f * s.d + k]).abs() as f64;
                }
                let e = (c[t * s.d + k] - g[t * s.d + k]).abs() as f64 / mag;
                assert!(
                    e <= bound,
                    "d {} t {t} k {k}: cpu {} gpu {}",
                    s.d,
                    c[t * s.d + k],
                    g[t * s.d + k]
                );
                worst = worst.max(e / bound);
            }
        }
    }
    eprintln!("residuals: largest error {worst:.3} of the f32 dot-product bound");
    let st = gpu.stats();
    assert_eq!(st.calls, 2, "{st:?}");
    assert_eq!(st.submits, 2, "one submit per batched call: {st:?}");
}

fn rel(a: f32, b: f32) -> f32 {
    (a - b).abs() / a.abs().max(0.1)
}

/// Compare the scored windows of one host; returns (largest score error, largest level
/// error, alerts compared, near-ties skipped).
fn compare_rows(i: usize, c: &[ScoredRow], g: &[ScoredRow]) -> (f32, f32, usize, usize) {
    assert_eq!(c.len(), g.len(), "host {i}");
    let (mut es, mut el, mut n, mut ties) = (0.0f32, 0.0f32, 0, 0);
    for (t, (c, g)) in c.iter().zip(g).enumerate() {
        let (s, l) = (rel(c.score, g.score), rel(c.level, g.level));
        assert!(
            s <= 1e-3,
            "host {i} row {t}: score cpu {} gpu {}",
            c.score,
            g.score
        );
        assert!(
            l <= 1e-3,
            "host {i} row {t}: level cpu {} gpu {}",
            c.level,
            g.level
        );
        es = es.max(s);
        el = el.max(l);
        if rel(c.score, c.level) <= 1e-3 {
            ties += 1;
        } else {
            assert_eq!(c.alert, g.alert, "host {i} row {t}: {c:?} vs {g:?}");
            n += 1;
        }
        assert_eq!(c.top.len(), g.top.len());
        if c.top[0].metric != g.top[0].metric {
            let gap = c.top[0].share - c.top.get(1).map_or(0.0, |x| x.share);
            assert!(
                gap <= 1e-3,
                "host {i} row {t}: top cpu {:?} gpu {:?}",
                c.top,
                g.top
            );
            ties += 1;
        } else {
            assert!((c.top[0].share - g.top[0].share).abs() <= 1e-3);
        }
    }
    (es, el, n, ties)
}

#[test]
fn a_fleet_trains_and_scores_alike_on_gpu_and_cpu() {
    let gpu = gpu();
    let cpu = CpuBackend::default();
    let fleet = fleet::fleet(11);
    let inputs: Vec<TrainInput<'_>> = fleet
        .iter()
        .map(|h| TrainInput {
            rows: &h.train,
            config: &h.config,
        })
        .collect();
    let mut mc: Vec<Detector> = Detector::fit_batch(&cpu, &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut mg: Vec<Detector> = Detector::fit_batch(&gpu, &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let (mut ew, mut es, mut et) = (0.0f32, 0.0f32, 0.0f32);
    for (i, (c, g)) in mc.iter().zip(&mg).enumerate() {
        for (a, b) in c
            .weights
            .iter()
            .zip(&g.weights)
            .chain(c.bias.iter().zip(&g.bias))
        {
            assert!((a - b).abs() <= 1e-3, "host {i}: weight cpu {a} gpu {b}");
            ew = ew.max((a - b).abs());
        }
        for (a, b) in c.inv_resid_scale.iter().zip(&g.inv_resid_scale) {
            assert!(rel(*a, *b) <= 1e-3, "host {i}: scale cpu {a} gpu {b}");
            es = es.max(rel(*a, *b));
        }
        let (a, b) = (c.alert_threshold(), g.alert_threshold());
        assert!(rel(a, b) <= 1e-3, "host {i}: threshold cpu {a} gpu {b}");
        et = et.max(rel(a, b));
        // The stream the model continues from (on the GPU rebuilt from a calibration
        // summary for the hosts configured like the product, `univariate_weight = 0`).
        assert_eq!(c.state.history, g.state.history, "host {i}");
        assert_eq!(c.state.started, g.state.started);
        assert_eq!(c.state.recent_count, g.state.recent_count);
        assert_eq!(c.state.recent.len(), g.state.recent.len());
        for (a, b) in c.state.ema.iter().zip(&g.state.ema) {
            assert!(rel(*a, *b) <= 1e-3, "host {i}: ema cpu {a} gpu {b}");
        }
        for (a, b) in c.state.recent_sorted.iter().zip(&g.state.recent_sorted) {
            assert!(
                rel(*a, *b) <= 1e-3,
                "host {i}: recent score cpu {a} gpu {b}"
            );
        }
    }
    eprintln!(
        "models: weights {ew:.2e} abs, residual scales {es:.2e} rel, thresholds {et:.2e} rel"
    );
    let (mut wsc, mut wl, mut compared, mut ties, mut alerts) = (0.0f32, 0.0f32, 0, 0, 0);
    for w in 0..3 {
        let run = |models: &mut Vec<Detector>, b: &dyn Backend| {
            let mut jobs: Vec<ScoreInput<'_>> = models
                .iter_mut()
                .zip(&fleet)
                .map(|(d, h)| ScoreInput {
                    detector: d,
                    rows: &h.windows[w],
                })
                .collect();
            Detector::score_explained_batch(b, &mut jobs, 3)
        };
        let sc = run(&mut mc, &cpu);
        let sg = run(&mut mg, &gpu);
        for (i, (c, g)) in sc.iter().zip(&sg).enumerate() {
            let (c, g) = (c.as_ref().unwrap(), g.as_ref().unwrap());
            let (a, b, n, t) = compare_rows(i, c, g);
            wsc = wsc.max(a);
            wl = wl.max(b);
            compared += n;
            ties += t;
            alerts += c.iter().filter(|r| r.alert).count();
        }
    }
    eprintln!(
        "scores: {wsc:.2e} rel, levels {wl:.2e} rel; {compared} alert decisions equal, {ties} near-ties skipped, {alerts} alerts"
    );
    assert!(alerts > 20, "the injected faults alert: {alerts}");
    assert!(ties * 100 <= compared, "{ties} near-ties of {compared}");
}

#[test]
fn an_oversized_host_gets_a_typed_error_and_the_selected_backend_moves_it_to_the_cpu() {
    // A 1 MiB cap stands in for a device limit: a host with 20,000 rows of 16 metrics
    // (1.3 MB of series) cannot fit; the others can.
    let opts = GpuOptions {
        allow_software: true,
        max_buffer_bytes: 1 << 20,
        ..GpuOptions::default()
    };
    let gpu = GpuBackend::with_options(opts).unwrap();
    assert_eq!(gpu.buffer_limits().0, 1 << 20);
    let mut rng = Rng::new(17);
    let small = synthetic(2000, 16, 0, &mut rng);
    let big = synthetic(20_000, 16, 0, &mut rng);
    let config = DetectorConfig::default();
    let wide = Matrix::new(8, 700, (0..5600).map(|i| (i % 13) as f32).collect());
    // Hosts 1 and 2 configured like the product (calibrated on the device), 0 and 3 with
    // the univariate blend (every residual read back).
    let product = DetectorConfig {
        univariate_weight: 0.0,
        ..DetectorConfig::default()
    };
    let inputs = [
        (&small, &config),
        (&big, &product),
        (&small, &product),
        (&wide, &config),
    ]
    .map(|(rows, config)| TrainInput { rows, config });
    let out = Detector::fit_batch(&gpu, &inputs);
    assert!(out[0].is_ok() && out[2].is_ok());
    let e = out[1].as_ref().unwrap_err();
    match e.downcast_ref::<BackendError>() {
        Some(BackendError::TooLarge { what, bytes, limit }) => {
            assert_eq!(*what, "lag-window series");
            assert_eq!(*bytes, 20_003 * 16 * 4);
            assert_eq!(*limit, 1 << 20);
        }
        other => panic!("expected TooLarge, got {other:?} ({e:#})"),
    }
    assert!(e.to_string().contains("too large"), "{e}");
    assert!(matches!(
        out[3].as_ref().unwrap_err().downcast_ref::<BackendError>(),
        Some(BackendError::TooManyFeatures { features: 2101, .. })
    ));
    // The product's backend: the host the device cannot hold is trained on the CPU; the
    // one that fits neither path keeps its error.
    let sel = SelectedBackend::select(
        BackendChoice::Gpu,
        &SelectOptions {
            allow_software_adapter: true,
            max_buffer_bytes: Some(1 << 20),
            // Every scoring call on the device, whatever its size.
            min_gpu_score_work: Some(0),
            ..SelectOptions::default()
        },
    )
    .unwrap();
    assert_eq!(sel.kind(), BackendKind::Gpu);
    let out = Detector::fit_batch(&sel, &inputs);
    let want = Detector::fit_with(&CpuBackend::single_threaded(), &big, product.clone()).unwrap();
    assert_eq!(
        out[1].as_ref().unwrap(),
        &want,
        "the CPU trained the big host"
    );
    // One training call (products, solve, calibration) moved to the CPU for that host.
    assert_eq!(sel.cpu_fallback_hosts(), 1);
    assert!(out[3].is_err());
    // Scoring a long window of the big host also moves to the CPU.
    let mut m = want.clone();
    let mut c = want.clone();
    let mut jobs = [ScoreInput {
        detector: &mut m,
        rows: &big,
    }];
    let got = Detector::score_explained_batch(&sel, &mut jobs, 2);
    let exp = c.score_explained(&CpuBackend::default(), &big, 2).unwrap();
    assert_eq!(got[0].as_ref().unwrap(), &exp);
    assert_eq!(sel.cpu_fallback_hosts(), 2);
}

#[test]
fn auto_without_a_usable_adapter_falls_back_to_the_cpu() {
    // No adapter has this name: as on a machine without a GPU.
    let none = SelectOptions {
        adapter_name: Some("no-such-adapter-4711".into()),
        allow_software_adapter: true,
        ..SelectOptions::default()
    };
    let auto = SelectedBackend::select(BackendChoice::Auto, &none).unwrap();
    assert_eq!(auto.kind(), BackendKind::Cpu);
    let why = auto.fallback_reason().unwrap();
    assert!(
        why.contains("using the CPU") && why.contains("no usable GPU adapter"),
        "{why}"
    );
    let e = SelectedBackend::select(BackendChoice::Gpu, &none)
        .err()
        .unwrap();
    assert!(matches!(e, BackendError::NoAdapter { .. }), "{e:?}");
    // A software adapter (lavapipe) is not taken for a GPU unless allowed.
    let hw = SelectedBackend::select(BackendChoice::Auto, &SelectOptions::default()).unwrap();
    if hw.kind() == BackendKind::Cpu {
        let why = hw.fallback_reason().unwrap();
        assert!(why.contains("not a software one"), "{why}");
    } else {
        assert!(!hw.info().software);
    }
    let sw = SelectedBackend::select(
        BackendChoice::Auto,
        &SelectOptions {
            allow_software_adapter: true,
            ..SelectOptions::default()
        },
    )
    .unwrap();
    assert_eq!(sw.kind(), BackendKind::Gpu);
    assert_eq!(sw.fallback_reason(), None);
    let info = sw.info();
    assert!(info.api.is_some() && !info.device.is_empty(), "{info:?}");
    eprintln!("selected: {info}");
}

#[test]
fn buffers_are_reused_across_calls() {
    let gpu = gpu();
    let mut rng = Rng::new(23);
    let train = synthetic(3000, 16, 0, &mut rng);
    let config = DetectorConfig::default();
    let inputs = [TrainInput {
        rows: &train,
        config: &config,
    }; 4];
    let first = Detector::fit_batch(&gpu, &inputs);
    let allocated = gpu.stats().buffer_allocations;
    let second = Detector::fit_batch(&gpu, &inputs);
    let st = gpu.stats();
    assert_eq!(st.buffer_allocations, allocated, "no new buffers: {st:?}");
    assert_eq!(
        st.submits, 4,
        "two submits (products, residuals) per training batch"
    );
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap(), "deterministic");
    }
}

#[test]
fn many_small_hosts_train_in_one_device_batch_on_a_fresh_backend() {
    // 60 single-tile hosts configured like the product, on a backend whose buffers have
    // never grown: every table of the device-side training must be sized from the plan.
    let gpu = gpu();
    let mut rng = Rng::new(29);
    let rows: Vec<Matrix> = (0..60)
        .map(|i| synthetic(300 + 7 * i, 16, i * 100, &mut rng))
        .collect();
    let config = DetectorConfig {
        univariate_weight: 0.0,
        clip: 10.0,
        ..DetectorConfig::default()
    };
    let inputs: Vec<TrainInput<'_>> = rows
        .iter()
        .map(|rows| TrainInput {
            rows,
            config: &config,
        })
        .collect();
    let g = Detector::fit_batch(&gpu, &inputs);
    let c = Detector::fit_batch(&CpuBackend::default(), &inputs);
    for (i, (g, c)) in g.iter().zip(&c).enumerate() {
        let (g, c) = (g.as_ref().unwrap(), c.as_ref().unwrap());
        let (a, b) = (c.alert_threshold(), g.alert_threshold());
        assert!(rel(a, b) <= 1e-3, "host {i}: threshold cpu {a} gpu {b}");
    }
    // The whole training on the device: one submit for the one sub-batch.
    assert_eq!(gpu.stats().submits, 1, "one sub-batch: {:?}", gpu.stats());
}

/// The product's configuration: the joint model alone, so hosts train on the device.
fn product() -> DetectorConfig {
    DetectorConfig {
        univariate_weight: 0.0,
        clip: 10.0,
        ..DetectorConfig::default()
    }
}

#[test]
fn device_training_standardizes_like_the_cpu_and_reports_a_singular_system() {
    let gpu = gpu();
    assert_eq!(gpu.device_training_unavailable(), None, "lavapipe has f64");
    let mut rng = Rng::new(31);
    let rows: Vec<Matrix> = (0..6)
        .map(|i| synthetic(700 + 300 * i, 4 + 3 * i, i * 10, &mut rng))
        .collect();
    let config = product();
    let inputs: Vec<TrainInput<'_>> = rows
        .iter()
        .map(|rows| TrainInput {
            rows,
            config: &config,
        })
        .collect();
    let g = Detector::fit_batch(&gpu, &inputs);
    let c = Detector::fit_batch(&CpuBackend::default(), &inputs);
    assert_eq!(gpu.stats().submits, 1, "one device step: {:?}", gpu.stats());
    for (i, (g, c)) in g.iter().zip(&c).enumerate() {
        let (g, c) = (g.as_ref().unwrap(), c.as_ref().unwrap());
        // f64 statistics on both: the same f32 mean and scale, so the same standardized rows.
        assert_eq!(g.mean, c.mean, "host {i}");
        assert_eq!(g.inv_std, c.inv_std, "host {i}");
        assert_eq!(g.state.history, c.state.history, "host {i}");
        assert_eq!(g.state.recent_count, c.state.recent_count);
        assert_eq!(g.state.recent.len(), c.state.recent.len());
        assert_eq!(g.threshold.n, c.threshold.n, "host {i}: calibration scores");
        assert!(
            g.threshold.n_peaks.abs_diff(c.threshold.n_peaks) <= 1,
            "host {i}: peaks {} vs {}",
            g.threshold.n_peaks,
            c.threshold.n_peaks
        );
        let (a, b) = (c.alert_threshold(), g.alert_threshold());
        assert!(rel(a, b) <= 1e-3, "host {i}: threshold cpu {a} gpu {b}");
    }
    // Without the ridge, a constant metric makes the normal equations singular: both paths
    // refuse the host with the same message, the others train.
    let mut flat = synthetic(500, 5, 0, &mut rng);
    for r in 0..flat.rows {
        flat.row_mut(r)[2] = 1.5;
    }
    let singular = DetectorConfig {
        ridge: 0.0,
        ..product()
    };
    let inputs = [
        TrainInput {
            rows: &rows[0],
            config: &config,
        },
        TrainInput {
            rows: &flat,
            config: &singular,
        },
    ];
    for b in [&gpu as &dyn Backend, &CpuBackend::default()] {
        let out = Detector::fit_batch(b, &inputs);
        assert!(out[0].is_ok());
        let e = out[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("not positive definite"), "{}: {e}", b.name());
    }
}

/// The device finds the upper tail by a radix select and sorts it in workgroup memory, or,
/// for a low quantile (more than 2,048 scores above it), sorts every score in the scratch
/// buffer: both give the CPU's calibration.
#[test]
fn the_upper_tail_is_selected_alike_at_a_high_and_a_low_quantile() {
    let gpu = gpu();
    let mut rng = Rng::new(33);
    let rows: Vec<Matrix> = (0..3)
        .map(|i| synthetic(6000 + 500 * i, 16, 200 * i, &mut rng))
        .collect();
    for q in [0.98, 0.9, 0.5, 0.0] {
        let config = DetectorConfig {
            pot_init_quantile: q,
            ..product()
        };
        let inputs: Vec<TrainInput<'_>> = rows
            .iter()
            .map(|rows| TrainInput {
                rows,
                config: &config,
            })
            .collect();
        let g = Detector::fit_batch(&gpu, &inputs);
        let c = Detector::fit_batch(&CpuBackend::default(), &inputs);
        for (i, (g, c)) in g.iter().zip(&c).enumerate() {
            let (g, c) = (g.as_ref().unwrap(), c.as_ref().unwrap());
            assert_eq!(g.threshold.n, c.threshold.n, "q {q} host {i}");
            assert!(
                g.threshold.n_peaks.abs_diff(c.threshold.n_peaks) <= 1,
                "q {q} host {i}: peaks {} vs {}",
                g.threshold.n_peaks,
                c.threshold.n_peaks
            );
            let (a, b) = (c.alert_threshold(), g.alert_threshold());
            assert!(
                rel(a, b) <= 1e-3,
                "q {q} host {i}: threshold cpu {a} gpu {b}"
            );
            eprintln!("q {q} host {i}: threshold cpu {a} gpu {b}");
        }
    }
}

/// The product's backend scores small calls (a one-minute run) on the CPU and large ones (a
/// catch-up) on the device; the CPU's results are the CPU backend's, bit for bit.
#[test]
fn the_selected_backend_routes_small_scoring_calls_to_the_cpu() {
    let mut rng = Rng::new(43);
    let all: Vec<Matrix> = (0..6)
        .map(|i| synthetic(1400, 16, i * 100, &mut rng))
        .collect();
    let train: Vec<Matrix> = all.iter().map(|m| m.slice_rows(0, 1000)).collect();
    let config = product();
    let inputs: Vec<TrainInput<'_>> = train
        .iter()
        .map(|rows| TrainInput {
            rows,
            config: &config,
        })
        .collect();
    let models: Vec<Detector> = Detector::fit_batch(&CpuBackend::default(), &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // 6 hosts × 16 metrics × 49 features: 4,704 multiply-adds a minute; the line at 100
    // minutes' worth.
    let sel = SelectedBackend::select(
        BackendChoice::Gpu,
        &SelectOptions {
            allow_software_adapter: true,
            threads: Some(2),
            min_gpu_score_work: Some(470_400),
            ..SelectOptions::default()
        },
    )
    .unwrap();
    assert_eq!(sel.scores_on(470_399), BackendKind::Cpu);
    assert_eq!(sel.scores_on(470_400), BackendKind::Gpu);
    let (mut on_sel, mut on_cpu) = (models.clone(), models.clone());
    let v1 = vec![Some(1u64); all.len()];
    let cpu = CpuBackend { threads: 2 };
    for (k, (from, to)) in [(1000, 1001), (1001, 1002), (1002, 1302)]
        .into_iter()
        .enumerate()
    {
        let rows: Vec<Matrix> = all.iter().map(|m| m.slice_rows(from, to)).collect();
        let calls = sel.cpu_scoring_calls();
        let a = score_keyed(&sel, &mut on_sel, &rows, &v1);
        let b = score_keyed(&cpu, &mut on_cpu, &rows, &v1);
        if k < 2 {
            assert_eq!(sel.cpu_scoring_calls(), calls + 1, "one minute: the CPU");
            assert_eq!(a, b, "the CPU backend's results");
        } else {
            assert_eq!(sel.cpu_scoring_calls(), calls, "300 minutes: the device");
            assert_eq!(sel.gpu().unwrap().stats().model_uploads, all.len() as u64);
            for (h, (a, b)) in a.iter().zip(&b).enumerate() {
                let (s, l, _, _) = compare_rows(h, b, a);
                assert!(s <= 1e-3 && l <= 1e-3, "host {h}: scores {s} levels {l}");
            }
        }
    }
}

#[test]
fn pipelined_sub_batches_train_the_same_models_as_one_batch() {
    let mut rng = Rng::new(37);
    let rows: Vec<Matrix> = (0..12)
        .map(|i| synthetic(900 + 40 * i, 16, i * 50, &mut rng))
        .collect();
    let config = product();
    let inputs: Vec<TrainInput<'_>> = rows
        .iter()
        .map(|rows| TrainInput {
            rows,
            config: &config,
        })
        .collect();
    let one = gpu();
    // About 60 KB of rows per host: 128 KiB sub-batches hold two hosts each.
    let piped = GpuBackend::with_options(GpuOptions {
        allow_software: true,
        pipeline_bytes: 128 << 10,
        ..GpuOptions::default()
    })
    .unwrap();
    let a = Detector::fit_batch(&one, &inputs);
    let b = Detector::fit_batch(&piped, &inputs);
    assert_eq!(one.stats().submits, 1);
    let st = piped.stats();
    assert!(st.submits >= 6, "pipelined: {st:?}");
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        assert_eq!(a.as_ref().unwrap(), b.as_ref().unwrap(), "host {i}");
    }
    // Buffers were sized once for the largest sub-batch: a second call allocates nothing.
    let before = piped.stats().buffer_allocations;
    Detector::fit_batch(&piped, &inputs);
    assert_eq!(piped.stats().buffer_allocations, before);
}

/// One scoring run of `models` on `rows`, keyed by host index and `versions[h]` (all `None`:
/// no keys).
fn score_keyed(
    b: &dyn Backend,
    models: &mut [Detector],
    rows: &[Matrix],
    versions: &[Option<u64>],
) -> Vec<Vec<ScoredRow>> {
    let mut jobs: Vec<ScoreInput<'_>> = models
        .iter_mut()
        .zip(rows)
        .map(|(detector, rows)| ScoreInput { detector, rows })
        .collect();
    let keys: Vec<ModelKey> = versions
        .iter()
        .enumerate()
        .filter_map(|(h, v)| {
            v.map(|version| ModelKey {
                host: h as u64,
                version,
            })
        })
        .collect();
    assert!(
        keys.is_empty() || keys.len() == versions.len(),
        "all keyed or none"
    );
    Detector::score_explained_batch_keyed(b, &mut jobs, &keys, 3)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn resident_models_are_uploaded_once_per_version_and_score_as_uploaded_ones() {
    let gpu = gpu();
    let mut rng = Rng::new(41);
    let hosts = 20;
    let all: Vec<Matrix> = (0..hosts)
        .map(|i| synthetic(1300, 16, i * 100, &mut rng))
        .collect();
    let train: Vec<Matrix> = all.iter().map(|m| m.slice_rows(0, 1000)).collect();
    let config = product();
    let inputs: Vec<TrainInput<'_>> = train
        .iter()
        .map(|rows| TrainInput {
            rows,
            config: &config,
        })
        .collect();
    let models: Vec<Detector> = Detector::fit_batch(&CpuBackend::default(), &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let (mut keyed, mut plain, mut cpu) = (models.clone(), models.clone(), models.clone());
    let uploads = |g: &GpuBackend| g.stats().model_uploads;
    let v1 = vec![Some(1u64); hosts];
    // Runs of one minute, then a catch-up of 200 minutes.
    let windows: Vec<(usize, usize)> = vec![(1000, 1001), (1001, 1002), (1002, 1003), (1003, 1203)];
    for (k, &(from, to)) in windows.iter().enumerate() {
        let rows: Vec<Matrix> = all.iter().map(|m| m.slice_rows(from, to)).collect();
        let before = uploads(&gpu);
        let a = score_keyed(&gpu, &mut keyed, &rows, &v1);
        assert_eq!(
            uploads(&gpu) - before,
            if k == 0 { hosts as u64 } else { 0 },
            "run {k}: models go up once"
        );
        let b = score_keyed(&gpu, &mut plain, &rows, &vec![None; hosts]);
        assert_eq!(a, b, "run {k}: resident and uploaded models score alike");
        let c = score_keyed(&CpuBackend::default(), &mut cpu, &rows, &v1);
        for (h, (c, g)) in c.iter().zip(&a).enumerate() {
            compare_rows(h, c, g);
        }
    }
    assert_eq!(keyed, plain, "streams continue alike");
    // Host 3 retrained (another model, version 2) and host 5 changed without a new version
    // (the fingerprint notices): two uploads; the others stay resident.
    let rows: Vec<Matrix> = all.iter().map(|m| m.slice_rows(1203, 1204)).collect();
    let retrained = Detector::fit_with(
        &CpuBackend::default(),
        &all[3].slice_rows(100, 1100),
        config.clone(),
    )
    .unwrap();
    for m in [&mut keyed, &mut cpu] {
        let state = m[3].state.clone();
        m[3] = retrained.clone();
        m[3].state = state;
        m[5].weights[0] += 0.25;
    }
    let mut v = v1.clone();
    v[3] = Some(2);
    let before = uploads(&gpu);
    let a = score_keyed(&gpu, &mut keyed, &rows, &v);
    assert_eq!(uploads(&gpu) - before, 2);
    let c = score_keyed(&CpuBackend::default(), &mut cpu, &rows, &v);
    for (h, (c, g)) in c.iter().zip(&a).enumerate() {
        compare_rows(h, c, g);
    }
    // Many more hosts at once (1.3 MB of models, past the first 1 MiB buffer): the model
    // buffer grows and keeps the resident ones.
    let extra = 400;
    let more: Vec<Detector> = (0..extra).map(|i| models[i % hosts].clone()).collect();
    let mut big: Vec<Detector> = keyed.iter().cloned().chain(more).collect();
    let mut big_cpu: Vec<Detector> = cpu
        .iter()
        .cloned()
        .chain((0..extra).map(|i| models[i % hosts].clone()))
        .collect();
    let rows: Vec<Matrix> = (0..big.len())
        .map(|h| all[h % hosts].slice_rows(1204, 1206))
        .collect();
    let mut vb: Vec<Option<u64>> = v.clone();
    vb.extend(vec![Some(1); extra]);
    let before = gpu.stats();
    let a = score_keyed(&gpu, &mut big, &rows, &vb);
    let after = gpu.stats();
    assert_eq!(after.model_uploads - before.model_uploads, extra as u64);
    assert_eq!(after.model_hits - before.model_hits, hosts as u64);
    assert!(
        after.buffer_allocations > before.buffer_allocations,
        "the model buffer grew"
    );
    let c = score_keyed(&CpuBackend::default(), &mut big_cpu, &rows, &vb);
    for (h, (c, g)) in c.iter().zip(&a).enumerate() {
        compare_rows(h, c, g);
    }
}

/// Solve `(A + ridge·I) X = B` by Cholesky in f64 (the detector's ridge: not on the intercept,
/// which gets `1e-9 · n`).
fn ridge_solve(xtx: &[f64], xty: &[f64], f: usize, d: usize, ridge: f64, n: usize) -> Vec<f64> {
    let mut a = xtx.to_vec();
    let mut b = xty.to_vec();
    for i in 0..f - 1 {
        a[i * f + i] += ridge;
    }
    a[f * f - 1] += 1e-9 * n as f64;
    for j in 0..f {
        let mut s = a[j * f + j];
        for k in 0..j {
            s -= a[j * f + k] * a[j * f + k];
        }
        let l = s.sqrt();
        a[j * f + j] = l;
        for i in j + 1..f {
            let mut s = a[i * f + j];
            for k in 0..j {
                s -= a[i * f + k] * a[j * f + k];
            }
            a[i * f + j] = s / l;
        }
    }
    for c in 0..d {
        for i in 0..f {
            let mut s = b[i * d + c];
            for k in 0..i {
                s -= a[i * f + k] * b[k * d + c];
            }
            b[i * d + c] = s / a[i * f + i];
        }
        for i in (0..f).rev() {
            let mut s = b[i * d + c];
            for k in i + 1..f {
                s -= a[k * f + i] * b[k * d + c];
            }
            b[i * d + c] = s / a[i * f + i];
        }
    }
    b
}

#[test]
fn the_device_solve_equals_a_host_f64_solve_of_the_same_sums() {
    let gpu = gpu();
    let mut rng = Rng::new(43);
    let config = product();
    let mut worst = 0.0f64;
    for (n, d, lags) in [(2000, 16, 3), (900, 17, 3), (600, 5, 2), (1500, 38, 1)] {
        let rows = synthetic(n, d, 0, &mut rng);
        let job = FitJob {
            rows: &rows.data,
            n,
            d,
            lags,
            std_floor: config.std_floor,
            ridge: config.ridge,
            resid_floor: config.resid_floor,
            clip: config.clip,
            alpha: 2.0 / (config.ema_span + 1.0),
            quantile: config.pot_init_quantile,
            recent: Some((8, 180)),
        };
        let fit = gpu.fit_device(&[job]).unwrap().pop().unwrap().unwrap();
        // The series exactly as the device standardized it (its mean and scale equal the
        // CPU's), and the device's own cross products of it.
        let z: Vec<f32> = rows
            .data
            .chunks_exact(d)
            .flat_map(|r| {
                r.iter()
                    .zip(&fit.mean)
                    .zip(&fit.inv_std)
                    .map(|((v, m), s)| (v - m) * s)
                    .collect::<Vec<f32>>()
            })
            .collect();
        let mut zpad: Vec<f32> = (0..lags).flat_map(|_| z[..d].to_vec()).collect();
        zpad.extend_from_slice(&z);
        assert_eq!(&zpad[n * d..], &fit.history[..], "history = the last rows");
        let s = Series {
            zpad: &zpad,
            n,
            d,
            lags,
        };
        let c = gpu.cross_products_batch(&[s]).pop().unwrap().unwrap();
        let f = lags * d + 1;
        let want = ridge_solve(&c.xtx, &c.xty, f, d, config.ridge, n);
        let got: Vec<f32> = fit.weights.iter().chain(&fit.bias).copied().collect();
        for (w, g) in want.iter().zip(&got) {
            let e = (w - *g as f64).abs() / w.abs().max(1e-3);
            worst = worst.max(e);
            assert!(e <= 1e-6, "n {n} d {d}: host {w} device {g}");
        }
    }
    eprintln!("device solve vs host f64 solve of the same sums: {worst:.2e} relative");
}

#[test]
fn hosts_the_device_does_not_train_take_their_own_paths_in_a_gpu_batch() {
    let gpu = gpu();
    let mut rng = Rng::new(47);
    let all: Vec<Matrix> = (0..3)
        .map(|i| synthetic(1300, 6, i * 10, &mut rng))
        .collect();
    let train: Vec<Matrix> = all.iter().map(|m| m.slice_rows(0, 1200)).collect();
    let live: Vec<Matrix> = all.iter().map(|m| m.slice_rows(1200, 1300)).collect();
    let holdout = DetectorConfig {
        scale_holdout: 0.2,
        ..product()
    };
    let vae = DetectorConfig {
        model: rackwatch_anomaly::detector::Model::Vae,
        vae: rackwatch_anomaly::vae::VaeConfig {
            hidden: 16,
            latent: 2,
            batch: 64,
            max_epochs: 5,
            ..Default::default()
        },
        ..product()
    };
    let configs = [product(), holdout, vae];
    let inputs: Vec<TrainInput<'_>> = train
        .iter()
        .zip(&configs)
        .map(|(rows, config)| TrainInput { rows, config })
        .collect();
    let before = gpu.stats().submits;
    let mut g: Vec<Detector> = Detector::fit_batch(&gpu, &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut c: Vec<Detector> = Detector::fit_batch(&CpuBackend::default(), &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(gpu.stats().submits > before);
    assert!(g[2].vae.is_some() && g[0].vae.is_none());
    // The VAE host trained on the host the same way on both backends (same seed).
    assert_eq!(g[2].inv_resid_scale, c[2].inv_resid_scale);
    for (i, (g, c)) in g.iter().zip(&c).enumerate().take(2) {
        let (a, b) = (c.alert_threshold(), g.alert_threshold());
        assert!(rel(a, b) <= 1e-3, "host {i}: threshold cpu {a} gpu {b}");
    }
    let run = |models: &mut Vec<Detector>, b: &dyn Backend| {
        let mut jobs: Vec<ScoreInput<'_>> = models
            .iter_mut()
            .zip(&live)
            .map(|(detector, rows)| ScoreInput { detector, rows })
            .collect();
        let keys: Vec<ModelKey> = (0..3).map(|host| ModelKey { host, version: 1 }).collect();
        Detector::score_explained_batch_keyed(b, &mut jobs, &keys, 2)
    };
    let (sg, sc) = (run(&mut g, &gpu), run(&mut c, &CpuBackend::default()));
    for (i, (g, c)) in sg.iter().zip(&sc).enumerate().take(2) {
        compare_rows(i, c.as_ref().unwrap(), g.as_ref().unwrap());
    }
    assert_eq!(
        sg[2].as_ref().unwrap(),
        sc[2].as_ref().unwrap(),
        "the VAE host scores on the host"
    );
    // Keys for another number of hosts are refused.
    let mut jobs: Vec<ScoreInput<'_>> = g
        .iter_mut()
        .zip(&live)
        .map(|(detector, rows)| ScoreInput { detector, rows })
        .collect();
    let r = Detector::score_explained_batch_keyed(
        &gpu,
        &mut jobs,
        &[ModelKey {
            host: 0,
            version: 1,
        }],
        2,
    );
    assert!(r.iter().all(|r| r
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("1 model keys for 3 hosts")));
}
