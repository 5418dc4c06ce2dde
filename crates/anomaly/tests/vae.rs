//! The VAE as the detector's joint model, and out-of-sample residual scales, on small synthetic
//! data (fast in the dev profile).
mod common;
use common::{synthetic, Rng};
use rackwatch_anomaly::vae::VaeConfig;
use rackwatch_anomaly::{CpuBackend, Detector, DetectorConfig, Matrix, Model};

const D: usize = 6;

fn vae_config() -> DetectorConfig {
    DetectorConfig {
        model: Model::Vae,
        univariate_weight: 0.0,
        vae: VaeConfig {
            hidden: 32,
            latent: 3,
            batch: 64,
            max_epochs: 40,
            ..VaeConfig::default()
        },
        ..DetectorConfig::default()
    }
}

fn trained() -> Detector {
    let mut rng = Rng::new(7);
    let train = synthetic(2000, D, 0, &mut rng);
    Detector::fit(&train, vae_config()).unwrap()
}

#[test]
fn vae_detector_ranks_a_level_change_above_normal_and_explains_it() {
    let det = trained();
    assert!(det.vae.is_some());
    assert!(det.weights.iter().all(|&w| w == 0.0));
    let mut rng = Rng::new(11);
    let mut test = synthetic(1500, D, 2000, &mut rng);
    // Metric 2 moves away from its usual relation to the others for 30 rows.
    for r in 800..830 {
        test.row_mut(r)[2] += 1.0;
    }
    let rows = det
        .clone()
        .score_explained(&CpuBackend::default(), &test, 3)
        .unwrap();
    let mut normal: Vec<f32> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !(790..880).contains(i))
        .map(|(_, r)| r.score)
        .collect();
    normal.sort_by(|a, b| a.total_cmp(b));
    let p999 = normal[(normal.len() as f64 * 0.999) as usize];
    let min_anom = rows[805..830]
        .iter()
        .map(|r| r.score)
        .fold(f32::MAX, f32::min);
    // 124 vs 13.9 here: the VAE's normal scores are heavier-tailed than the linear predictor's.
    assert!(
        min_anom > 4.0 * p999,
        "anomaly {min_anom} vs normal p99.9 {p999}"
    );
    for r in &rows[805..830] {
        assert_eq!(r.top[0].metric, 2, "{:?}", r.top);
    }
    let alerts_in = rows[805..830].iter().filter(|r| r.alert).count();
    assert!(alerts_in >= 20, "alerts in anomaly: {alerts_in}");
}

#[test]
fn vae_detector_is_causal_streams_in_pieces_and_round_trips() {
    let det = trained();
    let mut rng = Rng::new(3);
    let test = synthetic(400, D, 2000, &mut rng);
    let mut changed = test.clone();
    for r in 250..400 {
        for v in changed.row_mut(r) {
            *v = 5.0 - *v;
        }
    }
    let a = det.clone().score(&test).unwrap();
    let b = det.clone().score(&changed).unwrap();
    assert_eq!(a[..250], b[..250]);
    assert_ne!(a[250..], b[250..]);
    let mut s = det.clone();
    let mut pieces = s.score(&test.slice_rows(0, 97)).unwrap();
    pieces.extend(s.score(&test.slice_rows(97, 98)).unwrap());
    pieces.extend(s.score(&test.slice_rows(98, 400)).unwrap());
    assert_eq!(a, pieces);
    let json = serde_json::to_string(&det).unwrap();
    let mut back: Detector = serde_json::from_str(&json).unwrap();
    assert_eq!(back, det);
    assert_eq!(back.score(&test).unwrap(), a);
    // A second fit with the same seed is the same network.
    let mut rng = Rng::new(7);
    let again = Detector::fit(&synthetic(2000, D, 0, &mut rng), vae_config()).unwrap();
    assert_eq!(again.vae, det.vae);
}

#[test]
fn linear_models_serialize_without_a_vae_field() {
    let mut rng = Rng::new(5);
    let det = Detector::fit(&synthetic(600, 3, 0, &mut rng), DetectorConfig::default()).unwrap();
    let json = serde_json::to_string(&det).unwrap();
    assert!(!json.contains("\"vae\":{\"config\""), "{json}");
    let back: Detector = serde_json::from_str(&json).unwrap();
    assert_eq!(back.vae, None);
}

/// Metric 0 is a smooth, predictable wave for the first 80 % of the training rows and noisy in
/// the last 20 %: its in-sample residual scale is dominated by the calm part, the out-of-sample
/// one (`scale_holdout`) by the noisy tail.
#[test]
fn holdout_scales_see_what_the_in_sample_fit_hides() {
    let mut rng = Rng::new(17);
    let (n, d) = (3000, 2);
    let mut data = Vec::with_capacity(n * d);
    for t in 0..n {
        let wave = (t as f64 / 30.0).sin();
        let noise = if t >= 2400 { 0.5 } else { 0.01 };
        data.push((wave + noise * rng.normal()) as f32);
        data.push((0.5 * wave + 0.05 * rng.normal()) as f32);
    }
    let train = Matrix::new(n, d, data);
    let cfg = DetectorConfig {
        resid_floor: 1e-3,
        univariate_weight: 0.5,
        ..DetectorConfig::default()
    };
    let plain = Detector::fit(&train, cfg.clone()).unwrap();
    let held = Detector::fit(
        &train,
        DetectorConfig {
            scale_holdout: 0.2,
            ..cfg
        },
    )
    .unwrap();
    // Metric 0: the noisy tail alone has a larger RMS residual than all rows together.
    let ratio = plain.inv_resid_scale[0] / held.inv_resid_scale[0];
    assert!(ratio > 1.5, "scale ratio {ratio}");
    let uni_ratio = plain.uni_inv_scale[0] / held.uni_inv_scale[0];
    assert!(uni_ratio > 1.5, "univariate scale ratio {uni_ratio}");
    // Metric 1 behaves the same throughout: its own (univariate) model gets about the same
    // scale either way. (The joint model's residual of metric 1 grows in the tail too: it
    // predicts metric 1 partly from metric 0's noisy lags.)
    let r1 = plain.uni_inv_scale[1] / held.uni_inv_scale[1];
    assert!((0.7..1.4).contains(&r1), "metric 1 scale ratio {r1}");
}

/// Hosts with a VAE (no batched kernel) train and score one by one inside the batched API,
/// among linear hosts that use the batch; every result equals the per-host path.
#[test]
fn batched_api_handles_vae_hosts_among_linear_ones() {
    use rackwatch_anomaly::{ScoreInput, TrainInput};
    let mut rng = Rng::new(23);
    let trains: Vec<Matrix> = (0..3).map(|i| synthetic(900, 4, i * 7, &mut rng)).collect();
    let tests: Vec<Matrix> = (0..3)
        .map(|i| synthetic(120, 4, 900 + i * 7, &mut rng))
        .collect();
    let linear = DetectorConfig::default();
    let vae = vae_config();
    let configs = [&linear, &vae, &linear];
    let inputs: Vec<TrainInput<'_>> = trains
        .iter()
        .zip(configs)
        .map(|(rows, config)| TrainInput { rows, config })
        .collect();
    let cpu = CpuBackend::default();
    let mut batch: Vec<Detector> = Detector::fit_batch(&cpu, &inputs)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut single: Vec<Detector> = trains
        .iter()
        .zip(configs)
        .map(|(t, c)| Detector::fit_with(&cpu, t, c.clone()).unwrap())
        .collect();
    assert_eq!(batch, single);
    assert!(batch[1].vae.is_some() && batch[0].vae.is_none());
    let mut jobs: Vec<ScoreInput<'_>> = batch
        .iter_mut()
        .zip(&tests)
        .map(|(detector, rows)| ScoreInput { detector, rows })
        .collect();
    let got = Detector::score_explained_batch(&cpu, &mut jobs, 2);
    for ((g, det), rows) in got.into_iter().zip(&mut single).zip(&tests) {
        assert_eq!(g.unwrap(), det.score_explained(&cpu, rows, 2).unwrap());
    }
    assert_eq!(batch, single);
}
