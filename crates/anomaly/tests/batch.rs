//! The batched API on the CPU backend: equal, bit for bit, to training and scoring host by
//! host; one bad host fails alone; backend selection without a GPU.
mod common;
mod fleet;

use rackwatch_anomaly::backend::{ModelKey, ResidualJob, Series};
use rackwatch_anomaly::{
    Backend, BackendChoice, BackendError, BackendKind, CpuBackend, Detector, DetectorConfig,
    Matrix, ScoreInput, SelectOptions, SelectedBackend, TrainInput,
};

#[test]
fn batched_training_and_scoring_equal_the_per_host_path_bit_for_bit() {
    let fleet = fleet::fleet(7);
    let cpu = CpuBackend { threads: 2 };
    let one = CpuBackend::single_threaded();
    let inputs: Vec<TrainInput<'_>> = fleet
        .iter()
        .map(|h| TrainInput {
            rows: &h.train,
            config: &h.config,
        })
        .collect();
    let batch = Detector::fit_batch(&cpu, &inputs);
    assert_eq!(batch.len(), fleet.len());
    let mut single: Vec<Detector> = fleet
        .iter()
        .map(|h| Detector::fit_with(&one, &h.train, h.config.clone()).unwrap())
        .collect();
    let mut batch: Vec<Detector> = batch.into_iter().map(Result::unwrap).collect();
    for (i, (b, s)) in batch.iter().zip(&single).enumerate() {
        assert_eq!(b, s, "host {i}: batched model differs from per-host model");
    }
    let mut alerts = 0;
    for w in 0..3 {
        let mut jobs: Vec<ScoreInput<'_>> = batch
            .iter_mut()
            .zip(&fleet)
            .map(|(d, h)| ScoreInput {
                detector: d,
                rows: &h.windows[w],
            })
            .collect();
        // Keyed on odd windows: the CPU keeps no device cache, so keys change nothing.
        let keys: Vec<ModelKey> = (0..jobs.len() as u64)
            .map(|host| ModelKey { host, version: 1 })
            .collect();
        let keys = if w % 2 == 1 { &keys[..] } else { &[][..] };
        let got = Detector::score_explained_batch_keyed(&cpu, &mut jobs, keys, 3);
        for (i, (g, (det, h))) in got
            .into_iter()
            .zip(single.iter_mut().zip(&fleet))
            .enumerate()
        {
            let want = det.score_explained(&one, &h.windows[w], 3).unwrap();
            let g = g.unwrap();
            assert_eq!(g, want, "host {i}, window {w}");
            alerts += g.iter().filter(|r| r.alert).count();
        }
    }
    // Streams continue identically (state included).
    assert_eq!(batch, single);
    assert!(alerts > 20, "the injected faults alert: {alerts} alerts");
}

#[test]
fn a_bad_host_fails_alone_with_a_clear_error() {
    let fleet = fleet::fleet(9);
    let cpu = CpuBackend::default();
    let short = Matrix::new(3, 4, vec![0.5; 12]);
    let config = DetectorConfig::default();
    // 700 metrics × 3 lags + 1 = 2,101 design features: more than any backend trains.
    let wide = Matrix::new(8, 700, (0..5600).map(|i| (i % 13) as f32).collect());
    let mut inputs: Vec<TrainInput<'_>> = fleet
        .iter()
        .take(4)
        .map(|h| TrainInput {
            rows: &h.train,
            config: &h.config,
        })
        .collect();
    inputs.insert(
        1,
        TrainInput {
            rows: &short,
            config: &config,
        },
    );
    inputs.push(TrainInput {
        rows: &wide,
        config: &config,
    });
    let out = Detector::fit_batch(&cpu, &inputs);
    assert_eq!(out.len(), 6);
    let e = out[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("need more than 4 training rows"), "{e}");
    let e = out[5].as_ref().unwrap_err();
    assert_eq!(
        e.downcast_ref::<BackendError>(),
        Some(&BackendError::TooManyFeatures {
            features: 2101,
            max: 2048
        }),
        "{e:#}"
    );
    assert!(e.to_string().contains("2101 design features"), "{e}");
    for i in [0, 2, 3, 4] {
        assert!(out[i].is_ok(), "host {i}: {:?}", out[i].as_ref().err());
    }
    // Scoring: a window with the wrong metric count fails that host and leaves its stream.
    let mut models: Vec<Detector> = out.into_iter().filter_map(Result::ok).collect();
    let before = models[1].clone();
    let wrong = Matrix::new(2, models[1].dim + 1, vec![0.0; 2 * (models[1].dim + 1)]);
    let mut jobs: Vec<ScoreInput<'_>> = models
        .iter_mut()
        .zip([0usize, 1, 2, 3])
        .map(|(d, i)| ScoreInput {
            detector: d,
            rows: if i == 1 { &wrong } else { &fleet[i].windows[1] },
        })
        .collect();
    let got = Detector::score_explained_batch(&cpu, &mut jobs, 2);
    assert!(got[1].as_ref().unwrap_err().to_string().contains("metrics"));
    assert_eq!(models[1], before);
    assert_eq!(got[0].as_ref().unwrap().len(), fleet[0].windows[1].rows);
    // The kernels' own checks: a short series and mismatched weights are typed errors.
    let z = vec![0.0f32; 10];
    let s = Series {
        zpad: &z,
        n: 5,
        d: 2,
        lags: 3,
    };
    let w = vec![0.0f32; 3];
    let r = cpu.abs_residuals_batch(&[ResidualJob {
        series: s,
        weights: rackwatch_anomaly::backend::LagWeights {
            weights: &w,
            bias: &w,
        },
    }]);
    assert!(matches!(r[0], Err(BackendError::Invalid(_))), "{r:?}");
    assert!(matches!(
        cpu.cross_products_batch(&[s])[0],
        Err(BackendError::Invalid(_))
    ));
}

#[test]
fn backend_choice_parses_and_cpu_is_always_available() {
    assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
    assert_eq!(" GPU ".parse::<BackendChoice>(), Ok(BackendChoice::Gpu));
    assert_eq!("cpu".parse::<BackendChoice>(), Ok(BackendChoice::Cpu));
    assert!("cuda"
        .parse::<BackendChoice>()
        .unwrap_err()
        .contains("\"gpu\""));
    assert_eq!(BackendChoice::default(), BackendChoice::Auto);
    let c: BackendChoice = serde_json::from_str("\"gpu\"").unwrap();
    assert_eq!(c, BackendChoice::Gpu);
    let cpu = SelectedBackend::select(
        BackendChoice::Cpu,
        &SelectOptions {
            threads: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(cpu.kind(), BackendKind::Cpu);
    assert_eq!(cpu.fallback_reason(), None);
    assert_eq!(cpu.info().to_string(), "cpu (3 threads)");
    assert_eq!(cpu.threads(), 3);
}

#[cfg(not(feature = "gpu"))]
#[test]
fn without_the_gpu_feature_auto_falls_back_and_gpu_is_refused() {
    let auto = SelectedBackend::select(BackendChoice::Auto, &SelectOptions::default()).unwrap();
    assert_eq!(auto.kind(), BackendKind::Cpu);
    let why = auto.fallback_reason().unwrap();
    assert!(why.contains("no GPU support"), "{why}");
    let e = SelectedBackend::select(BackendChoice::Gpu, &SelectOptions::default())
        .err()
        .unwrap();
    assert_eq!(e, BackendError::GpuNotBuilt);
}
