//! Behaviour of the forecasting engine on synthetic series with known answers.

use chrono::{TimeZone, Utc};
use rackwatch_forecast::{eval, forecast, Forecast};
use std::f64::consts::TAU;

/// A scratch directory removed on drop (no extra dev-dependency: keeps the dependency
/// features of test builds identical to the library build).
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("rackwatch-forecast-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Small deterministic normal generator (LCG + Box-Muller).
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (TAU * v).cos()
    }
}

fn daily(t: usize) -> f64 {
    50.0 + 20.0 * (TAU * t as f64 / 24.0).sin() + 5.0 * (2.0 * TAU * t as f64 / 24.0).cos()
}

fn check_shape(f: &Forecast, h: usize) {
    for v in [&f.point, &f.lo80, &f.hi80, &f.lo95, &f.hi95] {
        assert_eq!(v.len(), h);
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0), "{f:?}");
    }
    for i in 0..h {
        assert!(
            f.lo95[i] <= f.lo80[i]
                && f.lo80[i] <= f.point[i]
                && f.point[i] <= f.hi80[i]
                && f.hi80[i] <= f.hi95[i],
            "hour {i}: {} {} {} {} {} ({})",
            f.lo95[i],
            f.lo80[i],
            f.point[i],
            f.hi80[i],
            f.hi95[i],
            f.model
        );
    }
}

/// A new install's disk (five days of history) filling 3 GB a day with a daily cycle on
/// top is forecast to keep filling, not flat.
#[test]
fn a_young_filling_disk_keeps_filling() {
    let n = 5 * 24;
    let y: Vec<Option<f64>> = (0..n)
        .map(|t| {
            let daily = 2.0e8 * (std::f64::consts::TAU * t as f64 / 24.0).sin();
            Some(5.0e11 + 3.0e9 * t as f64 / 24.0 + daily)
        })
        .collect();
    let f = forecast(&y, None, 168);
    check_shape(&f, 168);
    let grown = f.point[167] - y[n - 1].unwrap();
    assert!(
        (10.5e9..=42.0e9).contains(&grown),
        "grew {grown:.3e} in a week (21 GB expected), model {}",
        f.model
    );
}

/// A disk that fills in steps (a flat day, then a day's logs written in a burst) keeps
/// its point inside its own bands, whichever model wins the backtest.
#[test]
fn a_filling_disk_keeps_its_point_inside_its_bands() {
    let n = 28 * 24;
    let y: Vec<Option<f64>> = (0..n)
        .map(|t| Some(1.0e12 + 2.0e9 * (t / 24) as f64 + if t % 24 >= 22 { 1.0e9 } else { 0.0 }))
        .collect();
    let f = forecast(&y, None, 168);
    check_shape(&f, 168);
    // And it keeps filling: 2 GB a day, 14 GB over the week (half of it at least, and not
    // twice it), never going down from one day to the next.
    let last_day = 1.0e12 + 2.0e9 * 27.0;
    let grown = f.point[167] - last_day;
    assert!(
        (7.0e9..=28.0e9).contains(&grown),
        "grew {grown:.3e} in a week, model {}",
        f.model
    );
    for d in 1..7 {
        assert!(
            f.point[d * 24 + 12] >= f.point[(d - 1) * 24 + 12] - 1.0e8,
            "day {d} below day {}: model {}",
            d - 1,
            f.model
        );
    }
}

#[test]
fn pure_daily_sinusoid_is_forecast_almost_exactly() {
    let n = 600;
    let y: Vec<Option<f64>> = (0..n).map(|t| Some(daily(t))).collect();
    let f = forecast(&y, None, 48);
    check_shape(&f, 48);
    let max_err = (0..48)
        .map(|h| (f.point[h] - daily(n + h)).abs())
        .fold(0.0, f64::max);
    assert!(
        max_err < 0.05,
        "max abs error {max_err} (values ~50±25), model {}",
        f.model
    );
    // "same hour yesterday" is exact too, so MASE is undefined
    assert_eq!(f.backtest_mase, None);
}

#[test]
fn intervals_cover_at_the_claimed_rate_on_noisy_data() {
    let mut rng = Rng(7);
    let n = 1200;
    let y: Vec<f64> = (0..n + 24 * 12)
        .map(|t| daily(t) + 4.0 * rng.normal())
        .collect();
    let (mut in80, mut in95, mut total) = (0, 0, 0);
    let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    for o in 0..12 {
        let c = n + 24 * o;
        let hist: Vec<Option<f64>> = y[..c].iter().map(|&v| Some(v)).collect();
        let f = forecast(&hist, Some(start), 24);
        check_shape(&f, 24);
        // the noise is the only error left; seasonal naive doubles its variance, so a good
        // model scores about 1/sqrt(2) = 0.71 on the backtest
        let m = f.backtest_mase.unwrap();
        assert!(m < 0.85, "backtest MASE {m}, model {}", f.model);
        for h in 0..24 {
            let a = y[c + h];
            in80 += (f.lo80[h] <= a && a <= f.hi80[h]) as usize;
            in95 += (f.lo95[h] <= a && a <= f.hi95[h]) as usize;
            total += 1;
        }
    }
    let (c80, c95) = (in80 as f64 / total as f64, in95 as f64 / total as f64);
    assert!((0.72..=0.88).contains(&c80), "cov80 {c80}");
    assert!((0.90..=0.99).contains(&c95), "cov95 {c95}");
}

#[test]
fn gaps_do_not_break_the_forecast() {
    let n = 700;
    let y: Vec<Option<f64>> = (0..n)
        .map(|t| {
            if (100..130).contains(&t) || t % 37 == 0 {
                None
            } else {
                Some(daily(t))
            }
        })
        .collect();
    let f = forecast(&y, None, 168);
    check_shape(&f, 168);
    let mae = (0..168)
        .map(|h| (f.point[h] - daily(n + h)).abs())
        .sum::<f64>()
        / 168.0;
    assert!(mae < 0.5, "mae {mae}, model {}", f.model);
}

#[test]
fn all_zero_short_and_empty_series_fall_back_safely() {
    let zeros = vec![Some(0.0); 500];
    let f = forecast(&zeros, None, 24);
    check_shape(&f, 24);
    assert_eq!(f.model, "zero");
    assert!(f.point.iter().chain(&f.hi95).all(|&v| v == 0.0));

    let short: Vec<Option<f64>> = (0..10).map(|t| Some(t as f64)).collect();
    let f = forecast(&short, None, 24);
    check_shape(&f, 24);
    assert_eq!(f.model, "short-history");
    assert!(
        (f.point[0] - 4.5).abs() < 1e-9,
        "mean of 0..9, got {}",
        f.point[0]
    );

    let f = forecast(&[], None, 5);
    check_shape(&f, 5);
    assert_eq!(f.model, "empty");
    let f = forecast(&[None, None, Some(f64::NAN)], None, 3);
    assert_eq!(f.model, "empty");
}

#[test]
fn constant_series_and_long_horizons() {
    let flat = vec![Some(42.0); 600];
    let f = forecast(&flat, None, 24);
    check_shape(&f, 24);
    for i in 0..24 {
        assert!((f.point[i] - 42.0).abs() < 1e-6, "{}", f.point[i]);
        assert!(
            f.lo95[i] > 41.9 && f.hi95[i] < 42.1,
            "{} {}",
            f.lo95[i],
            f.hi95[i]
        );
    }
    // two weeks ahead: beyond the weekly lag, still the daily shape
    let y: Vec<Option<f64>> = (0..900).map(|t| Some(daily(t))).collect();
    let f = forecast(&y, None, 336);
    check_shape(&f, 336);
    let mae = (0..336)
        .map(|h| (f.point[h] - daily(900 + h)).abs())
        .sum::<f64>()
        / 336.0;
    assert!(mae < 0.1, "mae {mae}, model {}", f.model);
}

#[test]
fn spiky_mostly_idle_series_stays_non_negative() {
    let mut rng = Rng(3);
    let y: Vec<Option<f64>> = (0..900)
        .map(|_| {
            let u = rng.uniform();
            Some(if u < 0.03 {
                1e6 * rng.uniform()
            } else {
                0.1 * rng.uniform()
            })
        })
        .collect();
    let f = forecast(&y, None, 168);
    check_shape(&f, 168);
    // an idle series is forecast idle, not at the mean pulled up by the bursts (~15 000)
    let med = {
        let mut p = f.point.clone();
        p.sort_by(f64::total_cmp);
        p[84]
    };
    assert!(med < 1.0, "median point {med}, model {}", f.model);
}

#[test]
fn level_shift_is_followed() {
    let y: Vec<Option<f64>> = (0..800)
        .map(|t| Some(if t < 740 { 10.0 } else { 100.0 } + (TAU * t as f64 / 24.0).sin()))
        .collect();
    let f = forecast(&y, None, 24);
    check_shape(&f, 24);
    let mean = f.point.iter().sum::<f64>() / 24.0;
    assert!(
        (mean - 100.0).abs() < 15.0,
        "mean forecast {mean}, model {}",
        f.model
    );
}

#[test]
fn eval_writes_the_scorer_format() {
    let dir = TempDir::new("eval-format");
    std::fs::create_dir(dir.path().join("hourly")).unwrap();
    let mut csv = String::from("timestamp,value\n");
    let start = Utc.with_ymd_and_hms(2013, 7, 1, 0, 0, 0).unwrap();
    for t in 0..400 {
        let ts = start + chrono::Duration::hours(t);
        csv.push_str(&format!(
            "{},{}\n",
            ts.format("%Y-%m-%dT%H:%M:%SZ"),
            daily(t as usize)
        ));
    }
    std::fs::write(dir.path().join("hourly/s1.csv"), csv).unwrap();
    let mut rel = String::from("timestamp,value\n");
    for t in 0..200 {
        rel.push_str(&format!(
            "1970-01-{:02}T{:02}:00:00,{}\n",
            1 + t / 24,
            t % 24,
            t % 5
        ));
    }
    std::fs::write(dir.path().join("hourly/az.csv"), rel).unwrap();
    let tasks = dir.path().join("tasks.csv");
    std::fs::write(
        &tasks,
        "series_id,track,cutoff,H\n\
         s1,h24,2013-07-15T21:00:00Z,24\n\
         s1,h168,2013-07-15T21:00:00Z,168\n\
         az,h24,1970-01-07T18:00:00,24\n",
    )
    .unwrap();
    let out = dir.path().join("preds.csv");
    let s = eval(dir.path(), &tasks, &out).unwrap();
    assert_eq!(
        (s.fits, s.tasks, s.rows, s.series),
        (2, 3, 24 + 168 + 24, 2)
    );
    assert!(s.total_fit_ms > 0.0);
    assert!(s.to_string().contains("2 fits"));

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains('\r'));
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "method,series_id,track,cutoff,h,yhat,lo80,hi80,lo95,hi95"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 216);
    assert_eq!(
        &rows[0][..5],
        ["rackwatch", "s1", "h24", "2013-07-15T21:00:00Z", "1"]
    );
    assert_eq!(
        &rows[24][..5],
        ["rackwatch", "s1", "h168", "2013-07-15T21:00:00Z", "1"]
    );
    assert_eq!(
        &rows[215][..5],
        ["rackwatch", "az", "h24", "1970-01-07T18:00:00", "24"]
    );
    for r in &rows {
        assert_eq!(r.len(), 10);
        let v: Vec<f64> = r[5..].iter().map(|x| x.parse().unwrap()).collect();
        assert!(v.iter().all(|x| x.is_finite()));
        assert!(v[1] <= v[2] && v[3] <= v[4], "{r:?}");
    }
    // s1 at cutoff hour 357 (2013-07-15T21:00Z): step 1 targets hour 358
    let yhat: f64 = rows[0][5].parse().unwrap();
    assert!((yhat - daily(358)).abs() < 0.1, "{yhat} vs {}", daily(358));
}
