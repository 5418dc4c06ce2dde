mod common;
use common::{synthetic, Rng};
use rackwatch_anomaly::{CpuBackend, Detector, DetectorConfig, PotThreshold};

const D: usize = 6;

fn trained() -> Detector {
    let mut rng = Rng::new(7);
    let train = synthetic(3000, D, 0, &mut rng);
    Detector::fit(&train, DetectorConfig::default()).unwrap()
}

#[test]
fn ranks_injected_anomaly_above_normal_and_explains_it() {
    let det = trained();
    let mut rng = Rng::new(11);
    let mut test = synthetic(2000, D, 3000, &mut rng);
    // Metric 2 decouples from the others for 30 rows.
    for r in 1000..1030 {
        test.row_mut(r)[2] += 0.25;
    }
    let mut s = det.clone();
    let rows = s.score_explained(&CpuBackend::default(), &test, 3).unwrap();
    let mut normal: Vec<f32> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !(990..1080).contains(i))
        .map(|(_, r)| r.score)
        .collect();
    normal.sort_by(|a, b| a.total_cmp(b));
    let p999 = normal[(normal.len() as f64 * 0.999) as usize];
    let anomalous: Vec<f32> = rows[1003..1030].iter().map(|r| r.score).collect();
    let min_anom = anomalous.iter().cloned().fold(f32::MAX, f32::min);
    // Only the joint model sees a decoupling (the univariate model sees its two edges), so the
    // blended energy is about half of the joint model's: 4.2 vs a normal p99.9 of 2.1 here.
    assert!(
        min_anom > 1.8 * p999,
        "anomaly {min_anom} vs normal p99.9 {p999}"
    );
    // Explanations name metric 2 during the anomaly.
    for r in &rows[1003..1030] {
        assert_eq!(r.top[0].metric, 2, "{:?}", r.top);
        assert!(r.top[0].share > 0.5);
    }
    // The label-free threshold alerts during the anomaly and rarely elsewhere.
    let alerts_in = rows[1003..1030].iter().filter(|r| r.alert).count();
    let alerts_out = rows
        .iter()
        .enumerate()
        .filter(|(i, r)| !(990..1080).contains(i) && r.alert)
        .count();
    assert!(alerts_in >= 20, "alerts in anomaly: {alerts_in}");
    assert!(alerts_out <= 20, "false alerts: {alerts_out}");
}

#[test]
fn scores_are_causal() {
    let det = trained();
    let mut rng = Rng::new(3);
    let test = synthetic(500, D, 3000, &mut rng);
    let mut changed = test.clone();
    for r in 300..500 {
        for v in changed.row_mut(r) {
            *v = 5.0 - *v;
        }
    }
    let a = det.clone().score(&test).unwrap();
    let b = det.clone().score(&changed).unwrap();
    assert_eq!(a[..300], b[..300]);
    assert_ne!(a[300..], b[300..]);
    // Streaming in pieces gives the same scores as one batch.
    let mut s = det.clone();
    let mut pieces = s.score(&test.slice_rows(0, 123)).unwrap();
    pieces.extend(s.score(&test.slice_rows(123, 124)).unwrap());
    pieces.extend(s.score(&test.slice_rows(124, 500)).unwrap());
    for (x, y) in a.iter().zip(&pieces) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn pot_threshold_matches_known_tails() {
    let mut rng = Rng::new(5);
    // Exponential(1): P(X > x) = e^-x, so the 1e-3 level is ln 1000 = 6.91.
    let exp: Vec<f32> = (0..200_000).map(|_| -(rng.uniform().ln()) as f32).collect();
    let t = PotThreshold::fit(&exp, 0.98, 1e-3);
    assert!((t.threshold - 1000f64.ln()).abs() < 0.4, "{t:?}");
    assert!(t.xi.abs() < 0.1, "{t:?}");
    // Uniform(0,1): bounded tail (ξ ≈ -1 clamps to -0.9), level 0.999.
    let uni: Vec<f32> = (0..200_000).map(|_| rng.uniform() as f32).collect();
    let t = PotThreshold::fit(&uni, 0.98, 1e-3);
    assert!((t.threshold - 0.999).abs() < 0.01, "{t:?}");
    // Pareto with α = 2 (ξ = 0.5): P(X > x) = x^-2, level 1e-3 at sqrt(1000) = 31.6.
    let par: Vec<f32> = (0..200_000)
        .map(|_| rng.uniform().powf(-0.5) as f32)
        .collect();
    let t = PotThreshold::fit(&par, 0.98, 1e-3);
    assert!((t.threshold / 1000f64.sqrt() - 1.0).abs() < 0.2, "{t:?}");
}

#[test]
fn serde_round_trip_keeps_model_and_stream() {
    let mut det = trained();
    let mut rng = Rng::new(9);
    let test = synthetic(400, D, 3000, &mut rng);
    det.score(&test.slice_rows(0, 200)).unwrap();
    let json = serde_json::to_string(&det).unwrap();
    let mut back: Detector = serde_json::from_str(&json).unwrap();
    assert_eq!(back, det);
    let a = det.score(&test.slice_rows(200, 400)).unwrap();
    let b = back.score(&test.slice_rows(200, 400)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn rejects_wrong_width() {
    let mut det = trained();
    let mut rng = Rng::new(1);
    let err = det
        .score(&synthetic(10, D + 1, 0, &mut rng))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&(D + 1).to_string()) && err.contains(&D.to_string()),
        "{err}"
    );
}

#[test]
fn level_is_the_alert_boundary_and_never_below_the_pot_threshold() {
    let det = trained();
    let mut rng = Rng::new(5);
    let mut test = synthetic(1500, D, 3000, &mut rng);
    for r in 700..760 {
        test.row_mut(r)[4] += 0.4;
    }
    let rows = det
        .clone()
        .score_explained(&CpuBackend::default(), &test, 2)
        .unwrap();
    let pot = det.alert_threshold();
    assert!(rows.iter().all(|r| r.level >= pot));
    assert!(rows.iter().all(|r| r.alert == (r.score > r.level)));
    // Same decisions as the plain alert API.
    let (_, alerts) = det
        .clone()
        .score_alerts(&CpuBackend::default(), &test)
        .unwrap();
    assert_eq!(alerts, rows.iter().map(|r| r.alert).collect::<Vec<_>>());
    assert!(rows[710..760].iter().filter(|r| r.alert).count() >= 40);
}

/// Runs of consecutive `true` in `a`.
fn runs(a: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &x) in a.iter().chain(std::iter::once(&false)).enumerate() {
        match (x, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[test]
fn drifting_normal_series_does_not_alert_all_along() {
    // From row 300 on, every metric gets extra independent noise for good (a noisier but normal
    // regime): the static POT level alone would alert on most of the rest, the drift guard
    // (score must also exceed 5 x the median of the last 1440 scores) stops that within about
    // half its window.
    let det = trained();
    let mut rng = Rng::new(21);
    let mut test = synthetic(4000, D, 3000, &mut rng);
    for r in 300..4000 {
        for j in 0..D {
            test.row_mut(r)[j] += (0.05 * rng.normal()) as f32;
        }
    }
    let rate = |a: &[bool]| a.iter().filter(|&&x| x).count() as f64 / a.len() as f64;
    let cpu = CpuBackend::default();
    let (_, guarded) = det.clone().score_alerts(&cpu, &test).unwrap();
    let mut off = det.clone();
    off.config.adapt_factor = 0.0;
    let (_, static_only) = off.score_alerts(&cpu, &test).unwrap();
    assert!(
        rate(&static_only[300..]) > 0.5,
        "static level alone: {}",
        rate(&static_only[300..])
    );
    assert!(
        rate(&guarded[300..]) < 0.3,
        "guarded: {}",
        rate(&guarded[300..])
    );
    assert!(
        rate(&guarded[1500..]) < 0.02,
        "guarded, after adapting: {}",
        rate(&guarded[1500..])
    );
}

#[test]
fn sustained_fault_shorter_than_half_the_guard_window_is_one_alert() {
    // A 200-row fault (well under half of the guard's 1440-row window) is alerted as one
    // contiguous event from shortly after its start to its end: the recent median is not yet
    // contaminated, so the guard does not cut it into pieces.
    let det = trained();
    let mut rng = Rng::new(23);
    let mut test = synthetic(1500, D, 3000, &mut rng);
    for r in 800..1000 {
        test.row_mut(r)[1] += 0.3;
    }
    let (_, alerts) = det
        .clone()
        .score_alerts(&CpuBackend::default(), &test)
        .unwrap();
    let inside: Vec<(usize, usize)> = runs(&alerts)
        .into_iter()
        .filter(|&(s, e)| s < 1000 && e > 800)
        .collect();
    assert_eq!(inside.len(), 1, "alert runs over the fault: {inside:?}");
    let (s, e) = inside[0];
    assert!(s <= 805 && e >= 1000, "event alerted over {s}..{e}");
}

#[test]
fn detector_json_without_drift_guard_fields_still_loads() {
    // Models stored before the drift guard existed have neither its config fields nor its
    // ring of recent scores; they must load (serde defaults) and score.
    let det = trained();
    let mut v: serde_json::Value = serde_json::to_value(&det).unwrap();
    let cfg = v["config"].as_object_mut().unwrap();
    cfg.remove("adapt_factor").unwrap();
    cfg.remove("adapt_window").unwrap();
    let st = v["state"].as_object_mut().unwrap();
    for k in ["recent", "recent_sorted", "recent_count"] {
        st.remove(k).unwrap();
    }
    let mut back: Detector = serde_json::from_value(v).unwrap();
    assert_eq!(back.config, DetectorConfig::default());
    assert!(back.state.recent.is_empty() && back.state.recent_count == 0);
    let mut rng = Rng::new(2);
    let test = synthetic(100, D, 3000, &mut rng);
    let s = back.score(&test).unwrap();
    assert_eq!(s.len(), 100);
    assert!(s.iter().all(|x| x.is_finite()));
}

/// Solve a small dense system `A x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap();
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            let pivot = a[c].clone();
            for (x, p) in a[r].iter_mut().zip(&pivot).skip(c) {
                *x -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    x
}

#[test]
fn univariate_models_are_each_metrics_own_ridge_fit() {
    let mut rng = Rng::new(7);
    let train = synthetic(3000, D, 0, &mut rng);
    let det = Detector::fit(&train, DetectorConfig::default()).unwrap();
    let (lags, ridge) = (det.config.lags, det.config.ridge);
    assert_eq!(det.uni_weights.len(), lags * D);
    for j in 0..D {
        // Standardized series of metric j, the first value repeated `lags` times in front.
        let z: Vec<f64> = (0..train.rows)
            .map(|r| ((train.get(r, j) - det.mean[j]) * det.inv_std[j]) as f64)
            .collect();
        let mut zp = vec![z[0]; lags];
        zp.extend_from_slice(&z);
        let g = lags + 1;
        let (mut a, mut b) = (vec![vec![0.0; g]; g], vec![0.0; g]);
        for t in 0..train.rows {
            let mut x: Vec<f64> = zp[t..t + lags].to_vec();
            x.push(1.0);
            for r in 0..g {
                for c in 0..g {
                    a[r][c] += x[r] * x[c];
                }
                b[r] += x[r] * zp[t + lags];
            }
        }
        for (k, row) in a.iter_mut().enumerate().take(lags) {
            row[k] += ridge;
        }
        let w = solve(a, b);
        for (k, want) in w.iter().enumerate().take(lags) {
            let got = det.uni_weights[k * D + j] as f64;
            assert!(
                (got - want).abs() < 1e-3,
                "metric {j} lag {k}: {got} vs {want}"
            );
        }
        assert!((det.uni_bias[j] as f64 - w[lags]).abs() < 1e-3);
    }
    // The series are smooth, so each metric's own past predicts it: the lag weights are far
    // from zero and the residual scale is finite.
    assert!(det.uni_weights.iter().map(|w| w.abs()).sum::<f32>() > 0.5 * D as f32);
    assert!(det.uni_inv_scale.iter().all(|s| s.is_finite() && *s > 0.0));
}

#[test]
fn models_stored_without_univariate_fields_score_with_the_joint_model_alone() {
    let det = trained();
    let mut rng = Rng::new(7);
    let train = synthetic(3000, D, 0, &mut rng);
    let joint_cfg = DetectorConfig {
        univariate_weight: 0.0,
        ..DetectorConfig::default()
    };
    let mut joint = Detector::fit(&train, joint_cfg).unwrap();
    assert!(joint.uni_weights.is_empty());
    let mut v: serde_json::Value = serde_json::to_value(&det).unwrap();
    let obj = v.as_object_mut().unwrap();
    for k in ["uni_weights", "uni_bias", "uni_inv_scale"] {
        obj.remove(k).unwrap();
    }
    let mut old: Detector = serde_json::from_value(v).unwrap();
    let mut blended = det.clone();
    let mut rng = Rng::new(5);
    let mut test = synthetic(300, D, 3000, &mut rng);
    for r in 100..130 {
        test.row_mut(r)[4] += 0.3;
    }
    for d in [&mut old, &mut joint, &mut blended] {
        d.reset_stream();
    }
    let (a, b, c) = (
        old.score(&test).unwrap(),
        joint.score(&test).unwrap(),
        blended.score(&test).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
    // The current model does blend: its scores differ from the joint model's.
    assert!(a.iter().zip(&c).any(|(x, y)| (x - y).abs() > 0.1 * y.abs()));
}
