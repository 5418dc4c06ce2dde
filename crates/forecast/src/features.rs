//! Feature frame, built with polars.
//!
//! One frame per fit: the (gap-filled) history followed by `horizon` empty future rows.
//! Every column at row `t` only uses values at rows `<= t`, so a model may look a column up
//! at any row that is not after its forecast origin. The columns are computed in two
//! target spaces: `raw` (value / scale) and `log` (`ln(1 + value / scale)`).

use anyhow::Result;
use polars::prelude::*;

/// Number of Fourier columns: daily harmonics 1..=3 (sin, cos) then weekly 1..=2 (sin, cos).
pub const N_FOURIER: usize = 10;
/// Daily Fourier columns come first.
pub const N_FOURIER_DAILY: usize = 6;

/// The two spaces in which models are trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// value / scale
    Raw = 0,
    /// ln(1 + value / scale): damps spikes, fits roughly the conditional median
    Log = 1,
}

impl Space {
    pub fn forward(self, y: f64, scale: f64) -> f64 {
        match self {
            Space::Raw => y / scale,
            Space::Log => (y.max(0.0) / scale).ln_1p(),
        }
    }
    pub fn inverse(self, z: f64, scale: f64) -> f64 {
        match self {
            Space::Raw => z * scale,
            Space::Log => z.exp_m1() * scale,
        }
    }
}

/// Per-space columns (index `t` = hour since the start of the frame).
pub struct SpaceCols {
    /// transformed value, NaN in the future rows
    pub z: Vec<f64>,
    /// median of the last 3 h (including `t`): the spike-robust current level
    pub med3: Vec<f64>,
    /// mean of the last 24 h (including `t`)
    pub m24: Vec<f64>,
    /// mean of the last 168 h (including `t`)
    pub m168: Vec<f64>,
    /// mean of the same hour over the last 7 days (`t`, `t-24`, ..., `t-144`)
    pub dp: Vec<f64>,
    /// mean of the same hour-of-week over the last 3 weeks (`t`, `t-168`, `t-336`)
    pub wp: Vec<f64>,
}

/// The feature frame of one fit.
pub struct Frame {
    /// per-series scale (mean absolute value of the history), > 0
    pub scale: f64,
    /// columns per space, indexed by `Space as usize`
    pub cols: [SpaceCols; 2],
    /// Fourier terms, `N_FOURIER` columns of length `n + horizon`
    pub fourier: Vec<Vec<f64>>,
}

fn col_vec(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
    Ok(df
        .column(name)
        .map_err(|e| anyhow::anyhow!("feature column {name}: {e}"))?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// Builds the frame. `y` is the gap-filled history, `phase0` the hour-of-week (0..168) of
/// row 0 (any fixed offset works for relative time bases).
pub fn build(y: &[f64], scale: f64, phase0: i64, horizon: usize) -> Result<Frame> {
    let n = y.len();
    let len = n + horizon;
    let mut yv: Vec<Option<f64>> = y.iter().map(|&v| Some(v)).collect();
    yv.resize(len, None);
    let t: Vec<f64> = (0..len as i64).map(|i| (i + phase0) as f64).collect();
    // number of same-hour terms inside the history for the 7-day / 3-week profiles
    let n24: Vec<f64> = (0..len).map(|i| (i / 24 + 1).min(7) as f64).collect();
    let n168: Vec<f64> = (0..len).map(|i| (i / 168 + 1).min(3) as f64).collect();
    let df = DataFrame::new(
        len,
        vec![
            Column::new("y".into(), yv),
            Column::new("t".into(), t),
            Column::new("n24".into(), n24),
            Column::new("n168".into(), n168),
        ],
    )?;

    let roll = |e: Expr, w: usize, minp: usize| {
        e.rolling_mean(RollingOptionsFixedWindow {
            window_size: w,
            min_periods: minp,
            ..Default::default()
        })
    };
    // mean of e, e.shift(step), ..., e.shift((k-1) step) over the terms inside the history:
    // the history has no gaps (filled before), so the count only depends on the row index
    let lag_mean = |e: &Expr, step: i64, k: i64| {
        let mut sum = e.clone();
        for i in 1..k {
            sum = sum + e.clone().shift_and_fill(lit(step * i), lit(0.0));
        }
        sum / col(format!("n{step}"))
    };

    // stage 1: the two target spaces and the Fourier terms
    let mut stage1: Vec<Expr> = vec![
        (col("y") / lit(scale)).alias("z_raw"),
        (when(col("y").gt(lit(0.0)))
            .then(col("y"))
            .otherwise(lit(0.0))
            / lit(scale))
        .log1p()
        .alias("z_log"),
    ];
    let tau = std::f64::consts::TAU;
    for (period, harmonics) in [(24.0, 3), (168.0, 2)] {
        for k in 1..=harmonics {
            let arg = col("t") * lit(tau * k as f64 / period);
            stage1.push(arg.clone().sin().alias(format!("s{period}_{k}")));
            stage1.push(arg.cos().alias(format!("c{period}_{k}")));
        }
    }
    // stage 2: levels, rolling means and same-hour profiles per space
    let mut exprs: Vec<Expr> = Vec::new();
    for name in ["raw", "log"] {
        let z = col(format!("z_{name}"));
        exprs.push(
            z.clone()
                .rolling_median(RollingOptionsFixedWindow {
                    window_size: 3,
                    min_periods: 1,
                    ..Default::default()
                })
                .alias(format!("med3_{name}")),
        );
        exprs.push(roll(z.clone(), 24, 1).alias(format!("m24_{name}")));
        exprs.push(roll(z.clone(), 168, 24).alias(format!("m168_{name}")));
        exprs.push(lag_mean(&z, 24, 7).alias(format!("dp_{name}")));
        exprs.push(lag_mean(&z, 168, 3).alias(format!("wp_{name}")));
    }
    let out = df
        .lazy()
        .with_columns(stage1)
        .with_columns(exprs)
        .without_optimizations()
        .collect()?;

    let space = |name: &str| -> Result<SpaceCols> {
        Ok(SpaceCols {
            z: col_vec(&out, &format!("z_{name}"))?,
            med3: col_vec(&out, &format!("med3_{name}"))?,
            m24: col_vec(&out, &format!("m24_{name}"))?,
            m168: col_vec(&out, &format!("m168_{name}"))?,
            dp: col_vec(&out, &format!("dp_{name}"))?,
            wp: col_vec(&out, &format!("wp_{name}"))?,
        })
    };
    let mut fourier = Vec::with_capacity(N_FOURIER);
    for (period, harmonics) in [(24.0, 3), (168.0, 2)] {
        for k in 1..=harmonics {
            fourier.push(col_vec(&out, &format!("s{period}_{k}"))?);
            fourier.push(col_vec(&out, &format!("c{period}_{k}"))?);
        }
    }
    Ok(Frame {
        scale,
        cols: [space("raw")?, space("log")?],
        fourier,
    })
}
