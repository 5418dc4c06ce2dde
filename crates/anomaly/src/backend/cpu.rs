//! CPU backend: plain Rust, cache-blocked, AVX2 when the CPU has it; one host's rows split
//! over threads, or (batched) whole hosts spread over threads.

use super::parallel::par_map;
use super::stream::stream_from_abs;
use super::{
    Backend, BackendError, CrossProducts, LagWeights, ResidualJob, Series, StreamJob, Streamed,
};

/// Lanes per packed weight column block.
const LANES: usize = 8;

/// The default backend. `threads` = worker threads for large batches (default: available
/// parallelism, at most 8).
#[derive(Clone, Debug)]
pub struct CpuBackend {
    pub threads: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        Self { threads }
    }
}

impl CpuBackend {
    pub fn single_threaded() -> Self {
        Self { threads: 1 }
    }

    fn split(&self, n: usize, min_chunk: usize) -> usize {
        self.threads.max(1).min(n / min_chunk.max(1)).max(1)
    }
}

/// Weights repacked column-block-major: block `c`, feature `f`, lane `k` at `(c * fx + f) * 8 + k`.
fn pack(w: &[f32], fx: usize, d: usize) -> (Vec<f32>, usize) {
    let blocks = d.div_ceil(LANES);
    let mut p = vec![0.0f32; blocks * fx * LANES];
    for f in 0..fx {
        for j in 0..d {
            let (c, k) = (j / LANES, j % LANES);
            p[(c * fx + f) * LANES + k] = w[f * d + j];
        }
    }
    (p, blocks)
}

/// The weights as the kernel reads them: `LANES` weights of feature `f` on the metrics of
/// block `c` at `c * cs + f * fs`. Packed (`cs = fx · 8`, `fs = 8`), or, when `d` is a multiple
/// of 8, the row-major weights themselves (`cs = 8`, `fs = d`): the same values in the same
/// order, so the same results, without repacking every call (a scoring run's minute costs
/// fewer multiply-adds than the repacking).
#[derive(Clone, Copy)]
struct Blocks<'a> {
    w: &'a [f32],
    n: usize,
    cs: usize,
    fs: usize,
}

impl<'a> Blocks<'a> {
    fn packed(p: &'a [f32], blocks: usize, fx: usize) -> Self {
        Blocks {
            w: p,
            n: blocks,
            cs: fx * LANES,
            fs: LANES,
        }
    }

    /// The row-major weights, when `d` is a multiple of `LANES`.
    fn direct(w: &'a [f32], d: usize) -> Option<Self> {
        d.is_multiple_of(LANES).then_some(Blocks {
            w,
            n: d / LANES,
            cs: LANES,
            fs: d,
        })
    }

    #[inline(always)]
    fn lanes(&self, c: usize, f: usize) -> &'a [f32] {
        let at = c * self.cs + f * self.fs;
        &self.w[at..at + LANES]
    }
}

/// `a * b + c`, fused where the caller was compiled with FMA (a libm call otherwise).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Rows computed together: independent accumulator chains hide the add latency and each
/// weight block is loaded once per group.
const ROWS: usize = 4;

/// `RAW`: write the absolute residual `|z - ŷ|` instead of the clipped, scaled energy.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn energy_rows<const FMA: bool, const RAW: bool>(
    zpad: &[f32],
    rows: std::ops::Range<usize>,
    d: usize,
    lags: usize,
    wb: Blocks<'_>,
    bias: &[f32],
    inv_scale: &[f32],
    clip: f32,
    out: &mut [f32],
) {
    let fx = lags * d;
    let start = rows.start;
    let mut t = rows.start;
    let finish = |t: usize, c: usize, acc: &[f32; LANES], out: &mut [f32]| {
        let target = &zpad[(t + lags) * d..(t + lags + 1) * d];
        let o = &mut out[(t - start) * d..(t - start + 1) * d];
        let j0 = c * LANES;
        for k in 0..LANES.min(d - j0) {
            let j = j0 + k;
            let a = (target[j] - acc[k] - bias[j]).abs();
            o[j] = if RAW {
                a
            } else {
                let r = (a * inv_scale[j]).min(clip);
                r * r
            };
        }
    };
    while t + ROWS <= rows.end {
        let xs: [&[f32]; ROWS] = std::array::from_fn(|r| &zpad[(t + r) * d..(t + r) * d + fx]);
        for c in 0..wb.n {
            let mut acc = [[0.0f32; LANES]; ROWS];
            for f in 0..fx {
                let w = wb.lanes(c, f);
                for r in 0..ROWS {
                    let xv = xs[r][f];
                    for k in 0..LANES {
                        acc[r][k] = madd::<FMA>(xv, w[k], acc[r][k]);
                    }
                }
            }
            for r in 0..ROWS {
                finish(t + r, c, &acc[r], out);
            }
        }
        t += ROWS;
    }
    while t < rows.end {
        let x = &zpad[t * d..t * d + fx];
        for c in 0..wb.n {
            let mut acc = [0.0f32; LANES];
            for (f, xv) in x.iter().enumerate() {
                let w = wb.lanes(c, f);
                for k in 0..LANES {
                    acc[k] = madd::<FMA>(*xv, w[k], acc[k]);
                }
            }
            finish(t, c, &acc, out);
        }
        t += 1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn energy_rows_avx2<const RAW: bool>(
    zpad: &[f32],
    rows: std::ops::Range<usize>,
    d: usize,
    lags: usize,
    wb: Blocks<'_>,
    bias: &[f32],
    inv_scale: &[f32],
    clip: f32,
    out: &mut [f32],
) {
    energy_rows::<true, RAW>(zpad, rows, d, lags, wb, bias, inv_scale, clip, out)
}

#[allow(clippy::too_many_arguments)]
fn energy_dispatch<const RAW: bool>(
    zpad: &[f32],
    rows: std::ops::Range<usize>,
    d: usize,
    lags: usize,
    wb: Blocks<'_>,
    bias: &[f32],
    inv_scale: &[f32],
    clip: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the enabled target features (checked just above).
            unsafe { energy_rows_avx2::<RAW>(zpad, rows, d, lags, wb, bias, inv_scale, clip, out) };
            return;
        }
    }
    energy_rows::<false, RAW>(zpad, rows, d, lags, wb, bias, inv_scale, clip, out)
}

fn cross_rows(
    zpad: &[f32],
    rows: std::ops::Range<usize>,
    d: usize,
    lags: usize,
) -> (Vec<f64>, Vec<f64>) {
    let fx = lags * d;
    let f = fx + 1;
    let mut xtx = vec![0.0f64; f * f];
    let mut xty = vec![0.0f64; f * d];
    let mut x = vec![0.0f64; f];
    for t in rows {
        for (a, v) in x.iter_mut().zip(&zpad[t * d..t * d + fx]) {
            *a = *v as f64;
        }
        x[fx] = 1.0;
        let y = &zpad[(t + lags) * d..(t + lags + 1) * d];
        for a in 0..f {
            let xa = x[a];
            // upper triangle only; mirrored below
            let row = &mut xtx[a * f + a..(a + 1) * f];
            for (g, xb) in row.iter_mut().zip(&x[a..]) {
                *g += xa * xb;
            }
            let ry = &mut xty[a * d..(a + 1) * d];
            for (g, yb) in ry.iter_mut().zip(y) {
                *g += xa * *yb as f64;
            }
        }
    }
    (xtx, xty)
}

/// Mirror the upper triangle of a `f x f` matrix into the lower one.
fn mirror(xtx: &mut [f64], f: usize) {
    for a in 0..f {
        for b in 0..a {
            xtx[a * f + b] = xtx[b * f + a];
        }
    }
}

/// One host's cross products on the calling thread (the batched path: hosts, not rows, are
/// spread over threads). Equal, bit for bit, to `CpuBackend::single_threaded()`.
fn cross_one(s: &Series<'_>) -> Result<CrossProducts, BackendError> {
    s.check_trainable()?;
    let (mut xtx, xty) = cross_rows(s.zpad, 0..s.n, s.d, s.lags);
    mirror(&mut xtx, s.features());
    Ok(CrossProducts { xtx, xty })
}

/// One host's absolute residuals on the calling thread.
fn abs_one(j: &ResidualJob<'_>) -> Result<Vec<f32>, BackendError> {
    j.check()?;
    let s = j.series;
    let fx = s.lags * s.d;
    let packed;
    let wb = match Blocks::direct(j.weights.weights, s.d) {
        Some(wb) => wb,
        None => {
            let (p, blocks) = pack(j.weights.weights, fx, s.d);
            packed = p;
            Blocks::packed(&packed, blocks, fx)
        }
    };
    let mut out = vec![0.0f32; s.n * s.d];
    energy_dispatch::<true>(
        s.zpad,
        0..s.n,
        s.d,
        s.lags,
        wb,
        j.weights.bias,
        &[],
        0.0,
        &mut out,
    );
    Ok(out)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn info(&self) -> super::BackendInfo {
        super::BackendInfo::cpu(format!("{} threads", self.threads))
    }

    fn threads(&self) -> usize {
        self.threads.max(1)
    }

    fn cross_products_batch(
        &self,
        series: &[Series<'_>],
    ) -> Vec<Result<CrossProducts, BackendError>> {
        par_map(self.threads, series.iter().collect(), |_, s| cross_one(s))
    }

    fn abs_residuals_batch(&self, jobs: &[ResidualJob<'_>]) -> Vec<Result<Vec<f32>, BackendError>> {
        // Scoring a minute is ~1k multiply-adds per host: below a few hundred hosts the
        // threads cost more than they save.
        let work: usize = jobs.iter().map(|j| j.series.n * j.series.d).sum();
        let threads = if work < 1 << 16 { 1 } else { self.threads };
        par_map(threads, jobs.iter().collect(), |_, j| abs_one(j))
    }

    /// Each host's residuals and stream on one thread, hosts spread over the threads (the
    /// residuals too: unlike [`Backend::abs_residuals_batch`], whose whole batch runs on one
    /// thread below 65,536 values).
    fn score_stream(
        &self,
        jobs: &[StreamJob<'_>],
        top_k: usize,
    ) -> Vec<Result<Streamed, BackendError>> {
        par_map(self.threads, jobs.iter().collect(), |_, j| {
            j.check()?;
            let abs = abs_one(&j.residual_job())?;
            Ok(stream_from_abs(j, &abs, top_k))
        })
    }

    fn cross_products(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        Series { zpad, n, d, lags }.check_trainable()?;
        let f = lags * d + 1;
        let parts = self.split(n, 4096);
        let chunk = n.div_ceil(parts);
        let results: Vec<(Vec<f64>, Vec<f64>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..parts)
                .map(|p| {
                    let r = (p * chunk).min(n)..((p + 1) * chunk).min(n);
                    s.spawn(move || cross_rows(zpad, r, d, lags))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("worker")).collect()
        });
        let mut xtx = vec![0.0f64; f * f];
        let mut xty = vec![0.0f64; f * d];
        for (a, b) in results {
            xtx.iter_mut().zip(a).for_each(|(s, v)| *s += v);
            xty.iter_mut().zip(b).for_each(|(s, v)| *s += v);
        }
        mirror(&mut xtx, f);
        Ok((xtx, xty))
    }

    fn residual_energy(
        &self,
        zpad: &[f32],
        n: usize,
        d: usize,
        lags: usize,
        w: LagWeights<'_>,
        inv_scale: &[f32],
        clip: f32,
    ) -> anyhow::Result<Vec<f32>> {
        anyhow::ensure!(zpad.len() >= (n + lags) * d, "zpad too short");
        anyhow::ensure!(w.weights.len() == lags * d * d && w.bias.len() == d);
        let (packed, blocks) = pack(w.weights, lags * d, d);
        let wb = Blocks::packed(&packed, blocks, lags * d);
        let mut out = vec![0.0f32; n * d];
        let parts = self.split(n, 2048);
        let chunk = n.div_ceil(parts).max(1);
        std::thread::scope(|s| {
            for (p, o) in out.chunks_mut(chunk * d).enumerate() {
                let r = p * chunk..(p * chunk + o.len() / d.max(1));
                s.spawn(move || {
                    energy_dispatch::<false>(zpad, r, d, lags, wb, w.bias, inv_scale, clip, o)
                });
            }
        });
        Ok(out)
    }
}
