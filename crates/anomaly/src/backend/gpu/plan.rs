//! Batch planning for the GPU kernels: work-item tables, buffer sizes, and the split of a
//! host batch into sub-batches that respect the device limits. Pure CPU code (tested without
//! a device).

use crate::backend::{BackendError, FitJob, ResidualJob, Series, StreamJob};

/// Edge of a cross-product tile (`cross_products.wgsl`: `T`).
pub const TILE: usize = 64;
/// Floats per cross-product work item: a tile and the column sums of its row range.
pub const ENTRY: usize = TILE * TILE + TILE;
/// Rows per cross-product partial sum (accumulated in f32 registers, then summed pairwise).
/// 256 rows keep the in-register sum short (error ∝ √256 · ε in the typical case) while a
/// week of minutes (10,080 rows) still gives 40 chunks of parallel work per tile.
pub const CHUNK_ROWS: usize = 256;
/// Rows and metrics per residual workgroup (`residuals.wgsl`: `TR`, `TM`).
pub const RES_ROWS: usize = 64;
pub const RES_METRICS: usize = 16;
/// Threads per workgroup of the reduction pass.
pub const REDUCE_GROUP: usize = 256;
/// Alignment of every region in the upload buffer (≥ copy and map alignment).
pub const ALIGN: u64 = 256;

/// Device limits that shape batches (bytes, except `groups_per_dim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest storage binding (and so storage buffer) we use.
    pub binding: u64,
    /// Largest buffer we create (upload and readback staging).
    pub buffer: u64,
    /// Workgroups per dispatch dimension.
    pub groups_per_dim: u32,
}

impl Limits {
    /// From the device limits, capped at `cap` bytes per buffer.
    pub fn new(max_binding: u64, max_buffer: u64, groups_per_dim: u32, cap: u64) -> Self {
        // Keep offsets inside u32 float indices and sizes aligned.
        let cap = cap.min(u32::MAX as u64 & !(ALIGN - 1));
        let buffer = max_buffer.min(cap) & !(ALIGN - 1);
        Limits {
            binding: max_binding.min(buffer) & !(ALIGN - 1),
            buffer,
            groups_per_dim: groups_per_dim.max(1),
        }
    }

    /// Most workgroups one 2-D dispatch can cover.
    pub fn max_groups(&self) -> u64 {
        self.groups_per_dim as u64 * self.groups_per_dim as u64
    }
}

pub fn align(b: u64, a: u64) -> u64 {
    b.div_ceil(a) * a
}

/// Floats rounded up to a multiple of 4 (16-byte job offsets).
fn floats4(n: usize) -> u64 {
    align(n as u64, 4)
}

/// What one host needs, in bytes per buffer and in workgroups per pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Need {
    pub z: u64,
    /// Weights (or, in scoring, the resident models: weights, bias, scales).
    pub w: u64,
    pub part: u64,
    /// Residuals kept on the device (training), energies (scoring).
    pub resid: u64,
    pub out: u64,
    pub jobs: u64,
    pub items: u64,
    pub pairs: u64,
    /// Device training: reduced Gram tiles, the f64 solve scratch, scores and sort keys, and
    /// every work table and parameter block (one buffer).
    pub red: u64,
    pub solve: u64,
    pub sk: u64,
    pub tables: u64,
    /// Bytes this host adds to the upload buffer.
    pub staged: u64,
    /// Workgroups of the main pass.
    pub groups: u64,
    /// Workgroups of the reduction pass (cross products only).
    pub reduce_groups: u64,
}

/// Alignment slack the regions of one upload may add (at most 16 regions).
const UPLOAD_SLACK: u64 = 16 * ALIGN;

impl Need {
    fn fields(&mut self) -> [&mut u64; 15] {
        [
            &mut self.z,
            &mut self.w,
            &mut self.part,
            &mut self.resid,
            &mut self.out,
            &mut self.jobs,
            &mut self.items,
            &mut self.pairs,
            &mut self.red,
            &mut self.solve,
            &mut self.sk,
            &mut self.tables,
            &mut self.staged,
            &mut self.groups,
            &mut self.reduce_groups,
        ]
    }

    pub fn add(&mut self, o: &Need) {
        let mut o = *o;
        for (a, b) in self.fields().into_iter().zip(o.fields()) {
            *a += *b;
        }
    }

    /// The larger of each field (buffers that serve several sub-batches in turn).
    pub fn max(&mut self, o: &Need) {
        let mut o = *o;
        for (a, b) in self.fields().into_iter().zip(o.fields()) {
            *a = (*a).max(*b);
        }
    }

    /// Bytes of the upload buffer: every input region, plus the regions' alignment.
    pub fn upload(&self) -> u64 {
        self.staged + UPLOAD_SLACK
    }

    /// The first limit this need breaks: `(what, bytes, limit)`.
    fn exceeds(&self, lim: &Limits) -> Option<(&'static str, u64, u64)> {
        let bound = [
            ("lag-window series", self.z, lim.binding),
            ("predictor weights", self.w, lim.binding),
            ("partial cross products", self.part, lim.binding),
            ("training residuals", self.resid, lim.binding),
            ("results", self.out, lim.binding),
            ("work-item table", self.items, lim.binding),
            ("reduced cross products", self.red, lim.binding),
            ("solve scratch", self.solve, lim.binding),
            ("calibration scores", self.sk, lim.binding),
            ("work tables", self.tables + UPLOAD_SLACK, lim.binding),
            ("upload staging", self.upload(), lim.buffer),
            (
                "workgroups (x 4 KiB)",
                self.groups.max(self.reduce_groups) * 4096,
                lim.max_groups() * 4096,
            ),
        ];
        bound.into_iter().find(|(_, b, l)| b > l)
    }
}

/// Shape of one host's cross-product work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossShape {
    /// Window width `(lags + 1) · d`.
    pub m: usize,
    pub tiles: usize,
    pub pairs: usize,
    pub chunks: usize,
}

impl CrossShape {
    pub fn of(s: &Series<'_>) -> Self {
        Self::new(s.n, s.d, s.lags)
    }

    /// `n` design rows of `d` metrics with `lags` history rows.
    pub fn new(n: usize, d: usize, lags: usize) -> Self {
        let m = (lags + 1) * d;
        let tiles = m.div_ceil(TILE);
        CrossShape {
            m,
            tiles,
            pairs: tiles * (tiles + 1) / 2,
            chunks: n.div_ceil(CHUNK_ROWS).max(1),
        }
    }

    pub fn items(&self) -> usize {
        self.pairs * self.chunks
    }

    /// Index of tile pair `(ti, tj)`, `ti <= tj`, in row-major upper-triangle order.
    pub fn pair_index(&self, ti: usize, tj: usize) -> usize {
        debug_assert!(ti <= tj && tj < self.tiles);
        ti * self.tiles - ti * (ti + 1) / 2 + tj
    }

    pub fn need(&self, s: &Series<'_>) -> Need {
        let items = self.items() as u64;
        let z = floats4(s.len()) * 4;
        Need {
            z,
            part: items * ENTRY as u64 * 4,
            out: self.pairs as u64 * ENTRY as u64 * 4,
            jobs: 16,
            items: items * 16,
            pairs: self.pairs as u64 * 16,
            staged: z + 16 + items * 16 + self.pairs as u64 * 16,
            groups: items,
            reduce_groups: (self.pairs * ENTRY).div_ceil(REDUCE_GROUP) as u64,
            ..Need::default()
        }
    }
}

/// What one host needs for the residual pass.
pub fn residual_need(j: &ResidualJob<'_>) -> Need {
    let s = j.series;
    let groups = (s.n.div_ceil(RES_ROWS) * s.d.div_ceil(RES_METRICS)) as u64;
    let (z, w) = (floats4(s.len()) * 4, floats4(s.lags * s.d * s.d + s.d) * 4);
    Need {
        z,
        w,
        out: floats4(s.n * s.d) * 4,
        jobs: 32,
        items: groups * 16,
        staged: z + w + 32 + groups * 16,
        groups,
        ..Need::default()
    }
}

/// Elements per workgroup of the standardizing pass (`standardize.wgsl`: 256 threads × 4).
pub const STD_BLOCK: usize = 1024;
/// Rows per chunk of the standardizing statistics (`standardize.wgsl`: `SROWS`).
pub const STATS_ROWS: usize = 256;
/// Words of a device-training host record (`train_common.wgsl`: `Host`) and its f64 settings.
pub const HOST_WORDS: usize = 24;
pub const HOSTF_BYTES: u64 = 16;
/// Words in front of a host's training summary (status, finite, ring, upper-tail length).
pub const SUMMARY_HEADER: usize = 4;

/// Where the parts of one host's device-training summary start (words from its offset), in
/// the order of `train_common.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub mean: usize,
    pub inv_std: usize,
    pub weights: usize,
    pub bias: usize,
    pub inv_scale: usize,
    pub ema: usize,
    pub history: usize,
    pub ring: usize,
    pub upper: usize,
    /// Room for the drift guard's scores and the upper tail; total words.
    pub ring_cap: usize,
    pub upper_cap: usize,
    pub words: usize,
}

impl Summary {
    pub fn of(j: &FitJob<'_>) -> Self {
        let (d, lags) = (j.d, j.lags);
        let mean = SUMMARY_HEADER;
        let inv_std = mean + d;
        let weights = inv_std + d;
        let bias = weights + lags * d * d;
        let inv_scale = bias + d;
        let ema = inv_scale + d;
        let history = ema + d;
        let ring = history + lags * d;
        let ring_cap = j.ring_len();
        let upper = ring + ring_cap;
        // The tail is longest when every score is finite (it grows with the finite count).
        let upper_cap = j.n - j.tail_start(j.n);
        Summary {
            mean,
            inv_std,
            weights,
            bias,
            inv_scale,
            ema,
            history,
            ring,
            upper,
            ring_cap,
            upper_cap,
            words: upper + upper_cap,
        }
    }
}

/// What one host needs for a whole device training ([`crate::backend::Backend::fit_device`]).
pub fn fit_need(j: &FitJob<'_>) -> Need {
    let (n, d, lags) = (j.n, j.d, j.lags);
    let shape = CrossShape::new(n, d, lags);
    let items = shape.items() as u64;
    let f = j.features() as u64;
    let blocks = (n * d).div_ceil(STD_BLOCK) as u64;
    let chunks = n.div_ceil(STATS_ROWS) as u64;
    let rblocks = n.div_ceil(RES_ROWS);
    let rgroups = (rblocks * d.div_ceil(RES_METRICS)) as u64;
    let z = floats4((n + lags) * d) * 4;
    let tables = HOST_WORDS as u64 * 4
        + HOSTF_BYTES
        + 16
        + items * 16
        + shape.pairs as u64 * 16
        + blocks * 8
        + chunks * 8
        + 32
        + rgroups * 16;
    Need {
        z,
        w: floats4(lags * d * d + d) * 4,
        part: items * ENTRY as u64 * 4,
        // The residuals, then their sums of squares per 64-row block.
        resid: (floats4(n * d) + floats4(rblocks * d)) * 4,
        out: floats4(Summary::of(j).words) * 4,
        red: shape.pairs as u64 * ENTRY as u64 * 4,
        // The scratch-buffer solve's A and B, then each chunk's mean and squared deviations.
        solve: align((f * f + f * d as u64 + 2 * chunks * d as u64) * 8, 16),
        sk: floats4(n + n.next_power_of_two()) * 4,
        tables,
        staged: z + tables,
        groups: items.max(blocks).max(rgroups).max(chunks).max(1),
        reduce_groups: (shape.pairs * ENTRY).div_ceil(REDUCE_GROUP) as u64,
        ..Need::default()
    }
}

/// Words of one host's scoring results: each row's score and `k` (metric, share) pairs, then
/// the `d` moving averages.
pub fn stream_words(n: usize, d: usize, k: usize) -> usize {
    n * (1 + 2 * k) + d
}

/// Floats of a resident model: weights, bias, residual scales.
pub fn model_len(d: usize, lags: usize) -> usize {
    lags * d * d + 2 * d
}

/// What one host needs for a scoring run ([`crate::backend::Backend::score_stream`]); its
/// model counts in full (whether it is uploaded or already resident).
pub fn stream_need(j: &StreamJob<'_>, top_k: usize) -> Need {
    let s = j.series;
    let groups = (s.n.div_ceil(RES_ROWS) * s.d.div_ceil(RES_METRICS)) as u64;
    let z = floats4(s.len()) * 4 + floats4(s.d) * 4;
    let w = floats4(model_len(s.d, s.lags)) * 4;
    let tables = 32 + groups * 16 + 32;
    Need {
        z,
        w,
        resid: floats4(s.n * s.d) * 4,
        out: floats4(stream_words(s.n, s.d, top_k.min(s.d))) * 4,
        tables,
        staged: z + w + tables,
        groups,
        ..Need::default()
    }
}

/// Split hosts (by their needs; `None` = nothing to run on the device) into sub-batches that
/// each fit `lim`, in order. A host that does not fit alone gets its `TooLarge` error.
pub fn split(
    needs: &[Option<Need>],
    lim: &Limits,
) -> (Vec<Vec<usize>>, Vec<(usize, BackendError)>) {
    split_target(needs, lim, u64::MAX)
}

/// [`split`], also closing a sub-batch once its staged bytes would pass `target` (a pipeline
/// fills one sub-batch while the device runs the previous one).
pub fn split_target(
    needs: &[Option<Need>],
    lim: &Limits,
    target: u64,
) -> (Vec<Vec<usize>>, Vec<(usize, BackendError)>) {
    let mut batches = Vec::new();
    let mut rejected = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut sum = Need::default();
    for (i, need) in needs.iter().enumerate() {
        let Some(need) = need else { continue };
        if let Some((what, bytes, limit)) = need.exceeds(lim) {
            rejected.push((i, BackendError::TooLarge { what, bytes, limit }));
            continue;
        }
        let mut with = sum;
        with.add(need);
        if !cur.is_empty() && (with.exceeds(lim).is_some() || with.staged > target) {
            batches.push(std::mem::take(&mut cur));
            with = *need;
        }
        cur.push(i);
        sum = with;
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    (batches, rejected)
}

/// 2-D dispatch `(nx, ny)` covering `groups` workgroups.
pub fn dispatch_dims(groups: u64, lim: &Limits) -> (u32, u32) {
    let nx = groups.clamp(1, lim.groups_per_dim as u64);
    (nx as u32, groups.div_ceil(nx).max(1) as u32)
}

/// Assemble `XᵀX` (`F x F`) and `XᵀY` (`F x d`) in f64 from the reduced tiles of one host:
/// `tiles[p * ENTRY ..]` is tile pair `p` (64 x 64 products, then 64 column sums).
pub fn assemble_cross(
    shape: &CrossShape,
    tiles: &[f32],
    n: usize,
    d: usize,
    lags: usize,
) -> (Vec<f64>, Vec<f64>) {
    let fx = lags * d;
    let f = fx + 1;
    let gram = |a: usize, b: usize| -> f64 {
        let (a, b) = (a.min(b), a.max(b));
        let p = shape.pair_index(a / TILE, b / TILE);
        tiles[p * ENTRY + (a % TILE) * TILE + b % TILE] as f64
    };
    let colsum = |a: usize| -> f64 {
        let p = shape.pair_index(a / TILE, a / TILE);
        tiles[p * ENTRY + TILE * TILE + a % TILE] as f64
    };
    let mut xtx = vec![0.0f64; f * f];
    let mut xty = vec![0.0f64; f * d];
    for a in 0..fx {
        for b in a..fx {
            let v = gram(a, b);
            xtx[a * f + b] = v;
            xtx[b * f + a] = v;
        }
        let s = colsum(a);
        xtx[a * f + fx] = s;
        xtx[fx * f + a] = s;
        for j in 0..d {
            xty[a * d + j] = gram(a, fx + j);
        }
    }
    xtx[fx * f + fx] = n as f64;
    for j in 0..d {
        xty[fx * d + j] = colsum(fx + j);
    }
    (xtx, xty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(z: &[f32], n: usize, d: usize) -> Series<'_> {
        Series {
            zpad: z,
            n,
            d,
            lags: 3,
        }
    }

    #[test]
    fn shapes_of_the_product_host_and_a_wide_one() {
        let z = vec![0.0; 10_083 * 16];
        let s = CrossShape::of(&series(&z, 10_080, 16));
        // 16 metrics, 3 lags: the window is exactly one 64-wide tile.
        assert_eq!((s.m, s.tiles, s.pairs, s.chunks), (64, 1, 1, 40));
        let z = vec![0.0; 103 * 38];
        let s = CrossShape::of(&series(&z, 100, 38));
        assert_eq!((s.m, s.tiles, s.pairs, s.chunks), (152, 3, 6, 1));
        let order: Vec<usize> = (0..3)
            .flat_map(|i| (i..3).map(move |j| s.pair_index(i, j)))
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn batches_are_split_under_every_limit_and_a_host_too_large_alone_is_refused() {
        let lim = Limits::new(1 << 20, 1 << 21, 65_535, u64::MAX);
        assert_eq!(lim.binding, 1 << 20);
        let need = |z: u64| Need {
            z,
            out: z,
            jobs: 16,
            items: 16,
            groups: 1,
            ..Need::default()
        };
        let needs = vec![
            Some(need(400_000)),
            Some(need(400_000)),
            None,
            Some(need(400_000)),
            Some(need(3 << 20)),
            Some(need(100)),
        ];
        let (batches, rejected) = split(&needs, &lim);
        assert_eq!(batches, vec![vec![0, 1], vec![3, 5]]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(
            rejected[0],
            (
                4,
                BackendError::TooLarge {
                    what: "lag-window series",
                    bytes: 3 << 20,
                    limit: 1 << 20
                }
            )
        );
        for b in &batches {
            let mut sum = Need::default();
            b.iter().for_each(|&i| sum.add(needs[i].as_ref().unwrap()));
            assert!(sum.exceeds(&lim).is_none(), "{sum:?}");
        }
    }

    #[test]
    fn dispatch_wraps_at_the_dimension_limit() {
        let lim = Limits::new(1 << 30, 1 << 30, 65_535, u64::MAX);
        assert_eq!(dispatch_dims(1, &lim), (1, 1));
        assert_eq!(dispatch_dims(65_535, &lim), (65_535, 1));
        assert_eq!(dispatch_dims(65_536, &lim), (65_535, 2));
        assert_eq!(dispatch_dims(50_000 * 40, &lim), (65_535, 31));
    }
}
