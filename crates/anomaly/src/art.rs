//! Adaptive-resonance novelty (an ARTime-like signal, opt-in via
//! [`crate::StreamConfig::art`]).
//!
//! Idea (after ARTime, Hampton 2021, itself built on fuzzy ART by Carpenter & Grossberg): keep
//! a growing set of *category prototypes* of short windows of the series; a window that
//! *resonates* with a learned category (its match is at least the vigilance ρ) is familiar and
//! refines that prototype, a window that matches no category founds a new one and is novel.
//! Unlike a rank-calibrated residual, a repeated pattern stops being novel after one visit, and
//! "novel" is judged against the vigilance, not against the file's base rate of large values.
//!
//! Steps, all causal (the signal at row *t* uses rows ≤ *t* and, for its settings, the
//! probationary rows only when *t* is past them):
//!
//! 1. **Downsampling**: blocks of `s = max(1, round(k / (window · blocks_per_window)))` rows
//!    (`k` = probation), so a probation holds about `window · blocks_per_window` blocks whatever
//!    the sampling rate. A block's value is its row farthest from the running mean of earlier
//!    blocks (a one-row spike survives the downsampling, with its sign).
//! 2. **Normalization by the probation's range** `[lo, hi]`: `u = 0.25 + 0.5 (x − lo)/(hi − lo)`
//!    clamped to `[0, 1]` (values up to half a range beyond the probation stay distinct; ARTime
//!    uses the whole file's range, which NAB hands to detectors but which is not causal).
//!    Optionally quantized (`levels`) and snapped to the running median of earlier blocks when
//!    close to it (`chomp`), as ARTime does to make noise around the usual level look alike.
//! 3. **Features** of the last `window` blocks: their normalized values (level) and the same
//!    window min–max rescaled (shape), complement-coded (`[f, 1 − f]`), so `|I|` is constant.
//! 4. **Fuzzy ART** ([`FuzzyArt`]): choice `|I ∧ w| / (α + |w|)`, match `|I ∧ w| / |I|`;
//!    categories are searched in choice order, the first with match ≥ ρ learns
//!    (`w ← β (I ∧ w) + (1 − β) w`), else a new category `w = I` is created.
//! 5. **Vigilance per file** from the probation: the probation's windows are learned with
//!    ρ = `rho_init`; ρ is then the `rho_quantile` quantile of the best-match values (before
//!    learning) of the probation's second half, clamped to `[rho_init, rho_max]`: as
//!    demanding as the file's own familiar windows.
//! 6. **Signal** ([`ArtSignal`]): `1 − best match` of the window (before learning), emitted on
//!    the row that completes a block (0 on other rows and within the probation); whether a new
//!    category was founded; an ARTime-like *event* (a new category after at least
//!    `mask_blocks` resonating windows, the mask after a detection); and, on every row, the
//!    match of the *live* window (the block in progress included) without learning.
//!
//! How the signal enters the stream score is [`crate::stream::ArtMode`]; measured on the dev
//! split in docs/anomaly.md (round 6), off by default.

use serde::{Deserialize, Serialize};

/// Settings of the adaptive-resonance signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArtConfig {
    /// Blocks per feature window.
    pub window: usize,
    /// Target number of feature windows per probation (sets the block length).
    pub blocks_per_window: usize,
    /// Vigilance used while learning the probation.
    pub rho_init: f32,
    /// Quantile of the probation's best-match values that becomes the file's vigilance.
    pub rho_quantile: f32,
    /// Upper bound of the per-file vigilance.
    pub rho_max: f32,
    /// Learning rate of a resonating prototype (1 = fast learning).
    pub beta: f32,
    /// Choice parameter α.
    pub alpha: f32,
    /// Event masking (ARTime's "mask after a new category"): a new category is an *event*
    /// only after at least this many consecutive resonating windows; `0` = `1.5 · window`.
    pub mask_blocks: usize,
    /// Feature sets: `true` = the window's normalized values (level) are part of the input.
    pub use_level: bool,
    /// `true` = the window min–max rescaled (shape) is part of the input.
    pub use_shape: bool,
    /// Noise snap: a block value within `chomp` (in units of the normalized range, i.e. of
    /// half the probation's range) of the running median of earlier blocks is replaced by
    /// that median, so small wiggles around the usual level all look alike (0 = off).
    pub chomp: f32,
    /// Quantize normalized block values to this many levels per unit (0 = off).
    pub levels: usize,
}

impl Default for ArtConfig {
    fn default() -> Self {
        Self {
            window: 8,
            blocks_per_window: 13,
            rho_init: 0.8,
            rho_quantile: 0.5,
            rho_max: 0.97,
            beta: 0.1,
            alpha: 1e-3,
            mask_blocks: 0,
            use_level: true,
            use_shape: true,
            chomp: 0.0,
            levels: 0,
        }
    }
}

/// Fuzzy ART with complement-coded inputs.
#[derive(Clone, Debug, Default)]
pub struct FuzzyArt {
    /// Prototypes, each `2 · dim` long.
    pub weights: Vec<Vec<f32>>,
    /// Vigilance ρ: the least match at which an input resonates with a category.
    pub rho: f32,
    /// Learning rate of a resonating prototype.
    pub beta: f32,
    /// Choice parameter α (small: prefer the tightest fitting category).
    pub alpha: f32,
}

/// Result of presenting one input to [`FuzzyArt::learn`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resonance {
    /// Best match `|I ∧ w| / |I|` over the categories before learning (0 with none).
    pub best_match: f32,
    /// Whether a new category was founded (no category reached the vigilance).
    pub new_category: bool,
}

impl FuzzyArt {
    /// An empty network with vigilance `rho`, learning rate `beta`, choice parameter `alpha`.
    pub fn new(rho: f32, beta: f32, alpha: f32) -> Self {
        Self {
            weights: Vec::new(),
            rho,
            beta,
            alpha,
        }
    }

    /// Best match `|I ∧ w| / |I|` of `i` over the categories (0 with none); no learning.
    pub fn best_match(&self, i: &[f32]) -> f32 {
        let norm_i: f32 = i.iter().sum::<f32>().max(1e-12);
        self.weights
            .iter()
            .map(|w| i.iter().zip(w).map(|(a, b)| a.min(*b)).sum::<f32>() / norm_i)
            .fold(0.0f32, f32::max)
    }

    /// Present the complement-coded input `i`; learn it (resonance or a new category).
    pub fn learn(&mut self, i: &[f32]) -> Resonance {
        let norm_i: f32 = i.iter().sum::<f32>().max(1e-12);
        let mut cands: Vec<(f32, f32, usize)> = self
            .weights
            .iter()
            .enumerate()
            .map(|(j, w)| {
                let (mut and, mut nw) = (0.0f32, 0.0f32);
                for (a, b) in i.iter().zip(w) {
                    and += a.min(*b);
                    nw += b;
                }
                (and / (self.alpha + nw), and / norm_i, j)
            })
            .collect();
        let best_match = cands.iter().map(|c| c.1).fold(0.0f32, f32::max);
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        for &(_, m, j) in &cands {
            if m >= self.rho {
                let w = &mut self.weights[j];
                for (wk, &ik) in w.iter_mut().zip(i) {
                    *wk = self.beta * ik.min(*wk) + (1.0 - self.beta) * *wk;
                }
                return Resonance {
                    best_match,
                    new_category: false,
                };
            }
        }
        self.weights.push(i.to_vec());
        Resonance {
            best_match,
            new_category: true,
        }
    }
}

/// Per-row output of [`art_signal`] (0 / false within the probation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArtSignal {
    /// `1 − best match` of the window completed at this row (rows that complete a block only).
    pub deficit: Vec<f32>,
    /// The window completed at this row founded a new category.
    pub novel: Vec<bool>,
    /// Event score: on a new category after at least `mask_blocks` resonating windows,
    /// `1 − 0.001 · match / ρ` (in `[0.999, 1]`: deeper below the vigilance = higher); else 0.
    pub event: Vec<f32>,
    /// Every row: `1 − best match` of the *live* window ending at this row (the last
    /// `window − 1` complete blocks and the block in progress up to this row) against the
    /// prototypes learned so far, without learning; on block rows it equals `deficit`.
    pub live_deficit: Vec<f32>,
    /// Every row: the live window does not resonate (best match < the file's vigilance).
    pub live_novel: Vec<bool>,
}

impl ArtSignal {
    /// Prepend `m` rows without signal (for a signal computed on a series that starts `m` rows
    /// later, such as a seasonal difference).
    pub fn pad_front(&mut self, m: usize) {
        self.deficit.splice(0..0, std::iter::repeat_n(0.0, m));
        self.novel.splice(0..0, std::iter::repeat_n(false, m));
        self.event.splice(0..0, std::iter::repeat_n(0.0, m));
        self.live_deficit.splice(0..0, std::iter::repeat_n(0.0, m));
        self.live_novel.splice(0..0, std::iter::repeat_n(false, m));
    }
}

/// Downsampling and normalization state of [`art_signal`] (step 1–2 of the module docs).
struct Blocks<'a> {
    cfg: &'a ArtConfig,
    lo: f32,
    range: f32,
    /// Running mean of earlier block means (the reference for a block's extreme).
    mean: Option<f32>,
    /// Earlier block values, sorted (for the running median of `chomp`).
    sorted: Vec<f32>,
}

impl Blocks<'_> {
    /// Normalized value of the block `chunk` given the state (not updated).
    fn value(&self, chunk: &[f32]) -> (f32, f32) {
        let m = chunk.iter().sum::<f32>() / chunk.len() as f32;
        let c = self.mean.unwrap_or(m);
        let ext = chunk
            .iter()
            .copied()
            .max_by(|a, b| (a - c).abs().total_cmp(&(b - c).abs()))
            .unwrap_or(m);
        let mut u = (0.25 + 0.5 * (ext - self.lo) / self.range).clamp(0.0, 1.0);
        if self.cfg.levels > 0 {
            u = (u * self.cfg.levels as f32).round() / self.cfg.levels as f32;
        }
        if self.cfg.chomp > 0.0 && !self.sorted.is_empty() {
            let med = self.sorted[self.sorted.len() / 2];
            if (u - med).abs() < self.cfg.chomp {
                u = med;
            }
        }
        (u, m)
    }

    /// Close the block `chunk`: its value, and the state updated.
    fn close(&mut self, chunk: &[f32]) -> f32 {
        let (u, m) = self.value(chunk);
        self.mean = Some(self.mean.map_or(m, |prev| 0.5 * (prev + m)));
        let pos = self.sorted.partition_point(|&v| v < u);
        self.sorted.insert(pos, u);
        u
    }
}

/// Complement-coded features of a window of block values (step 3 of the module docs).
fn features(win: &[f32], cfg: &ArtConfig) -> Vec<f32> {
    let (mn, mx) = win
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let mut f: Vec<f32> = Vec::with_capacity(2 * win.len());
    if cfg.use_level || !cfg.use_shape {
        f.extend(win);
    }
    if cfg.use_shape {
        f.extend(
            win.iter()
                .map(|&x| if mx > mn { (x - mn) / (mx - mn) } else { 0.5 }),
        );
    }
    let mut out = f.clone();
    out.extend(f.iter().map(|x| 1.0 - x));
    out
}

/// Block length in rows for `k` probationary rows (step 1 of the module docs).
pub fn block_len(k: usize, cfg: &ArtConfig) -> usize {
    ((k as f64 / (cfg.window.max(2) * cfg.blocks_per_window.max(1)) as f64).round() as usize).max(1)
}

/// Per-row ART signal of `values` with `k` probationary rows (see [`ArtSignal`]). Causal: the
/// values at row *t* use rows ≤ *t* (and, past the probation, its range and vigilance).
pub fn art_signal(values: &[f32], k: usize, cfg: &ArtConfig) -> ArtSignal {
    let n = values.len();
    let mut out = ArtSignal {
        deficit: vec![0.0; n],
        novel: vec![false; n],
        event: vec![0.0; n],
        live_deficit: vec![0.0; n],
        live_novel: vec![false; n],
    };
    let w = cfg.window.max(2);
    let k = k.min(n);
    if k < 2 {
        return out;
    }
    let s = block_len(k, cfg);
    let (lo, hi) = values[..k]
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let mut st = Blocks {
        cfg,
        lo,
        range: if hi > lo { hi - lo } else { 1.0 },
        mean: None,
        sorted: Vec::new(),
    };
    let mask = if cfg.mask_blocks == 0 {
        (3 * w).div_ceil(2)
    } else {
        cfg.mask_blocks
    };
    let mut art = FuzzyArt::new(cfg.rho_init, cfg.beta, cfg.alpha);
    let mut blocks: Vec<f32> = Vec::with_capacity(n / s + 1);
    // Best matches of the probation's windows (the second half sets the vigilance).
    let mut prob_matches: Vec<f32> = Vec::new();
    let mut rho_set = false;
    let mut calm = mask; // consecutive resonating windows
    let mut start = 0; // first row of the block in progress
    for t in 0..n {
        let chunk = &values[start..=t];
        if chunk.len() == s {
            let u = st.close(chunk);
            blocks.push(u);
            start = t + 1;
            if blocks.len() < w {
                continue;
            }
            let r = art.learn(&features(&blocks[blocks.len() - w..], cfg));
            if t < k {
                prob_matches.push(r.best_match);
                continue;
            }
            if !rho_set {
                // The probation is over: the file's vigilance from its familiar windows.
                rho_set = true;
                let h = prob_matches.len() / 2;
                let half = &mut prob_matches[h..];
                if !half.is_empty() {
                    half.sort_by(f32::total_cmp);
                    let q = (cfg.rho_quantile.clamp(0.0, 1.0) * (half.len() - 1) as f32).round()
                        as usize;
                    art.rho = half[q].clamp(cfg.rho_init, cfg.rho_max);
                }
            }
            out.deficit[t] = 1.0 - r.best_match;
            out.novel[t] = r.new_category;
            out.live_deficit[t] = 1.0 - r.best_match;
            out.live_novel[t] = r.new_category;
            if r.new_category {
                if calm >= mask {
                    out.event[t] = 1.0 - 0.001 * (r.best_match / art.rho).min(1.0);
                }
                calm = 0;
            } else {
                calm += 1;
            }
        } else if t >= k && rho_set && blocks.len() + 1 >= w {
            let (u, _) = st.value(chunk);
            let mut win: Vec<f32> = blocks[blocks.len() + 1 - w..].to_vec();
            win.push(u);
            let m = art.best_match(&features(&win, cfg));
            out.live_deficit[t] = 1.0 - m;
            out.live_novel[t] = m < art.rho;
        }
    }
    out
}
