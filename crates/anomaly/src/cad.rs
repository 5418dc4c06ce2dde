//! Contextual novelty: a small, causal re-design of the idea behind the Contextual Anomaly
//! Detector (CAD OSE, Smirnov & Schmidt).
//!
//! The AR residual and the level-shift statistic of [`crate::stream`] say *how large* a value
//! or a change is; mapped through their rank they fire on ≈ 0.3 % of the rows of any file,
//! noise included, because some row is always in the top 0.15 %. Contextual novelty asks a
//! different question: *has this short pattern been seen before?* In stationary noise the
//! dictionary of patterns fills up and the answer is almost always "yes"; when the dynamics
//! change (a new level, a spike to an unseen bucket, a transition that never happened) the
//! answer is "no" for many contexts at once.
//!
//! Steps, for each row `t` (only rows ≤ `t` and the probationary prefix are used):
//!
//! 1. **Value bucket**: the value is quantized on a grid of `2^bits` buckets over the
//!    probationary rows' 5th–95th percentile range (the same prefix the AR model is fitted
//!    on), continued with the same width beyond it (see `Quantizer`). The buckets are read at `bits` resolutions (the
//!    top 1, 2, …, `bits` bits of the bucket index), so a pattern can be familiar at a coarse
//!    resolution and new at a fine one.
//! 2. **Contexts**: at each resolution, the words `(s_{t−m}, …, s_t)` for orders
//!    `m = 0..=max_order` (order 0 is the bucket alone).
//! 3. **Novelty**: a word counts only if its prefix `(s_{t−m}, …, s_{t−1})` was seen at least
//!    `min_prefix_count` times before — the context is familiar, so a continuation is
//!    "predicted" (order 0 has an empty prefix and always counts). The score is the share of
//!    the counting words that were never seen before; then all words of row `t` are added to
//!    the dictionary. The score is in `[0, 1]` and means the same in every file.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Settings of [`contextual_novelty`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NoveltyConfig {
    /// Finest resolution: `2^bits` buckets over the probationary range (1..=3).
    pub bits: u32,
    /// Longest context: words of `max_order + 1` buckets (0..=6).
    pub max_order: usize,
    /// A word counts only if its prefix had been seen at least this many times before its
    /// occurrence that ends at row `t − 1`.
    pub min_prefix_count: u32,
    /// Buckets continue beyond the probationary range (see `Quantizer`).
    pub grid_unbounded: bool,
    /// Unbounded grid: its range is the probation's `[q, 1 − q]` quantile range.
    pub range_quantile: f32,
}

impl Default for NoveltyConfig {
    fn default() -> Self {
        Self {
            bits: 3,
            max_order: 6,
            min_prefix_count: 1,
            grid_unbounded: true,
            range_quantile: 0.05,
        }
    }
}

/// Quantizer fitted on the probationary rows. Bounded (`grid_unbounded = false`, the CAD OSE
/// way but with the probation's range instead of the whole file's): `2^bits` equal-width
/// buckets between their minimum and maximum, one symbol below and one above. Unbounded (the
/// default): buckets of width (`[q, 1 − q]` quantile range) / `2^bits` continue beyond the
/// range, so a new level far away gets a new symbol instead of sharing "above" with every
/// earlier excursion, and one outlier in the probation does not squash the grid.
struct Quantizer {
    lo: f64,
    step: f64,
    buckets: i64,
    unbounded: bool,
}

impl Quantizer {
    fn fit(prefix: &[f32], bits: u32, unbounded: bool, range_quantile: f64) -> Self {
        let mut v: Vec<f64> = prefix
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let buckets = 1i64 << bits;
        let (lo, hi) = match (v.first(), v.last()) {
            (Some(&a), Some(&b)) if unbounded => {
                let f = range_quantile.clamp(0.0, 0.49);
                let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
                let (l, h) = (q(f), q(1.0 - f));
                if h > l {
                    (l, h)
                } else {
                    (a, b)
                }
            }
            (Some(&a), Some(&b)) => (a, b),
            _ => (0.0, 0.0),
        };
        let width = if hi > lo { hi - lo } else { 1.0 };
        Self {
            lo,
            step: width / buckets as f64,
            buckets,
            unbounded,
        }
    }

    /// Symbol of `x`: 0..buckets inside the range; bounded: −1 below, `buckets` above;
    /// unbounded: the bucket index (clamped to ±30000).
    fn symbol(&self, x: f32) -> i64 {
        let x = x as f64;
        if !x.is_finite() {
            return LIMIT;
        }
        let b = ((x - self.lo) / self.step)
            .floor()
            .clamp(-LIMIT as f64, LIMIT as f64) as i64;
        if self.unbounded {
            b
        } else {
            b.clamp(-1, self.buckets)
        }
    }
}

/// Largest symbol magnitude (16 bits per symbol in a word key).
const LIMIT: i64 = 30_000;

/// Symbol `s` (fine resolution) read at resolution `r` of `bits`: the bucket index divided by
/// `2^(bits − r)` (floor); the out-of-range symbols of the bounded grid stay distinct.
fn coarse(s: i64, r: u32, bits: u32, q: &Quantizer) -> i64 {
    if !q.unbounded && (s < 0 || s >= q.buckets) {
        return s;
    }
    s.div_euclid(1 << (bits - r))
}

/// Contextual novelty score of every row of `values` (module docs); `k` = probationary rows
/// (the quantizer's range). Causal: the score of row `t` depends on rows ≤ `t` and on the
/// probationary prefix only.
pub fn contextual_novelty(values: &[f32], k: usize, cfg: &NoveltyConfig) -> Vec<f32> {
    let bits = cfg.bits.clamp(1, 3);
    let max_order = cfg.max_order.min(6);
    let q = Quantizer::fit(
        &values[..k.min(values.len())],
        bits,
        cfg.grid_unbounded,
        cfg.range_quantile as f64,
    );
    let sym: Vec<i64> = values.iter().map(|&x| q.symbol(x)).collect();
    // Word key: 16 bits per symbol (offset by 2^15), then the order (3 bits) and the
    // resolution (2 bits); words of at most 7 symbols fit in 117 bits, so keys are exact.
    let key = |t: usize, m: usize, r: u32| -> u128 {
        let mut h = 0u128;
        for &s in &sym[t - m..=t] {
            h = (h << 16) | (coarse(s, r, bits, &q) + 32_768) as u128;
        }
        (h << 5) | ((m as u128) << 2) | r as u128
    };
    let mut counts: HashMap<u128, u32> = HashMap::new();
    let mut out = Vec::with_capacity(values.len());
    for t in 0..values.len() {
        let (mut counted, mut novel) = (0u32, 0u32);
        let mut words = Vec::with_capacity(bits as usize * (max_order + 1));
        for r in 1..=bits {
            for m in 0..=max_order.min(t) {
                let w = key(t, m, r);
                words.push(w);
                // The prefix ended at row t − 1, whose words are already counted: it was
                // seen `count − 1` times before that occurrence.
                let familiar = m == 0
                    || counts.get(&key(t - 1, m - 1, r)).copied().unwrap_or(0)
                        > cfg.min_prefix_count;
                if familiar {
                    counted += 1;
                    if !counts.contains_key(&w) {
                        novel += 1;
                    }
                }
            }
        }
        out.push(if counted == 0 {
            0.0
        } else {
            novel as f32 / counted as f32
        });
        for w in words {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    out
}
