//! A synthetic fleet of hosts of varied shape for the batched-API tests.
#![allow(dead_code)]

use crate::common::{synthetic, Rng};
use rackwatch_anomaly::{DetectorConfig, Matrix};

/// One host: training rows, three later windows to score (one of them a single row, as in
/// the once-a-minute job), and its detector configuration.
pub struct Host {
    pub train: Matrix,
    pub windows: Vec<Matrix>,
    pub config: DetectorConfig,
}

/// `(metrics, training rows, lags)` of the fleet: one window-width tile exactly (16 × 4),
/// just over a tile (17 × 4), several tiles (38 × 4 = 152, 64 × 2 = 128), tiny hosts,
/// short and long series, one to five lags.
pub const SHAPES: [(usize, usize, usize); 24] = [
    (16, 2500, 3),
    (16, 1440, 3),
    (17, 900, 3),
    (1, 400, 3),
    (2, 300, 1),
    (3, 1200, 5),
    (5, 800, 2),
    (8, 2000, 3),
    (10, 257, 3),
    (12, 3000, 3),
    (16, 4100, 3),
    (20, 700, 2),
    (24, 1500, 3),
    (31, 600, 1),
    (38, 1200, 3),
    (7, 5000, 4),
    (9, 128, 3),
    (14, 1024, 3),
    (16, 600, 3),
    (15, 2200, 3),
    (64, 900, 1),
    (40, 1000, 2),
    (4, 60, 3),
    (11, 1800, 3),
];

/// The fleet of [`SHAPES`]: half the hosts configured like the product (joint model alone,
/// clip 10), the others with the benchmark defaults; three hold out a calibration tail.
/// Hosts 0, 5 and 14 get a fault in their second window (one metric 6 σ off), host 2 a
/// level shift of all metrics.
pub fn fleet(seed: u64) -> Vec<Host> {
    let mut rng = Rng::new(seed);
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(d, n, lags))| {
            let all = synthetic(n + 260, d, i * 1000, &mut rng);
            let train = all.slice_rows(0, n);
            let mut windows = vec![
                all.slice_rows(n, n + 1),
                all.slice_rows(n + 1, n + 200),
                all.slice_rows(n + 200, n + 260),
            ];
            if matches!(i, 0 | 5 | 14) {
                for r in 100..140 {
                    let j = (i * 7) % d;
                    let v = windows[1].get(r, j);
                    windows[1].row_mut(r)[j] = v + 0.6;
                }
            }
            if i == 2 {
                for r in 0..60 {
                    windows[2].row_mut(r).iter_mut().for_each(|v| *v += 0.4);
                }
            }
            let mut config = DetectorConfig {
                lags,
                ..DetectorConfig::default()
            };
            if i % 2 == 0 {
                config.univariate_weight = 0.0;
                config.clip = 10.0;
            }
            if matches!(i, 7 | 12 | 15) {
                config.calib_frac = 0.2;
            }
            Host {
                train,
                windows,
                config,
            }
        })
        .collect()
}

/// The padded standardized series of `rows` (standardized by their own mean and spread),
/// as the detector builds it for training.
pub fn zpad(rows: &Matrix, lags: usize) -> Vec<f32> {
    let (n, d) = (rows.rows, rows.cols);
    let mut mean = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for r in 0..n {
        for (j, v) in rows.row(r).iter().enumerate() {
            mean[j] += *v as f64;
            sq[j] += (*v as f64) * (*v as f64);
        }
    }
    let (mean, inv): (Vec<f32>, Vec<f32>) = (0..d)
        .map(|j| {
            let m = mean[j] / n as f64;
            let var = (sq[j] / n as f64 - m * m).max(1e-12);
            (m as f32, 1.0 / (var.sqrt() as f32).max(0.03))
        })
        .unzip();
    let z: Vec<f32> = rows
        .data
        .chunks_exact(d)
        .flat_map(|r| {
            r.iter()
                .zip(&mean)
                .zip(&inv)
                .map(|((v, m), s)| (v - m) * s)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::with_capacity((n + lags) * d);
    for _ in 0..lags {
        out.extend_from_slice(&z[..d]);
    }
    out.extend_from_slice(&z);
    out
}
