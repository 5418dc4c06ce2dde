//! Variational autoencoder over lag windows: a candidate scorer for the multivariate
//! [`crate::Detector`] (and, with one metric, the NAB stream).
//!
//! The input is the same window the linear predictor sees plus the row it predicts: the
//! `lags + 1` standardized rows ending at row *t*, flattened (`(lags + 1) · d` values). An MLP
//! encoder maps it to a diagonal Gaussian `q(z | x) = N(μ, diag σ²)` over `latent` dimensions, an
//! MLP decoder maps `z` back to the window; training minimizes the negative ELBO with a unit
//! Gaussian likelihood, `½ ‖x − x̂‖² + β · KL(q(z | x) ‖ N(0, I))`, averaged over mini-batches,
//! by Adam, with the reparameterization `z = μ + σ ε`. The last `val_frac` of the training windows
//! (the most recent: a causal validation tail) is held out; training stops when its loss has not
//! improved for `patience` epochs and keeps the best weights.
//!
//! Scoring is deterministic (`z = μ`): row *t*'s per-metric error is the reconstruction error of
//! the window's last row (the one that is new at *t*), so the detector's smoothing, alert level
//! and explanations work on it exactly as on the predictor's residuals. Everything is f32,
//! single-threaded and seeded, so a fit is reproducible bit for bit.
//!
//! The matrix products go through three functions ([`gemm_nn`], [`gemm_tn`] and, via a
//! transposed copy of the weights, [`gemm_nn`] again): a mini-batch forward pass is
//! `X·W`, the backward pass `D·Wᵀ` and `Xᵀ·D`. Those are the calls a batched tensor backend would
//! take over; the element-wise parts (tanh, the reparameterization, Adam) are cheap by
//! comparison.

use serde::{Deserialize, Serialize};

/// Settings of the VAE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    /// Hidden units of the encoder's and the decoder's one hidden layer (tanh).
    pub hidden: usize,
    /// Latent dimensions.
    pub latent: usize,
    /// Weight of the KL term (β-VAE; 1 = the ELBO).
    pub beta: f32,
    /// Adam step size.
    pub learning_rate: f32,
    /// Windows per mini-batch.
    pub batch: usize,
    /// Most passes over the training windows.
    pub max_epochs: usize,
    /// Stop after this many epochs without a lower validation loss.
    pub patience: usize,
    /// Share of the training windows (the most recent) held out for early stopping.
    pub val_frac: f32,
    /// Most training windows (the most recent ones; 0 = all).
    pub max_windows: usize,
    /// Add the window's KL term, spread evenly over the metrics, to the reconstruction error
    /// (the score is then the negative ELBO at `z = μ` rather than the reconstruction error).
    pub score_kl: bool,
    /// Seed of the initialization, the shuffling and the reparameterization noise.
    pub seed: u64,
    /// Benchmark runs only: keep trained networks in this folder, keyed by a hash of the
    /// training windows and these settings, so runs that differ only in what happens after the
    /// VAE (smoothing, alert level) train it once. Never set in the product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            hidden: 64,
            latent: 8,
            beta: 1.0,
            learning_rate: 1e-3,
            batch: 256,
            max_epochs: 40,
            patience: 4,
            val_frac: 0.1,
            max_windows: 0,
            score_kl: false,
            seed: 1,
            cache_dir: None,
        }
    }
}

/// `c (m×n) (+)= a (m×k) · b (k×n)`, row-major.
pub fn gemm_nn(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, acc: bool) {
    if !acc {
        c[..m * n].fill(0.0);
    }
    for i in 0..m {
        let ci = &mut c[i * n..(i + 1) * n];
        for (p, &aip) in a[i * k..(i + 1) * k].iter().enumerate() {
            if aip == 0.0 {
                continue;
            }
            let bp = &b[p * n..(p + 1) * n];
            for (cv, bv) in ci.iter_mut().zip(bp) {
                *cv += aip * bv;
            }
        }
    }
}

/// `c (k×n) (+)= aᵀ · b`, `a` (m×k), `b` (m×n), row-major (the weight gradient `Xᵀ·D`).
pub fn gemm_tn(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, acc: bool) {
    if !acc {
        c[..k * n].fill(0.0);
    }
    for i in 0..m {
        let bi = &b[i * n..(i + 1) * n];
        for (p, &aip) in a[i * k..(i + 1) * k].iter().enumerate() {
            if aip == 0.0 {
                continue;
            }
            let cp = &mut c[p * n..(p + 1) * n];
            for (cv, bv) in cp.iter_mut().zip(bi) {
                *cv += aip * bv;
            }
        }
    }
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// Add the bias `b` to every row of `x` (`rows × b.len()`).
fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// Column sums of `x` (`rows × n`) into `out`.
fn col_sums(x: &[f32], n: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in x.chunks_exact(n) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}

/// Small deterministic RNG (SplitMix64) with Box–Muller normals.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f32 {
        (((self.next_u64() >> 40) as f32) + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The parameters, in one flat vector so that Adam runs over all of them at once.
/// Layout: `w1 (in×h), b1 (h), wm (h×l), bm (l), wv (h×l), bv (l), w2 (l×h), b2 (h), w3 (h×in),
/// b3 (in)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vae {
    pub config: VaeConfig,
    /// Input width: `(lags + 1) · metrics`.
    pub input: usize,
    /// Metrics per row (the last `metrics` inputs are the row being scored).
    pub metrics: usize,
    pub params: Vec<f32>,
    /// Epochs run and the best validation loss (per window), for reports.
    pub epochs: usize,
    pub val_loss: f32,
}

/// Offsets of the parameter blocks.
struct Layout {
    w1: usize,
    b1: usize,
    wm: usize,
    bm: usize,
    wv: usize,
    bv: usize,
    w2: usize,
    b2: usize,
    w3: usize,
    b3: usize,
    len: usize,
}

impl Layout {
    fn new(input: usize, h: usize, l: usize) -> Self {
        let w1 = 0;
        let b1 = w1 + input * h;
        let wm = b1 + h;
        let bm = wm + h * l;
        let wv = bm + l;
        let bv = wv + h * l;
        let w2 = bv + l;
        let b2 = w2 + l * h;
        let w3 = b2 + h;
        let b3 = w3 + h * input;
        Self {
            w1,
            b1,
            wm,
            bm,
            wv,
            bv,
            w2,
            b2,
            w3,
            b3,
            len: b3 + input,
        }
    }
}

/// Activations of one mini-batch (reused between batches).
#[derive(Default)]
struct Work {
    h1: Vec<f32>,
    mu: Vec<f32>,
    lv: Vec<f32>,
    eps: Vec<f32>,
    z: Vec<f32>,
    h2: Vec<f32>,
    xh: Vec<f32>,
    // gradients w.r.t. activations
    dxh: Vec<f32>,
    dh2: Vec<f32>,
    dz: Vec<f32>,
    dmu: Vec<f32>,
    dlv: Vec<f32>,
    dh1: Vec<f32>,
    tmp: Vec<f32>,
}

/// Log-variance clamp: keeps `exp(lv)` finite on windows far from the training data.
const LV_CLAMP: f32 = 8.0;

impl Vae {
    fn layout(&self) -> Layout {
        Layout::new(self.input, self.config.hidden, self.config.latent)
    }

    /// A freshly initialized network (Glorot-uniform weights, zero biases).
    pub fn new(input: usize, metrics: usize, config: VaeConfig) -> Self {
        let (h, l) = (config.hidden.max(1), config.latent.max(1));
        let config = VaeConfig {
            hidden: h,
            latent: l,
            ..config
        };
        let lay = Layout::new(input, h, l);
        let mut params = vec![0.0f32; lay.len];
        let mut rng = Rng(config.seed);
        let mut init = |off: usize, fan_in: usize, fan_out: usize| {
            let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
            for p in &mut params[off..off + fan_in * fan_out] {
                *p = a * (2.0 * rng.uniform() - 1.0);
            }
        };
        init(lay.w1, input, h);
        init(lay.wm, h, l);
        init(lay.wv, h, l);
        init(lay.w2, l, h);
        init(lay.w3, h, input);
        Self {
            config,
            input,
            metrics,
            params,
            epochs: 0,
            val_loss: f32::NAN,
        }
    }

    /// Forward pass of `b` windows `x` (`b × input`). With `noise`, `z = μ + σ ε` (training),
    /// else `z = μ`. Returns the per-window loss `½‖x − x̂‖² + β KL`.
    fn forward(&self, x: &[f32], b: usize, noise: Option<&mut Rng>, w: &mut Work) -> Vec<f32> {
        let (inp, h, l) = (self.input, self.config.hidden, self.config.latent);
        let lay = self.layout();
        let p = &self.params;
        w.h1.resize(b * h, 0.0);
        gemm_nn(x, &p[lay.w1..lay.b1], &mut w.h1, b, inp, h, false);
        add_bias(&mut w.h1, &p[lay.b1..lay.wm]);
        w.h1.iter_mut().for_each(|v| *v = v.tanh());
        w.mu.resize(b * l, 0.0);
        w.lv.resize(b * l, 0.0);
        gemm_nn(&w.h1, &p[lay.wm..lay.bm], &mut w.mu, b, h, l, false);
        add_bias(&mut w.mu, &p[lay.bm..lay.wv]);
        gemm_nn(&w.h1, &p[lay.wv..lay.bv], &mut w.lv, b, h, l, false);
        add_bias(&mut w.lv, &p[lay.bv..lay.w2]);
        w.lv.iter_mut()
            .for_each(|v| *v = v.clamp(-LV_CLAMP, LV_CLAMP));
        w.eps.resize(b * l, 0.0);
        w.z.resize(b * l, 0.0);
        match noise {
            Some(rng) => {
                for i in 0..b * l {
                    w.eps[i] = rng.normal();
                    w.z[i] = w.mu[i] + (0.5 * w.lv[i]).exp() * w.eps[i];
                }
            }
            None => {
                w.eps.fill(0.0);
                w.z.copy_from_slice(&w.mu);
            }
        }
        w.h2.resize(b * h, 0.0);
        gemm_nn(&w.z, &p[lay.w2..lay.b2], &mut w.h2, b, l, h, false);
        add_bias(&mut w.h2, &p[lay.b2..lay.w3]);
        w.h2.iter_mut().for_each(|v| *v = v.tanh());
        w.xh.resize(b * inp, 0.0);
        gemm_nn(&w.h2, &p[lay.w3..lay.b3], &mut w.xh, b, h, inp, false);
        add_bias(&mut w.xh, &p[lay.b3..]);
        let beta = self.config.beta;
        (0..b)
            .map(|i| {
                let rec: f32 = x[i * inp..(i + 1) * inp]
                    .iter()
                    .zip(&w.xh[i * inp..(i + 1) * inp])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum();
                0.5 * rec + beta * kl(&w.mu[i * l..(i + 1) * l], &w.lv[i * l..(i + 1) * l])
            })
            .collect()
    }

    /// Gradient of the mean loss of the batch of the last [`Vae::forward`] (with noise) into `g`.
    fn backward(&self, x: &[f32], b: usize, w: &mut Work, g: &mut [f32]) {
        let (inp, h, l) = (self.input, self.config.hidden, self.config.latent);
        let lay = self.layout();
        let p = &self.params;
        let inv_b = 1.0 / b as f32;
        let beta = self.config.beta;
        // d loss / d x̂
        w.dxh.resize(b * inp, 0.0);
        for ((d, xh), x) in w.dxh.iter_mut().zip(&w.xh).zip(x) {
            *d = (xh - x) * inv_b;
        }
        gemm_tn(&w.h2, &w.dxh, &mut g[lay.w3..lay.b3], b, h, inp, false);
        col_sums(&w.dxh, inp, &mut g[lay.b3..]);
        // decoder hidden layer
        w.tmp = transpose(&p[lay.w3..lay.b3], h, inp);
        w.dh2.resize(b * h, 0.0);
        gemm_nn(&w.dxh, &w.tmp, &mut w.dh2, b, inp, h, false);
        for (d, a) in w.dh2.iter_mut().zip(&w.h2) {
            *d *= 1.0 - a * a;
        }
        gemm_tn(&w.z, &w.dh2, &mut g[lay.w2..lay.b2], b, l, h, false);
        col_sums(&w.dh2, h, &mut g[lay.b2..lay.w3]);
        w.tmp = transpose(&p[lay.w2..lay.b2], l, h);
        w.dz.resize(b * l, 0.0);
        gemm_nn(&w.dh2, &w.tmp, &mut w.dz, b, h, l, false);
        // reparameterization and KL
        w.dmu.resize(b * l, 0.0);
        w.dlv.resize(b * l, 0.0);
        for i in 0..b * l {
            let s = (0.5 * w.lv[i]).exp();
            w.dmu[i] = w.dz[i] + beta * w.mu[i] * inv_b;
            let mut dlv = w.dz[i] * w.eps[i] * 0.5 * s + beta * 0.5 * (s * s - 1.0) * inv_b;
            if w.lv[i].abs() >= LV_CLAMP {
                dlv = 0.0;
            }
            w.dlv[i] = dlv;
        }
        gemm_tn(&w.h1, &w.dmu, &mut g[lay.wm..lay.bm], b, h, l, false);
        col_sums(&w.dmu, l, &mut g[lay.bm..lay.wv]);
        gemm_tn(&w.h1, &w.dlv, &mut g[lay.wv..lay.bv], b, h, l, false);
        col_sums(&w.dlv, l, &mut g[lay.bv..lay.w2]);
        // encoder hidden layer
        w.dh1.resize(b * h, 0.0);
        w.tmp = transpose(&p[lay.wm..lay.bm], h, l);
        gemm_nn(&w.dmu, &w.tmp, &mut w.dh1, b, l, h, false);
        w.tmp = transpose(&p[lay.wv..lay.bv], h, l);
        gemm_nn(&w.dlv, &w.tmp, &mut w.dh1, b, l, h, true);
        for (d, a) in w.dh1.iter_mut().zip(&w.h1) {
            *d *= 1.0 - a * a;
        }
        gemm_tn(x, &w.dh1, &mut g[lay.w1..lay.b1], b, inp, h, false);
        col_sums(&w.dh1, h, &mut g[lay.b1..lay.wm]);
    }

    /// Train on `windows` (`n × input`, in time order) and return the network with the lowest
    /// loss on the causal validation tail (from `config.cache_dir` when it was trained there on
    /// the same windows with the same settings).
    pub fn fit(windows: &[f32], input: usize, metrics: usize, config: VaeConfig) -> Self {
        let Some(dir) = config.cache_dir.clone() else {
            return Self::train(windows, input, metrics, config);
        };
        let key = {
            let mut h = Fnv::default();
            windows.iter().for_each(|v| h.write(&v.to_le_bytes()));
            let plain = VaeConfig {
                cache_dir: None,
                ..config.clone()
            };
            h.write(format!("{input} {metrics} {plain:?}").as_bytes());
            h.0
        };
        let path = dir.join(format!("vae-{key:016x}.bin"));
        let mut vae = Self::new(input, metrics, config.clone());
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.len() == 4 * vae.params.len() + 12 {
                let (p, rest) = bytes.split_at(4 * vae.params.len());
                for (v, b) in vae.params.iter_mut().zip(p.chunks_exact(4)) {
                    *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                vae.epochs = u64::from_le_bytes(rest[..8].try_into().unwrap_or_default()) as usize;
                vae.val_loss = f32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
                return vae;
            }
        }
        let vae = Self::train(windows, input, metrics, config);
        let mut bytes = Vec::with_capacity(4 * vae.params.len() + 12);
        vae.params
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        bytes.extend_from_slice(&(vae.epochs as u64).to_le_bytes());
        bytes.extend_from_slice(&vae.val_loss.to_le_bytes());
        // A cache that cannot be written only costs time.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        vae
    }

    fn train(windows: &[f32], input: usize, metrics: usize, config: VaeConfig) -> Self {
        let mut vae = Self::new(input, metrics, config);
        let cfg = vae.config.clone();
        let n_all = windows.len() / input;
        let start = if cfg.max_windows > 0 {
            n_all.saturating_sub(cfg.max_windows)
        } else {
            0
        };
        let n = n_all - start;
        let data = &windows[start * input..];
        let n_val = ((n as f32 * cfg.val_frac.clamp(0.0, 0.5)) as usize).min(n.saturating_sub(1));
        let n_train = n - n_val;
        if n_train == 0 {
            return vae;
        }
        let (train, val) = data.split_at(n_train * input);
        let bsz = cfg.batch.clamp(1, n_train);
        let mut rng = Rng(cfg.seed ^ 0x5DEE_CE66_D1CE_5EED);
        let mut work = Work::default();
        let mut grad = vec![0.0f32; vae.params.len()];
        let (mut m1, mut m2) = (vec![0.0f32; grad.len()], vec![0.0f32; grad.len()]);
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut step = 0i32;
        let mut order: Vec<usize> = (0..n_train).collect();
        let mut batch = vec![0.0f32; bsz * input];
        let mut best = (f32::INFINITY, vae.params.clone(), 0usize);
        let mut stale = 0usize;
        for epoch in 0..cfg.max_epochs {
            for i in (1..n_train).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for chunk in order.chunks(bsz) {
                let b = chunk.len();
                for (r, &i) in chunk.iter().enumerate() {
                    batch[r * input..(r + 1) * input]
                        .copy_from_slice(&train[i * input..(i + 1) * input]);
                }
                let x = &batch[..b * input];
                vae.forward(x, b, Some(&mut rng), &mut work);
                vae.backward(x, b, &mut work, &mut grad);
                step += 1;
                let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
                let lr = cfg.learning_rate;
                for (((p, g), m), v) in vae.params.iter_mut().zip(&grad).zip(&mut m1).zip(&mut m2) {
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
                }
            }
            // Deterministic loss (z = μ) on the validation tail, or on the training rows when
            // there is no tail.
            let eval = if n_val > 0 { val } else { train };
            let loss = vae.mean_loss(eval, &mut work);
            vae.epochs = epoch + 1;
            if loss < best.0 {
                best = (loss, vae.params.clone(), epoch + 1);
                stale = 0;
            } else {
                stale += 1;
                if stale >= cfg.patience.max(1) {
                    break;
                }
            }
        }
        if best.0.is_finite() {
            vae.params = best.1;
            vae.val_loss = best.0;
        }
        vae
    }

    fn mean_loss(&self, x: &[f32], w: &mut Work) -> f32 {
        let n = x.len() / self.input;
        let mut total = 0.0f64;
        for chunk in x.chunks(1024 * self.input) {
            let b = chunk.len() / self.input;
            total += self
                .forward(chunk, b, None, w)
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        (total / n.max(1) as f64) as f32
    }

    /// Per-metric squared reconstruction errors of the last row of each window (`n × metrics`,
    /// `z = μ`), plus the window's KL spread over the metrics when `score_kl` is set.
    pub fn row_errors(&self, windows: &[f32]) -> Vec<f32> {
        let (inp, d, l) = (self.input, self.metrics, self.config.latent);
        let n = windows.len() / inp;
        let mut out = Vec::with_capacity(n * d);
        let mut w = Work::default();
        for chunk in windows.chunks(1024 * inp) {
            let b = chunk.len() / inp;
            self.forward(chunk, b, None, &mut w);
            for i in 0..b {
                let last = (i + 1) * inp - d;
                let k = if self.config.score_kl {
                    kl(&w.mu[i * l..(i + 1) * l], &w.lv[i * l..(i + 1) * l]) / d as f32
                } else {
                    0.0
                };
                for j in 0..d {
                    let r = chunk[last + j] - w.xh[last + j];
                    out.push(r * r + k);
                }
            }
        }
        out
    }
}

/// FNV-1a, 64 bit (cache keys).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `KL(N(μ, e^lv) ‖ N(0, 1))` summed over the latent dimensions.
fn kl(mu: &[f32], lv: &[f32]) -> f32 {
    0.5 * mu
        .iter()
        .zip(lv)
        .map(|(m, v)| m * m + v.exp() - 1.0 - v)
        .sum::<f32>()
}

/// The windows of a padded standardized stream: `zpad` holds `lags` history rows then `n` rows
/// (`d` metrics each); window `t` is rows `t ..= t + lags`, flattened oldest first.
pub fn windows(zpad: &[f32], n: usize, d: usize, lags: usize) -> Vec<f32> {
    let w = (lags + 1) * d;
    let mut out = Vec::with_capacity(n * w);
    for t in 0..n {
        out.extend_from_slice(&zpad[t * d..t * d + w]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        let mut x = Vec::with_capacity(n * d);
        for t in 0..n {
            let a = (t as f32 / 7.0).sin();
            for j in 0..d {
                x.push(a * (j as f32 + 1.0) / d as f32 + 0.05 * rng.normal());
            }
        }
        x
    }

    #[test]
    fn gemm_variants_match_the_naive_product() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut c = vec![0.0; m * n];
        gemm_nn(&a, &b, &mut c, m, k, n, false);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert_eq!(c[i * n + j], want);
            }
        }
        // aᵀ·b with a (k×m) read as m rows of k: c = (a as m×k)ᵀ · (b' as m×n)
        let bb: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.25).collect();
        let mut ct = vec![1.0; k * n];
        gemm_tn(&a, &bb, &mut ct, m, k, n, true);
        for p in 0..k {
            for j in 0..n {
                let want: f32 = 1.0 + (0..m).map(|i| a[i * k + p] * bb[i * n + j]).sum::<f32>();
                assert!((ct[p * n + j] - want).abs() < 1e-5);
            }
        }
    }

    /// The analytic gradient equals a central finite difference of the loss with the same noise.
    #[test]
    fn gradient_matches_finite_differences() {
        let (input, b) = (6, 5);
        let cfg = VaeConfig {
            hidden: 4,
            latent: 2,
            beta: 0.7,
            ..Default::default()
        };
        let mut vae = Vae::new(input, 2, cfg);
        // non-zero biases so that every block is exercised
        for (i, p) in vae.params.iter_mut().enumerate() {
            *p += 0.01 * ((i % 5) as f32 - 2.0);
        }
        let x = toy(b, input, 3);
        let mut w = Work::default();
        let seed = 42;
        let loss = |v: &Vae, w: &mut Work| -> f64 {
            let mut rng = Rng(seed);
            v.forward(&x, b, Some(&mut rng), w)
                .iter()
                .map(|&l| l as f64)
                .sum::<f64>()
                / b as f64
        };
        let mut rng = Rng(seed);
        vae.forward(&x, b, Some(&mut rng), &mut w);
        let mut g = vec![0.0; vae.params.len()];
        vae.backward(&x, b, &mut w, &mut g);
        let h = 1e-2f32;
        let mut worst = 0.0f64;
        for i in (0..vae.params.len()).step_by(3) {
            let p0 = vae.params[i];
            vae.params[i] = p0 + h;
            let up = loss(&vae, &mut w);
            vae.params[i] = p0 - h;
            let dn = loss(&vae, &mut w);
            vae.params[i] = p0;
            let num = (up - dn) / (2.0 * h as f64);
            let err = (num - g[i] as f64).abs() / (1e-2 + num.abs().max(g[i].abs() as f64));
            worst = worst.max(err);
        }
        assert!(worst < 2e-2, "worst relative gradient error {worst}");
    }

    #[test]
    fn training_lowers_the_validation_loss_and_is_reproducible() {
        let (d, lags, n) = (3, 2, 600);
        let z = toy(n + lags, d, 7);
        let win = windows(&z, n, d, lags);
        let input = (lags + 1) * d;
        let cfg = VaeConfig {
            hidden: 16,
            latent: 3,
            batch: 32,
            max_epochs: 30,
            ..Default::default()
        };
        let untrained = Vae::new(input, d, cfg.clone());
        let val = &win[(n - n / 10) * input..];
        let before = untrained.mean_loss(val, &mut Work::default());
        let vae = Vae::fit(&win, input, d, cfg.clone());
        assert!(
            vae.val_loss < 0.5 * before,
            "validation loss {} vs untrained {before}",
            vae.val_loss
        );
        assert_eq!(vae, Vae::fit(&win, input, d, cfg.clone()));
        // The benchmark cache returns the same network, and a different one for other windows.
        let dir = std::env::temp_dir().join(format!("rw-vae-cache-{}", std::process::id()));
        let cached = VaeConfig {
            cache_dir: Some(dir.clone()),
            ..cfg
        };
        let first = Vae::fit(&win, input, d, cached.clone());
        let again = Vae::fit(&win, input, d, cached.clone());
        assert_eq!(first.params, vae.params);
        assert_eq!(again.params, vae.params);
        assert_eq!(again.epochs, vae.epochs);
        let other = Vae::fit(&win[input..], input, d, cached);
        assert_ne!(other.params, vae.params);
        let _ = std::fs::remove_dir_all(dir);
        let e = vae.row_errors(&win);
        assert_eq!(e.len(), n * d);
        assert!(e.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
}
