//! Adaptive resonance: a simple ARTime-like novelty signal ([`art_signal`], opt-in via
//! [`crate::StreamConfig::art`]) and the dual-vigilance detector ([`dual_vigilance_score`],
//! ARTime's mechanism rebuilt; max-combined with the stream score by default, see
//! [`crate::stream::ArtMode::DualMax`]).
//!
//! **Dual-vigilance detector** (after reading ARTime's published Julia code, written anew; every step causal except with the labelled diagnostic [`DvNorm::FileRangeNonCausal`]):
//!
//! 1. Blocks of `s = ⌊k / (window · windows_per_probation)⌋` rows (`k` = probation); a block's
//!    value is its maximum or minimum, whichever is farther from a running average of block
//!    means, replaced by the block mean unless it differs from it by ≥ `spike_frac · |mean|`.
//! 2. Normalized (default [`DvNorm::Expanding`]: the probation's range with a margin, widened to
//!    the range of all rows so far when they leave it, everything learned being mapped to the
//!    new scale), quantized to `levels` levels, and snapped to the running median level of all
//!    earlier blocks when within `chomp` of it.
//! 3. Features of the last `window` blocks: the Haar wavelet transform of the window min–max
//!    rescaled (then rescaled again) and the levels themselves; complement-coded.
//! 4. [`DualArt`]: similarity `M = (|I ∧ W|/|W|)³ · E²` with `E` the similarity of the latest
//!    level alone; every category with `M ≥ ρ_ub` learns fast; below that a new category, which
//!    is *novel* (a new cluster, a candidate event) only if the best `M < ρ_lb`.
//! 5. Vigilance: initially `ρ_lb = ρ_ub` from the probation ([`initial_vigilance`]); then every
//!    half probation (and `mask` windows after an event) `ρ_ub` = the running mean of all
//!    similarities (capped at 0.97), `ρ_lb` rises by 19 % of the gap toward the least similarity
//!    of the last half probation, or else falls by half the mean recent shortfall below `ρ_ub`
//!    but not below the mean similarity of past events.
//! 6. Events: a novel window after the probation, unless masked — within `mask` windows of the
//!    last event, or after a new cluster / vigilance update until `mask` windows in a row found
//!    no new cluster — in which case it must be well below the last event's similarity
//!    (× 0.9 / × 0.7). The score of an event is ARTime's confidence (see
//!    [`dual_vigilance_score`]), 0 on all other rows.
//!
//! **Simple ART signal** ([`art_signal`], opt-in):
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
//! split in docs/anomaly.md (history), off by default.

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

// ---------------------------------------------------------------------------------------------
// Dual-vigilance detector: a re-build of ARTime's mechanism as a detector of its own.
// ---------------------------------------------------------------------------------------------

/// How [`dual_vigilance_score`] maps raw values to `[0, 1]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DvNorm {
    /// The probation's range `[lo, hi]` with a margin `m` on each side
    /// ([`DualVigilanceConfig::margin`]): `u = (m + (x − lo)/(hi − lo)) / (1 + 2m)`, clamped.
    Probation,
    /// The running range of all rows so far (rows ≤ *t*), clamped by construction.
    Running,
    /// The range of [`DvNorm::Probation`] (with its margin), widened to the running range of
    /// all rows so far when they leave it; on each widening the learned prototypes, the feature
    /// window and the level histogram are mapped to the new scale, so that what was learned
    /// keeps its meaning (a causal stand-in for ARTime's whole-file range; default).
    #[default]
    Expanding,
    /// **Not causal — a diagnostic only, never for use**: the whole file's range, as ARTime
    /// gets it from NAB (`inputMin` / `inputMax`). Kept only so the cost of causality can be
    /// measured (docs/anomaly.md).
    FileRangeNonCausal,
}

/// Settings of [`dual_vigilance_score`] (defaults = ARTime's published settings where ARTime
/// has one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DualVigilanceConfig {
    /// Blocks per feature window (ARTime: 8).
    pub window: usize,
    /// Windows per probation: the block length is `⌊k / (window · this)⌋` rows (ARTime: 13).
    pub windows_per_probation: usize,
    /// Normalization ([`DvNorm`]).
    pub norm: DvNorm,
    /// Margin of [`DvNorm::Probation`], in units of the probation's range.
    pub margin: f32,
    /// A block's extreme is kept only if it differs from the block mean by at least this share
    /// of `|mean|` (else the block mean is used; ARTime: 0.1).
    pub spike_frac: f32,
    /// Quantization levels of a normalized block value (ARTime: 80; 0 = off).
    pub levels: usize,
    /// Noise snap: a block value within `chomp` of the running median of all earlier block
    /// levels becomes that median (ARTime: 0.075; 0 = off).
    pub chomp: f32,
    /// Shape features as the Haar wavelet transform of the min–max rescaled window, itself
    /// min–max rescaled (ARTime); `false` = the min–max rescaled window itself.
    pub wavelet: bool,
    /// Vigilance of the ART trained on the probation's windows (ordered from the least to the
    /// most typical) that sets the initial vigilance (ARTime: 0.8).
    pub rho_init: f32,
    /// Cap of the upper vigilance (ARTime: 0.97).
    pub rho_ub_cap: f32,
    /// Share of the gap by which the lower vigilance rises toward the least recent similarity
    /// (ARTime: 0.19).
    pub lb_rise: f32,
    /// Ongoing vigilance adaptation (ARTime: on); `false` = the initial vigilance throughout.
    pub adapt: bool,
    /// Dual vigilance (ARTime: on): a window between the two vigilances founds a category that
    /// is *not* novel; `false` = the lower vigilance is kept equal to the upper one.
    pub dual: bool,
    /// Masking: windows after a detection or a new cluster during which a new cluster is an
    /// event only if its similarity is well below the last event's (0 = `1.5 · window`).
    pub mask: usize,
    /// Masking on (ARTime: on).
    pub masking: bool,
}

impl Default for DualVigilanceConfig {
    fn default() -> Self {
        Self {
            window: 8,
            windows_per_probation: 13,
            norm: DvNorm::Expanding,
            margin: 0.5,
            spike_frac: 0.1,
            levels: 80,
            chomp: 0.075,
            wavelet: true,
            rho_init: 0.8,
            rho_ub_cap: 0.97,
            lb_rise: 0.19,
            adapt: true,
            dual: true,
            mask: 0,
            masking: true,
        }
    }
}

/// Dual-vigilance fuzzy ART with ARTime's similarity: for a category `W` and a
/// complement-coded input `I` (last uncoded feature = the latest level),
/// `M = (|I ∧ W| / |W|)³ · E²`, `E` = the complement-coded similarity of the latest level
/// alone ("energy"). Fast learning (`W ← I ∧ W`) of every category with `M ≥ ρ_ub`; else a
/// new category, which is *novel* (a new cluster) only if the best `M < ρ_lb`.
#[derive(Clone, Debug, Default)]
pub struct DualArt {
    /// Prototypes, each `2 · dim` long (complement-coded).
    pub weights: Vec<Vec<f32>>,
    /// Lower vigilance ρ_lb.
    pub rho_lb: f32,
    /// Upper vigilance ρ_ub.
    pub rho_ub: f32,
}

/// Result of presenting one input to [`DualArt::train`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DualResonance {
    /// Best similarity `M` over the categories before learning (0 with none).
    pub sim: f32,
    /// Energy `E` of the best category (0 with none).
    pub energy: f32,
    /// No category reached ρ_lb: a new cluster was founded.
    pub novel: bool,
}

impl DualArt {
    /// An empty network with both vigilances `rho`.
    pub fn new(rho: f32) -> Self {
        Self {
            weights: Vec::new(),
            rho_lb: rho,
            rho_ub: rho,
        }
    }

    /// `(M, E)` of the complement-coded input `i` against the prototype `w`.
    pub fn similarity(i: &[f32], w: &[f32]) -> (f32, f32) {
        let d = i.len() / 2;
        let (mut and, mut nw) = (0.0f32, 0.0f32);
        for (a, b) in i.iter().zip(w) {
            and += a.min(*b);
            nw += b;
        }
        let fs = and / if nw == 0.0 { 1e-3 } else { nw };
        let (l, lc) = (d - 1, 2 * d - 1);
        let we = w[l] + w[lc];
        let e = if we > 0.0 {
            (i[l].min(w[l]) + i[lc].min(w[lc])) / we
        } else {
            0.0
        };
        (fs * fs * fs * e * e, e)
    }

    /// Present the uncoded features `f` (complement coding is done here); learn.
    pub fn train(&mut self, f: &[f32]) -> DualResonance {
        let mut i = f.to_vec();
        i.extend(f.iter().map(|x| 1.0 - x));
        let sims: Vec<(f32, f32)> = self
            .weights
            .iter()
            .map(|w| Self::similarity(&i, w))
            .collect();
        let best = sims
            .iter()
            .enumerate()
            .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
        let (sim, energy) = best.map_or((0.0, 0.0), |(_, &s)| s);
        let mut resonated = false;
        for (j, &(m, _)) in sims.iter().enumerate() {
            if m >= self.rho_ub {
                resonated = true;
                for (wk, &ik) in self.weights[j].iter_mut().zip(&i) {
                    *wk = wk.min(ik);
                }
            }
        }
        let novel = !resonated && sim < self.rho_lb;
        if !resonated {
            self.weights.push(i);
        }
        DualResonance { sim, energy, novel }
    }
}

/// Haar wavelet transform of `x` (length a power of two; else as many levels as halve it):
/// `[approximation, coarsest detail, …, finest details]`.
pub fn haar(x: &[f32]) -> Vec<f32> {
    let mut a = x.to_vec();
    let mut details: Vec<Vec<f32>> = Vec::new();
    let s = std::f32::consts::FRAC_1_SQRT_2;
    while a.len() >= 2 && a.len().is_multiple_of(2) {
        let next: Vec<f32> = a.chunks(2).map(|p| (p[0] + p[1]) * s).collect();
        details.push(a.chunks(2).map(|p| (p[0] - p[1]) * s).collect());
        a = next;
    }
    for d in details.into_iter().rev() {
        a.extend(d);
    }
    a
}

/// Min–max rescale to `[0, 1]` (all zeros when constant).
fn rescale(x: &mut [f32]) {
    let mn = x.iter().copied().fold(f32::INFINITY, f32::min);
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = if mx > mn { (*v - mn) / (mx - mn) } else { 0.0 };
    }
}

/// Cosine similarity of two feature vectors (ARTime's convention for zero vectors).
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 {
        1.0 - nb
    } else if nb == 0.0 {
        1.0 - na
    } else {
        a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (na * nb)
    }
}

/// Initial vigilance from the probation's feature windows: order them from the least to the
/// most typical (sum of cosine similarities to the others), learn them in that order at
/// `rho_init`, and take the mean best similarity of the second half (the typical windows,
/// presented to a network that already knows the rest).
pub fn initial_vigilance(feats: &[Vec<f32>], rho_init: f32) -> f32 {
    let n = feats.len();
    if n == 0 {
        return rho_init;
    }
    let mut sum = vec![0.0f32; n];
    for a in 0..n {
        for b in 0..n {
            sum[a] += if a == b {
                1.0
            } else {
                cosine(&feats[a], &feats[b])
            };
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| sum[a].total_cmp(&sum[b]));
    let mut art = DualArt::new(rho_init);
    let sims: Vec<f32> = order.iter().map(|&j| art.train(&feats[j]).sim).collect();
    let tail = &sims[n / 2..];
    tail.iter().sum::<f32>() / tail.len() as f32
}

/// State of the dual-vigilance detector's vigilance adaptation and masking.
struct DvState {
    /// Running mean of all similarities (the upper vigilance follows it).
    sim_sum: f64,
    sim_n: usize,
    /// Last `tw / 2 + 1` similarities (initialised to 1).
    recent: std::collections::VecDeque<f32>,
    /// Last `tw + 1` values of `ρ_ub − M` (initialised to 0).
    gaps: std::collections::VecDeque<f32>,
    last_event: Option<usize>,
    last_event_sim: f32,
    event_sims: Vec<f32>,
    last_update: usize,
    mask_after_cat: bool,
    calm: usize,
}

/// ARTime-like detector score per row (module docs of [`crate::art`]): non-zero only
/// on the row that completes a block and holds an event, where it is ARTime's confidence
/// `0.35 (ρ_ub − M)/(1 − M) + 0.65 (ρ_lb − M)/(1 − M) + 1.5 (1 − E)`, capped at 1. `k` =
/// probationary rows (no score there). Causal unless `norm` is
/// [`DvNorm::FileRangeNonCausal`].
pub fn dual_vigilance_score(values: &[f32], k: usize, cfg: &DualVigilanceConfig) -> Vec<f32> {
    let n = values.len();
    let mut out = vec![0.0f32; n];
    let w = cfg.window.max(2);
    let k = k.min(n);
    if k < 2 {
        return out;
    }
    let s = (k / (w * cfg.windows_per_probation.max(1))).max(1);
    let tw = k / s; // blocks in the probation
    let mask = if cfg.mask == 0 { (3 * w) / 2 } else { cfg.mask };
    let range_of = |v: &[f32]| {
        v.iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            })
    };
    let (plo, phi) = range_of(&values[..k]);
    // The whole file's range: only for the non-causal diagnostic.
    let (flo, fhi) = if cfg.norm == DvNorm::FileRangeNonCausal {
        range_of(values)
    } else {
        (0.0, 1.0)
    };
    let (mut rlo, mut rhi) = (f32::INFINITY, f32::NEG_INFINITY);
    let levels = cfg.levels;
    let mut hist = vec![0usize; levels + 1];
    let mut n_levels = 0usize;
    let mut moving: Option<f32> = None;
    let mut fwin: std::collections::VecDeque<f32> = std::collections::VecDeque::new();
    let mut prob_feats: Vec<Vec<f32>> = Vec::new();
    let mut art = DualArt::new(cfg.rho_init);
    let mut st = DvState {
        sim_sum: 0.0,
        sim_n: 0,
        recent: std::iter::repeat_n(1.0, tw / 2 + 1).collect(),
        gaps: std::iter::repeat_n(0.0, tw + 1).collect(),
        last_event: None,
        last_event_sim: 0.0,
        event_sims: Vec::new(),
        last_update: 0,
        mask_after_cat: false,
        calm: 0,
    };
    let mut dsi = 0usize; // blocks closed so far
                          // Current scale `(lo, hi)` of [`DvNorm::Expanding`].
    let mut scale: Option<(f32, f32)> = None;
    for t in 0..n {
        rlo = rlo.min(values[t]);
        rhi = rhi.max(values[t]);
        if (t + 1) % s != 0 {
            continue;
        }
        // 1. Downsample the block ending at t.
        let chunk = &values[t + 1 - s..=t];
        let mean = chunk.iter().sum::<f32>() / s as f32;
        let (mn, mx) = range_of(chunk);
        let avg = moving.map_or(mean, |m| 0.5 * (m + mean));
        moving = Some(avg);
        let mut ds = if (mx - avg).abs() < (mn - avg).abs() {
            mn
        } else {
            mx
        };
        if (ds - mean).abs() < cfg.spike_frac * mean.abs() {
            ds = mean;
        }
        // 2. Normalize, quantize, snap to the running median level.
        let (lo, hi, m) = match cfg.norm {
            DvNorm::Probation => (plo, phi, cfg.margin.max(0.0)),
            DvNorm::Running => (rlo, rhi, 0.0),
            DvNorm::FileRangeNonCausal => (flo, fhi, 0.0),
            DvNorm::Expanding => {
                let pspan = if phi > plo { phi - plo } else { 1.0 };
                let mg = cfg.margin.max(0.0) * pspan;
                let (l1, h1) = ((plo - mg).min(rlo), (phi + mg).max(rhi));
                if let Some((l0, h0)) = scale.filter(|&(l0, h0)| (l0, h0) != (l1, h1)) {
                    let a = (h0 - l0) / (h1 - l1);
                    let b = (l0 - l1) / (h1 - l1);
                    rescale_levels(&mut art, &mut fwin, &mut hist, w, a, b);
                }
                scale = Some((l1, h1));
                (l1, h1, 0.0)
            }
        };
        let span = if hi > lo { hi - lo } else { 1.0 };
        let mut u = ((m + (ds - lo) / span) / (1.0 + 2.0 * m)).clamp(0.0, 1.0);
        if levels > 0 {
            let lv = (u * levels as f32).round() as usize;
            u = lv as f32 / levels as f32;
            hist[lv.min(levels)] += 1;
            n_levels += 1;
            if cfg.chomp > 0.0 {
                let mut acc = 0;
                let mut med = 0;
                for (b, &c) in hist.iter().enumerate() {
                    acc += c;
                    if acc * 2 >= n_levels {
                        med = b;
                        break;
                    }
                }
                let med = med as f32 / levels as f32;
                if (u - med).abs() < cfg.chomp {
                    u = med;
                }
            }
        }
        fwin.push_back(u);
        if fwin.len() > w {
            fwin.pop_front();
        }
        dsi += 1;
        // 3. Features of the last `w` blocks: shape (wavelet) and levels.
        let feats = (fwin.len() == w).then(|| {
            let lv: Vec<f32> = fwin.iter().copied().collect();
            let mut shape = lv.clone();
            rescale(&mut shape);
            if cfg.wavelet {
                shape = haar(&shape);
                rescale(&mut shape);
            }
            shape.extend(&lv);
            shape
        });
        if dsi <= tw {
            if let Some(f) = feats {
                prob_feats.push(f);
            }
            if dsi == tw {
                // End of the probation: initial vigilance, then learn its windows in order.
                let rho = initial_vigilance(&prob_feats, cfg.rho_init);
                art.rho_lb = rho;
                art.rho_ub = rho;
                for _ in 0..w - 1 {
                    // The blocks before the first full window (ARTime scores them as 0).
                    dv_step(&mut st, &mut art, None, 0, tw, mask, cfg);
                }
                for (j, f) in prob_feats.iter().enumerate() {
                    dv_step(&mut st, &mut art, Some(f), w + j, tw, mask, cfg);
                }
            }
            continue;
        }
        if let Some(f) = feats {
            out[t] = dv_step(&mut st, &mut art, Some(&f), dsi, tw, mask, cfg);
        }
    }
    out
}

/// Map everything learned in normalized units by `u ← a u + b` ([`DvNorm::Expanding`]): the
/// level part of every prototype (a box `[f, 1 − c]` maps to `[a f + b, a (1 − c) + b]`), the
/// feature window's levels and the level histogram (re-binned).
fn rescale_levels(
    art: &mut DualArt,
    fwin: &mut std::collections::VecDeque<f32>,
    hist: &mut [usize],
    w: usize,
    a: f32,
    b: f32,
) {
    let d = 2 * w;
    for p in &mut art.weights {
        for j in w..d {
            p[j] = (a * p[j] + b).clamp(0.0, 1.0);
            p[d + j] = (1.0 - (a * (1.0 - p[d + j]) + b)).clamp(0.0, 1.0);
        }
    }
    let levels = hist.len().saturating_sub(1);
    for u in fwin.iter_mut() {
        *u = a * *u + b;
        if levels > 0 {
            *u = (*u * levels as f32).round() / levels as f32;
        }
    }
    if levels > 0 {
        let old = hist.to_vec();
        hist.iter_mut().for_each(|c| *c = 0);
        for (bin, &c) in old.iter().enumerate() {
            let u = a * bin as f32 / levels as f32 + b;
            hist[((u * levels as f32).round() as usize).min(levels)] += c;
        }
    }
}

/// One window of the dual-vigilance detector (`i` = 1-based block index, `tw` = probation
/// blocks): learn, decide on an event (its confidence, else 0), adapt the vigilance.
fn dv_step(
    st: &mut DvState,
    art: &mut DualArt,
    f: Option<&Vec<f32>>,
    i: usize,
    tw: usize,
    mask: usize,
    cfg: &DualVigilanceConfig,
) -> f32 {
    let since = st.last_event.map_or(i, |e| i - e);
    let update_after_event = since == mask;
    let update_for_trend = i - st.last_update.min(i) >= tw / 2;
    let mask_after_event = since <= mask;
    if i > tw + mask && st.mask_after_cat && st.calm >= mask {
        st.mask_after_cat = false;
    }
    let r = match f {
        Some(f) => art.train(f),
        None => DualResonance {
            sim: 0.0,
            energy: 0.0,
            novel: true,
        },
    };
    st.calm = if r.novel { 0 } else { st.calm + 1 };
    st.sim_sum += r.sim as f64;
    st.sim_n += 1;
    st.recent.pop_front();
    st.recent.push_back(r.sim);
    st.gaps.pop_front();
    st.gaps.push_back(art.rho_ub - r.sim);
    if since < mask {
        if let Some(last) = st.event_sims.last_mut() {
            *last = last.min(r.sim);
        }
    }
    let masking = cfg.masking && (st.mask_after_cat || mask_after_event);
    let scale = if mask_after_event { 0.9 } else { 0.7 };
    let below_last = r.sim < st.last_event_sim * scale;
    let mut score = 0.0;
    if f.is_some() && i > tw && r.novel && (!masking || below_last) {
        let fs = r.sim.min(0.999);
        let ub = (art.rho_ub - fs) / (1.0 - fs);
        let lb = (art.rho_lb - fs) / (1.0 - fs);
        score = (0.35 * ub + 0.65 * lb + 1.5 * (1.0 - r.energy)).min(1.0);
        st.event_sims.push(r.sim);
        st.last_event_sim = r.sim;
        st.last_event = Some(i);
    }
    if f.is_some() {
        st.mask_after_cat |= r.novel;
    }
    if cfg.adapt && i > tw && (update_after_event || update_for_trend) {
        let min_recent = st.recent.iter().copied().fold(f32::INFINITY, f32::min);
        let ub = ((st.sim_sum / st.sim_n.max(1) as f64) as f32).min(cfg.rho_ub_cap);
        let prev = art.rho_lb;
        let mut lb = if prev <= min_recent {
            prev + (min_recent - prev) * cfg.lb_rise
        } else {
            let mut decr = 0.0f32;
            if i > 2 * tw {
                let below: Vec<f32> = st
                    .gaps
                    .iter()
                    .filter(|&&g| g > 0.05)
                    .map(|&g| g.min(0.37))
                    .collect();
                if !below.is_empty() {
                    decr = below.iter().sum::<f32>() / below.len() as f32;
                }
            }
            let mut lb = prev - decr.max(0.01) / 2.0;
            if !st.event_sims.is_empty() {
                let m = st.event_sims.iter().sum::<f32>() / st.event_sims.len() as f32;
                lb = lb.max(m);
            }
            lb
        };
        lb = lb.min(ub);
        art.rho_ub = ub;
        art.rho_lb = if cfg.dual { lb } else { ub };
        st.last_update = i;
        st.mask_after_cat = true;
    }
    score
}
