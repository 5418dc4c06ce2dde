//! Batch planning for the GPU kernels: work-item tables, buffer sizes, and the split of a
//! host batch into sub-batches that respect the device limits. Pure CPU code (tested without
//! a device).

use crate::backend::{BackendError, ResidualJob, Series, CALIBRATION_TAIL};

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
    pub w: u64,
    pub part: u64,
    /// Residuals kept on the device (training calibration).
    pub resid: u64,
    pub out: u64,
    pub jobs: u64,
    pub items: u64,
    pub pairs: u64,
    /// Workgroups of the main pass.
    pub groups: u64,
    /// Workgroups of the reduction pass (cross products only).
    pub reduce_groups: u64,
}

impl Need {
    pub fn add(&mut self, o: &Need) {
        self.z += o.z;
        self.w += o.w;
        self.part += o.part;
        self.resid += o.resid;
        self.out += o.out;
        self.jobs += o.jobs;
        self.items += o.items;
        self.pairs += o.pairs;
        self.groups += o.groups;
        self.reduce_groups += o.reduce_groups;
    }

    /// Bytes of the upload buffer: every input region, aligned, plus three parameter blocks.
    pub fn upload(&self) -> u64 {
        [self.z, self.w, self.jobs, self.items, self.pairs]
            .iter()
            .map(|b| align(*b, ALIGN))
            .sum::<u64>()
            + 3 * ALIGN
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
        let m = (s.lags + 1) * s.d;
        let tiles = m.div_ceil(TILE);
        CrossShape {
            m,
            tiles,
            pairs: tiles * (tiles + 1) / 2,
            chunks: s.n.div_ceil(CHUNK_ROWS).max(1),
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
        Need {
            z: floats4(s.len()) * 4,
            part: items * ENTRY as u64 * 4,
            out: self.pairs as u64 * ENTRY as u64 * 4,
            jobs: 16,
            items: items * 16,
            pairs: self.pairs as u64 * 16,
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
    Need {
        z: floats4(s.len()) * 4,
        w: floats4(s.lags * s.d * s.d + s.d) * 4,
        out: floats4(s.n * s.d) * 4,
        jobs: 32,
        items: groups * 16,
        groups,
        ..Need::default()
    }
}

/// Rows per workgroup of the row-sum pass (`rowsum.wgsl`).
pub const ROWSUM_ROWS: usize = 256;

/// Floats of one host's calibration summary: scales, row sums, tail rows.
pub fn summary_len(s: &Series<'_>) -> usize {
    s.d + s.n + s.n.min(CALIBRATION_TAIL) * s.d
}

/// What one host needs for device-side training ([`crate::backend::Backend::train_kernels`]):
/// the cross-product step and the calibration step, which share the series. Tables of both
/// steps are counted together (conservative).
pub fn train_need(s: &Series<'_>) -> Need {
    let shape = CrossShape::of(s);
    let cross = shape.need(s);
    let resid = residual_need(&ResidualJob {
        series: *s,
        weights: crate::backend::LagWeights {
            weights: &[],
            bias: &[],
        },
    });
    let rows = s.n.div_ceil(ROWSUM_ROWS) as u64;
    Need {
        z: cross.z,
        w: floats4(s.lags * s.d * s.d + s.d) * 4,
        part: cross.part,
        resid: floats4(s.n * s.d) * 4,
        out: cross.out.max(floats4(summary_len(s)) * 4),
        jobs: cross.jobs + resid.jobs + 32,
        items: cross.items + resid.items + rows * 8,
        // The pairs buffer holds the cross step's pair table, then the calibration's
        // per-host table (32 bytes).
        pairs: cross.pairs.max(32),
        groups: cross.groups.max(resid.groups).max(rows),
        reduce_groups: cross.reduce_groups,
    }
}

/// Split hosts (by their needs; `None` = nothing to run on the device) into sub-batches that
/// each fit `lim`, in order. A host that does not fit alone gets its `TooLarge` error.
pub fn split(
    needs: &[Option<Need>],
    lim: &Limits,
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
        if !cur.is_empty() && with.exceeds(lim).is_some() {
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
