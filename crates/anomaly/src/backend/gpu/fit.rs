//! Whole trainings on the device ([`crate::backend::Backend::fit_device`]).
//!
//! Per sub-batch of hosts, one upload (the raw rows and the work tables) and one submit with
//! seven passes: statistics (f64) and standardizing in place, cross products and their
//! pairwise reduction, the ridge solve (f64 Cholesky), residuals, and the calibration (scales,
//! scores, drift-guard memory, stream state, sorted upper tail). About 9 KB per host come
//! back. Sub-batches are pipelined over two upload and two read-back buffers: the host fills
//! sub-batch k + 1 while the device runs k, and reads k's results while it runs k + 1.

use std::time::Instant;

use super::buffers::{floats, scatter, u32s, words, Buffers, Packer};
use super::plan::{
    self, CrossShape, Need, Summary, CHUNK_ROWS, ENTRY, REDUCE_GROUP, RES_METRICS, RES_ROWS,
    STATS_ROWS, STD_BLOCK,
};
use super::profile::Marks;
use super::{lock, FitPipelines, GpuBackend, PARALLEL_COPY_BYTES};
use crate::backend::parallel::par_map;
use crate::backend::{BackendError, FitJob, FitOutput, NOT_POSITIVE_DEFINITE};

/// Floats rounded up to a multiple of 4.
fn f4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// A region of the tables buffer: offset and size in bytes.
type Region = (u64, u64);

/// The passes of a training submit, in order.
#[derive(Clone, Copy)]
enum Pass {
    Stats,
    Merge,
    Apply,
    Cross,
    Reduce,
    SolveSmall,
    Solve,
    Residuals,
    Calibrate,
}

const PASSES: usize = 9;

/// One sub-batch laid out.
struct FitBatch {
    /// Job indices of its hosts.
    hosts: Vec<usize>,
    tables: Packer,
    /// Host records, f64 settings, cross-product jobs, items and tile pairs, standardizing
    /// blocks, residual jobs and items.
    t_hosts: Region,
    t_hostf: Region,
    t_cjobs: Region,
    t_citems: Region,
    t_pairs: Region,
    t_blocks: Region,
    t_chunks: Region,
    t_rjobs: Region,
    t_ritems: Region,
    /// Parameter blocks of the passes (see [`Pass`]).
    params: [u64; PASSES],
    /// Workgroups of those passes.
    groups: [u64; PASSES],
    /// Whether some host needs the scratch-buffer solve (too large for workgroup memory).
    large_solve: bool,
    /// Each host's series (floats) in the series buffer and summary (words) in the output.
    zoffs: Vec<usize>,
    ooffs: Vec<usize>,
    summaries: Vec<Summary>,
    /// Buffer sizes of this sub-batch (bytes).
    z_bytes: u64,
    w_bytes: u64,
    part_bytes: u64,
    red_bytes: u64,
    solve_bytes: u64,
    resid_bytes: u64,
    sk_bytes: u64,
    out_bytes: u64,
}

impl FitBatch {
    /// Sub-batch `hosts` of `jobs`; a host solves in workgroup memory when its system has at
    /// most `small` f64s (0: never).
    fn new(jobs: &[FitJob<'_>], hosts: &[usize], lim: &plan::Limits, small: usize) -> Self {
        let (mut th, mut thf) = (Vec::<u32>::new(), Vec::<f64>::new());
        let mut chunks = Vec::<u32>::new();
        let mut large_solve = false;
        let (mut cjobs, mut citems, mut pairs) = (Vec::<u32>::new(), Vec::<u32>::new(), vec![]);
        let (mut blocks, mut rjobs, mut ritems) = (Vec::<u32>::new(), Vec::<u32>::new(), vec![]);
        let (mut zat, mut wat, mut rat, mut oat, mut sat, mut aat) = (0, 0, 0, 0, 0, 0);
        let (mut item_at, mut pair_at, mut part_floats) = (0usize, 0usize, 0usize);
        let (mut zoffs, mut ooffs, mut summaries) = (vec![], vec![], vec![]);
        for (k, &i) in hosts.iter().enumerate() {
            let j = &jobs[i];
            let (n, d, lags) = (j.n, j.d, j.lags);
            let sh = CrossShape::new(n, d, lags);
            let sm = Summary::of(j);
            let f = j.features();
            let sort_n = n.next_power_of_two();
            let (stride, cap) = j.recent.unwrap_or((1, 0));
            let nc = n.div_ceil(STATS_ROWS);
            let poff = rat + f4(n * d);
            let moff = aat + f * f + f * d;
            large_solve |= f * (f + d) > small;
            th.extend([
                u32s(zat),
                u32s(n),
                u32s(d),
                u32s(lags),
                u32s(wat),
                u32s(rat),
                u32s(oat),
                u32s(sat),
                u32s(sat + f4(n)),
                u32s(sort_n),
                u32s(aat),
                u32s(pair_at),
                u32s(sh.tiles),
                u32s(stride),
                u32s(cap),
                u32s(sm.ring_cap),
                j.std_floor.to_bits(),
                j.resid_floor.to_bits(),
                j.clip.to_bits(),
                j.alpha.to_bits(),
                u32s(poff),
                u32s(moff),
                0,
                0,
            ]);
            for c in 0..nc {
                chunks.extend([u32s(k), u32s(c)]);
            }
            thf.extend([j.ridge, j.quantile.clamp(0.0, 1.0)]);
            cjobs.extend([u32s(zat), u32s(n), u32s(d), u32s(sh.m)]);
            for ti in 0..sh.tiles {
                for tj in ti..sh.tiles {
                    pairs.extend([u32s(item_at), u32s(sh.chunks), 0, 0]);
                    for c in 0..sh.chunks {
                        citems.extend([u32s(k), u32s(ti), u32s(tj), u32s(c)]);
                    }
                    item_at += sh.chunks;
                }
            }
            part_floats += sh.items() * ENTRY;
            pair_at += sh.pairs;
            for b in 0..(n * d).div_ceil(STD_BLOCK) {
                blocks.extend([u32s(k), u32s(b)]);
            }
            rjobs.extend([
                u32s(zat),
                u32s(n),
                u32s(d),
                u32s(lags),
                u32s(wat),
                u32s(rat),
                u32s(poff),
                0,
            ]);
            for rb in 0..n.div_ceil(RES_ROWS) {
                for mb in 0..d.div_ceil(RES_METRICS) {
                    ritems.extend([u32s(k), u32s(rb), u32s(mb), 0]);
                }
            }
            zoffs.push(zat);
            ooffs.push(oat);
            summaries.push(sm);
            zat += f4((n + lags) * d);
            wat += f4(lags * d * d + d);
            rat += f4(n * d) + f4(n.div_ceil(RES_ROWS) * d);
            oat += f4(sm.words);
            sat += f4(n) + f4(sort_n);
            aat += f * f + f * d + 2 * nc * d;
        }
        let nh = hosts.len() as u64;
        let mut tables = Packer::default();
        let mut put = |bytes: &[u8]| (tables.put(bytes), bytes.len() as u64);
        let t_hosts = put(bytemuck::cast_slice(&th));
        let t_hostf = put(bytemuck::cast_slice(&thf));
        let t_cjobs = put(bytemuck::cast_slice(&cjobs));
        let t_citems = put(bytemuck::cast_slice(&citems));
        let t_pairs = put(bytemuck::cast_slice(&pairs));
        let t_blocks = put(bytemuck::cast_slice(&blocks));
        let t_chunks = put(bytemuck::cast_slice(&chunks));
        let t_rjobs = put(bytemuck::cast_slice(&rjobs));
        let t_ritems = put(bytemuck::cast_slice(&ritems));
        let n_citems = (citems.len() / 4) as u64;
        let reduce_count = pair_at * ENTRY;
        let n_chunks = (chunks.len() / 2) as u64;
        let mut groups = [0u64; PASSES];
        let mut counts = [0u64; PASSES];
        for (pass, g, c) in [
            (Pass::Stats, n_chunks, n_chunks),
            (Pass::Merge, nh, nh),
            (
                Pass::Apply,
                (blocks.len() / 2) as u64,
                (blocks.len() / 2) as u64,
            ),
            (Pass::Cross, n_citems, n_citems),
            (
                Pass::Reduce,
                reduce_count.div_ceil(REDUCE_GROUP) as u64,
                reduce_count as u64,
            ),
            (Pass::SolveSmall, nh, nh),
            (Pass::Solve, nh, nh),
            (
                Pass::Residuals,
                (ritems.len() / 4) as u64,
                (ritems.len() / 4) as u64,
            ),
            (Pass::Calibrate, nh, nh),
        ] {
            groups[pass as usize] = g;
            counts[pass as usize] = c;
        }
        let mut params = [0u64; PASSES];
        for (pass, p) in params.iter_mut().enumerate() {
            let (nx, _) = plan::dispatch_dims(groups[pass], lim);
            // The cross-product pass reads its chunk length, the residual pass its mode
            // (2: training, with block sums of squares), the scratch-buffer solve whether the
            // small hosts were solved in workgroup memory.
            let third = match pass {
                p if p == Pass::Cross as usize => CHUNK_ROWS as u32,
                p if p == Pass::Residuals as usize => 2,
                p if p == Pass::Solve as usize => u32::from(small > 0),
                _ => 0,
            };
            *p = tables.put(&words([u32s(counts[pass] as usize), nx, third, 0]));
        }
        FitBatch {
            hosts: hosts.to_vec(),
            tables,
            t_hosts,
            t_hostf,
            t_cjobs,
            t_citems,
            t_pairs,
            t_blocks,
            t_chunks,
            t_rjobs,
            t_ritems,
            params,
            groups,
            large_solve: large_solve || small == 0,
            zoffs,
            ooffs,
            summaries,
            z_bytes: zat as u64 * 4,
            w_bytes: wat as u64 * 4,
            part_bytes: part_floats as u64 * 4,
            red_bytes: pair_at as u64 * ENTRY as u64 * 4,
            solve_bytes: aat as u64 * 8,
            resid_bytes: rat as u64 * 4,
            sk_bytes: sat as u64 * 4,
            out_bytes: oat as u64 * 4,
        }
    }

    /// Bytes staged: the tables, then the series.
    fn staged(&self) -> u64 {
        self.tables.len() + self.z_bytes
    }
}

/// A submitted sub-batch.
struct Submitted {
    index: wgpu::SubmissionIndex,
    marks: Marks,
}

/// How long to wait before mapping a buffer.
pub(super) enum After {
    /// Until this submission is done.
    Submission(wgpu::SubmissionIndex),
    /// Not at all: the buffer is idle.
    Idle,
}

impl GpuBackend {
    /// Device training of every checked host that fits, in pipelined sub-batches; `None`
    /// without the f64 kernels.
    pub(super) fn fit_batch(&self, jobs: &[FitJob<'_>]) -> Option<Vec<anyhow::Result<FitOutput>>> {
        let pipes = self.pipes.fit.as_ref()?;
        let mut out: Vec<Option<anyhow::Result<FitOutput>>> =
            (0..jobs.len()).map(|_| None).collect();
        let mut needs: Vec<Option<Need>> = vec![None; jobs.len()];
        for (i, j) in jobs.iter().enumerate() {
            match j.check() {
                Err(e) => out[i] = Some(Err(e.into())),
                Ok(()) => needs[i] = Some(plan::fit_need(j)),
            }
        }
        let total: u64 = needs.iter().flatten().map(|n| n.staged).sum();
        // Eight sub-batches a call: what does not overlap (the first fill, the last device
        // sub-batch) is an eighth of the call; 8 MiB keeps the fixed cost of a submit small.
        let target = if self.pipeline_bytes > 0 {
            self.pipeline_bytes
        } else {
            (total / 8).clamp(8 << 20, 64 << 20)
        };
        let (batches, rejected) = plan::split_target(&needs, &self.limits, target);
        for (i, e) in rejected {
            out[i] = Some(Err(e.into()));
        }
        lock(&self.stats).calls += 1;
        if !batches.is_empty() {
            let mut max = Need::default();
            for b in &batches {
                let mut sum = Need::default();
                b.iter()
                    .for_each(|&i| sum.add(needs[i].as_ref().expect("planned")));
                max.max(&sum);
            }
            let mut guard = lock(&self.bufs);
            let bufs = &mut *guard;
            match self.scoped(|| {
                self.ensure_fit(bufs, &max);
                Ok(())
            }) {
                Ok(()) => self.pipeline(pipes, bufs, jobs, &batches, &mut out),
                Err(e) => {
                    for &i in batches.iter().flatten() {
                        out[i] = Some(Err(e.clone().into()));
                    }
                }
            }
        }
        Some(
            out.into_iter()
                .map(|r| {
                    r.unwrap_or_else(
                        || Err(BackendError::Invalid("host not planned".into()).into()),
                    )
                })
                .collect(),
        )
    }

    fn ensure_fit(&self, bufs: &mut Buffers, need: &Need) {
        let mut st = lock(&self.stats);
        let a = &mut st.buffer_allocations;
        let (d, cap) = (&self.device, self.limits.buffer);
        bufs.z.ensure(d, need.z, cap, a);
        bufs.w.ensure(d, need.w, cap, a);
        bufs.part.ensure(d, need.part, cap, a);
        bufs.red.ensure(d, need.red, cap, a);
        bufs.solve.ensure(d, need.solve, cap, a);
        bufs.resid.ensure(d, need.resid, cap, a);
        bufs.sk.ensure(d, need.sk, cap, a);
        bufs.out.ensure(d, need.out, cap, a);
        bufs.tables
            .ensure(d, need.tables + 16 * plan::ALIGN, cap, a);
        for slot in 0..2 {
            bufs.upload[slot].ensure(d, need.upload(), cap, a);
            bufs.readback[slot].ensure(d, need.out, cap, a);
        }
    }

    /// Sub-batch k is filled and submitted, then k − 1's results are read while k runs.
    fn pipeline(
        &self,
        pipes: &FitPipelines,
        bufs: &mut Buffers,
        jobs: &[FitJob<'_>],
        batches: &[Vec<usize>],
        out: &mut [Option<anyhow::Result<FitOutput>>],
    ) {
        // Every sub-batch's tables at once, on the pool's threads (on one thread they took
        // about 0.17 ms a sub-batch on the H200 machine's host, time the device waited).
        let planning = Instant::now();
        let plans = par_map(self.threads, batches.to_vec(), |_, hosts| {
            FitBatch::new(jobs, &hosts, &self.limits, pipes.small_solve)
        });
        lock(&self.stats).plan_s += planning.elapsed().as_secs_f64();
        let mut pending: Option<(usize, FitBatch, Submitted)> = None;
        let mut last_use: [Option<wgpu::SubmissionIndex>; 2] = [None, None];
        for (k, b) in plans.into_iter().enumerate() {
            let slot = k % 2;
            let after = match last_use[slot].take() {
                Some(i) => After::Submission(i),
                None => After::Idle,
            };
            let sub = self
                .check_fault()
                .and_then(|_| self.scoped(|| self.submit_fit(pipes, bufs, slot, &b, jobs, after)));
            if let Some((pk, pb, ps)) = pending.take() {
                self.collect_fit(bufs, pk % 2, &pb, ps, jobs, out);
            }
            match sub {
                Ok(s) => {
                    last_use[slot] = Some(s.index.clone());
                    pending = Some((k, b, s));
                }
                Err(e) => {
                    for &i in &b.hosts {
                        out[i] = Some(Err(e.clone().into()));
                    }
                }
            }
        }
        if let Some((pk, pb, ps)) = pending {
            self.collect_fit(bufs, pk % 2, &pb, ps, jobs, out);
        }
    }

    /// Fill upload buffer `slot` with sub-batch `b`, encode its copies and passes, submit.
    fn submit_fit(
        &self,
        pipes: &FitPipelines,
        bufs: &mut Buffers,
        slot: usize,
        b: &FitBatch,
        jobs: &[FitJob<'_>],
        after: After,
    ) -> Result<Submitted, BackendError> {
        let t = Instant::now();
        let total = b.staged();
        let tlen = b.tables.len();
        let up = bufs.upload[slot].get();
        self.map_when(up, total, wgpu::MapMode::Write, after)?;
        let waited = t.elapsed().as_secs_f64();
        let t = Instant::now();
        {
            let mut view = up.slice(..total).get_mapped_range_mut();
            let (tdst, zdst) = view.split_at_mut(tlen as usize);
            tdst[..b.tables.bytes.len()].copy_from_slice(&b.tables.bytes);
            scatter(
                self.threads,
                zdst,
                b.hosts
                    .iter()
                    .zip(&b.zoffs)
                    .map(|(&i, &at)| {
                        let j = &jobs[i];
                        ((at + j.lags * j.d) as u64 * 4, &j.rows[..j.n * j.d])
                    })
                    .collect(),
            );
        }
        up.unmap();
        let filled = t.elapsed().as_secs_f64();
        let encoding = Instant::now();
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut m = self.marks(&mut enc, slot);
        let tb = bufs.tables.get();
        enc.copy_buffer_to_buffer(up, 0, tb, 0, tlen);
        enc.copy_buffer_to_buffer(up, tlen, bufs.z.get(), 0, b.z_bytes);
        self.mark(&mut enc, &mut m, "upload copy");
        let p = |pass: Pass| (tb, b.params[pass as usize], 16u64);
        let t = |r: Region| (tb, r.0, r.1);
        let whole = |buf, size| (buf, 0u64, size);
        let (z, out) = (bufs.z.get(), bufs.out.get());
        let solve = bufs.solve.get();
        let pass = |enc: &mut wgpu::CommandEncoder,
                    m: &mut Marks,
                    pipe: &wgpu::ComputePipeline,
                    which: Pass,
                    entries: &[(&wgpu::Buffer, u64, u64)],
                    label: &'static str| {
            self.pass_ranges(enc, pipe, entries, b.groups[which as usize]);
            self.mark(enc, m, label);
        };
        // Standardizing: statistics per chunk, merged per host, applied in place. The three
        // entry points share one module, so their bindings keep the module's numbers.
        let stats: [(u32, &wgpu::Buffer, u64, u64); 5] = {
            let (h, pp, ch) = (t(b.t_hosts), p(Pass::Stats), t(b.t_chunks));
            [
                (0, z, 0, b.z_bytes),
                (1, h.0, h.1, h.2),
                (2, pp.0, pp.1, pp.2),
                (5, solve, 0, b.solve_bytes),
                (6, ch.0, ch.1, ch.2),
            ]
        };
        self.pass_bound(
            &mut enc,
            &pipes.stats,
            &stats,
            b.groups[Pass::Stats as usize],
        );
        self.mark(&mut enc, &mut m, "standardize stats");
        let merge: [(u32, &wgpu::Buffer, u64, u64); 4] = {
            let (h, pp) = (t(b.t_hosts), p(Pass::Merge));
            [
                (1, h.0, h.1, h.2),
                (2, pp.0, pp.1, pp.2),
                (3, out, 0, b.out_bytes),
                (5, solve, 0, b.solve_bytes),
            ]
        };
        self.pass_bound(
            &mut enc,
            &pipes.merge,
            &merge,
            b.groups[Pass::Merge as usize],
        );
        self.mark(&mut enc, &mut m, "standardize merge");
        pass(
            &mut enc,
            &mut m,
            &pipes.apply,
            Pass::Apply,
            &[
                whole(z, b.z_bytes),
                t(b.t_hosts),
                p(Pass::Apply),
                whole(out, b.out_bytes),
                t(b.t_blocks),
            ],
            "standardize apply",
        );
        pass(
            &mut enc,
            &mut m,
            &self.pipes.cross,
            Pass::Cross,
            &[
                whole(z, b.z_bytes),
                t(b.t_cjobs),
                t(b.t_citems),
                p(Pass::Cross),
                whole(bufs.part.get(), b.part_bytes),
            ],
            "cross products",
        );
        pass(
            &mut enc,
            &mut m,
            &self.pipes.reduce,
            Pass::Reduce,
            &[
                whole(bufs.part.get(), b.part_bytes),
                t(b.t_pairs),
                p(Pass::Reduce),
                whole(bufs.red.get(), b.red_bytes),
            ],
            "cross reduce",
        );
        let solve_entries = |which| {
            [
                whole(bufs.red.get(), b.red_bytes),
                t(b.t_hosts),
                t(b.t_hostf),
                p(which),
                whole(solve, b.solve_bytes),
                whole(bufs.w.get(), b.w_bytes),
                whole(out, b.out_bytes),
            ]
        };
        if let Some(small) = &pipes.solve_small {
            // The workgroup-memory solve binds no scratch buffer (binding 4).
            let e = solve_entries(Pass::SolveSmall);
            let e: Vec<(u32, &wgpu::Buffer, u64, u64)> = e
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 4)
                .map(|(i, &(buf, o, size))| (i as u32, buf, o, size))
                .collect();
            self.pass_bound(&mut enc, small, &e, b.groups[Pass::SolveSmall as usize]);
            self.mark(&mut enc, &mut m, "solve");
        }
        if b.large_solve {
            pass(
                &mut enc,
                &mut m,
                &pipes.solve,
                Pass::Solve,
                &solve_entries(Pass::Solve),
                "solve (scratch buffer)",
            );
        }
        pass(
            &mut enc,
            &mut m,
            &self.pipes.resid,
            Pass::Residuals,
            &[
                whole(z, b.z_bytes),
                whole(bufs.w.get(), b.w_bytes),
                t(b.t_rjobs),
                t(b.t_ritems),
                p(Pass::Residuals),
                whole(bufs.resid.get(), b.resid_bytes),
            ],
            "residuals",
        );
        pass(
            &mut enc,
            &mut m,
            &pipes.calibrate,
            Pass::Calibrate,
            &[
                whole(bufs.resid.get(), b.resid_bytes),
                whole(z, b.z_bytes),
                t(b.t_hosts),
                t(b.t_hostf),
                p(Pass::Calibrate),
                whole(bufs.sk.get(), b.sk_bytes),
                whole(out, b.out_bytes),
            ],
            "calibrate",
        );
        enc.copy_buffer_to_buffer(out, 0, bufs.readback[slot].get(), 0, b.out_bytes);
        self.mark(&mut enc, &mut m, "result copy");
        self.end_marks(&mut enc, &m);
        let cmd = enc.finish();
        let t = Instant::now();
        let index = self.queue.submit([cmd]);
        let mut st = lock(&self.stats);
        st.encode_s += t.duration_since(encoding).as_secs_f64();
        st.submit_s += t.elapsed().as_secs_f64();
        st.submits += 1;
        st.upload_bytes += total;
        st.fill_s += filled;
        st.wait_s += waited;
        Ok(Submitted { index, marks: m })
    }

    /// Wait for sub-batch `b`'s results in read-back buffer `slot` and turn them into models.
    fn collect_fit(
        &self,
        bufs: &Buffers,
        slot: usize,
        b: &FitBatch,
        sub: Submitted,
        jobs: &[FitJob<'_>],
        out: &mut [Option<anyhow::Result<FitOutput>>],
    ) {
        let rb = bufs.readback[slot].get();
        let t = Instant::now();
        if let Err(e) = self.map_when(
            rb,
            b.out_bytes,
            wgpu::MapMode::Read,
            After::Submission(sub.index),
        ) {
            for &i in &b.hosts {
                out[i] = Some(Err(e.clone().into()));
            }
            return;
        }
        let waited = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let models = {
            let view = rb.slice(..b.out_bytes).get_mapped_range();
            let bytes: &[u8] = &view;
            let threads = if bytes.len() < PARALLEL_COPY_BYTES {
                1
            } else {
                self.threads
            };
            par_map(threads, (0..b.hosts.len()).collect(), |_, k| {
                read_model(bytes, b.ooffs[k], &b.summaries[k], &jobs[b.hosts[k]])
            })
        };
        rb.unmap();
        self.read_marks(sub.marks);
        for (&i, m) in b.hosts.iter().zip(models) {
            out[i] = Some(m);
        }
        let mut st = lock(&self.stats);
        st.download_bytes += b.out_bytes;
        st.wait_s += waited;
        st.read_s += t.elapsed().as_secs_f64();
    }

    /// [`GpuBackend::map_after`] with the waits of the pipeline.
    pub(super) fn map_when(
        &self,
        buf: &wgpu::Buffer,
        size: u64,
        mode: wgpu::MapMode,
        after: After,
    ) -> Result<(), BackendError> {
        match after {
            After::Submission(i) => self.map_after(buf, size, mode, Some(i)),
            After::Idle => self.map_idle(buf, size, mode),
        }
    }
}

/// One host's model from its summary at word `o` of the results.
fn read_model(bytes: &[u8], o: usize, sm: &Summary, j: &FitJob<'_>) -> anyhow::Result<FitOutput> {
    let word = |i: usize| {
        let at = (o + i) * 4;
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
    };
    let (status, finite, ring, upper) = (word(0), word(1), word(2), word(3));
    if status != 0 {
        anyhow::bail!(NOT_POSITIVE_DEFINITE);
    }
    if ring > sm.ring_cap
        || upper > sm.upper_cap
        || finite > j.n
        || finite - upper != j.tail_start(finite)
    {
        return Err(BackendError::Device(format!(
            "device training summary out of range (finite {finite}, ring {ring}, tail {upper})"
        ))
        .into());
    }
    let (d, lags) = (j.d, j.lags);
    let part = |at: usize, len: usize| floats(bytes, o + at, o + at + len);
    Ok(FitOutput {
        mean: part(sm.mean, d),
        inv_std: part(sm.inv_std, d),
        weights: part(sm.weights, lags * d * d),
        bias: part(sm.bias, d),
        inv_scale: part(sm.inv_scale, d),
        ema: part(sm.ema, d),
        history: part(sm.history, lags * d),
        recent: part(sm.ring, ring),
        finite,
        upper: part(sm.upper, upper),
    })
}
