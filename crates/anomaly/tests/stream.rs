mod common;
use common::Rng;
use rackwatch_anomaly::stream::{causal_cdf, probation_len, score_series, StreamConfig};
use rackwatch_anomaly::CpuBackend;

fn series(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| (10.0 + (i as f64 / 40.0).sin() + 0.1 * rng.normal()) as f32)
        .collect()
}

#[test]
fn stream_scores_are_causal_and_flag_a_spike() {
    let mut rng = Rng::new(4);
    let mut v = series(3000, &mut rng);
    v[2000] += 5.0;
    let cpu = CpuBackend::default();
    let cfg = StreamConfig::default();
    let (s, alert) = score_series(&cpu, &v, &cfg).unwrap();
    assert_eq!(s.len(), v.len());
    assert!(s.iter().all(|x| (0.0..=1.0).contains(x)));
    assert!(alert[2000] && s[2000] > 0.999, "{}", s[2000]);
    let k = probation_len(v.len());
    let false_alerts = alert[k..1990].iter().filter(|&&a| a).count();
    assert!(false_alerts <= 5, "{false_alerts}");
    let mut w = v.clone();
    for x in &mut w[2500..] {
        *x *= 3.0;
    }
    let (s2, _) = score_series(&cpu, &w, &cfg).unwrap();
    assert_eq!(s[..2500], s2[..2500]);
}

#[test]
fn causal_cdf_counts_earlier_values_only() {
    let p = causal_cdf(&[1.0, 2.0, 0.5, 2.0, 3.0]);
    assert_eq!(p, vec![0.0, 1.0, 0.0, (2.0 + 0.5) / 3.0, 1.0]);
}
