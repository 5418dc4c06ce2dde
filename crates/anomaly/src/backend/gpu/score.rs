//! Scoring runs ([`crate::backend::Backend::score_stream`]) with the models resident on the
//! device: per run one upload (the new rows with their history, each stream's state, the work
//! tables, and only the models that are new or changed), one submit (residual energies, then
//! the stream pass), and one read-back of the scores, top metrics and final averages.

use std::time::Instant;

use super::buffers::{scatter, u32s, words, Buffers, Packer};
use super::fit::After;
use super::models::fingerprint;
use super::plan::{self, Need, RES_METRICS, RES_ROWS};
use super::{lock, GpuBackend, PARALLEL_COPY_BYTES};
use crate::backend::parallel::par_map;
use crate::backend::{BackendError, StreamJob, Streamed};
use crate::detector::Contribution;

fn f4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Below this many models a growth of the model buffer adds half again (and at least 1 MiB).
const MODELS_MIN_BYTES: u64 = 1 << 20;

impl GpuBackend {
    /// Every host's scoring, in sub-batches that fit the device (one for a fleet's run).
    pub(super) fn stream_batch(
        &self,
        jobs: &[StreamJob<'_>],
        top_k: usize,
    ) -> Vec<Result<Streamed, BackendError>> {
        let called = Instant::now();
        let mut out = Vec::with_capacity(jobs.len());
        let mut needs = Vec::with_capacity(jobs.len());
        for j in jobs {
            match j.check() {
                Err(e) => {
                    out.push(Some(Err(e)));
                    needs.push(None);
                }
                Ok(()) if j.series.n == 0 => {
                    out.push(Some(Ok(Streamed {
                        scores: Vec::new(),
                        top: Vec::new(),
                        k: top_k.min(j.series.d),
                        ema: j.ema.to_vec(),
                    })));
                    needs.push(None);
                }
                Ok(()) => {
                    out.push(None);
                    needs.push(Some(plan::stream_need(j, top_k)));
                }
            }
        }
        let r = self.batched(jobs.len(), needs, out, jobs, |b| self.run_stream(b, top_k));
        lock(&self.stats).score_call_s += called.elapsed().as_secs_f64();
        r
    }

    /// One sub-batch (every job checked, non-empty, within limits).
    fn run_stream(
        &self,
        jobs: &[&StreamJob<'_>],
        top_k: usize,
    ) -> Result<Vec<Streamed>, BackendError> {
        let mut guard = lock(&self.bufs);
        let bufs = &mut *guard;
        let r = self.run_stream_locked(bufs, jobs, top_k);
        if r.is_err() {
            // Uploads of a failed run may not have landed.
            bufs.models.clear();
        }
        r
    }

    fn run_stream_locked(
        &self,
        bufs: &mut Buffers,
        jobs: &[&StreamJob<'_>],
        top_k: usize,
    ) -> Result<Vec<Streamed>, BackendError> {
        let planning = Instant::now();
        // Where each model lives this run, and which go up.
        // A fingerprint reads a few values spread over each model (cold cache lines): on the
        // pool's threads for a fleet.
        let threads = if jobs.len() < 256 { 1 } else { self.threads };
        let models: Vec<_> = par_map(threads, jobs.to_vec(), |_, j| {
            let len = plan::model_len(j.series.d, j.series.lags) as u64;
            (j.key, len, j.key.map_or(0, |_| fingerprint(&j.model)))
        });
        let t_fp = planning.elapsed();
        let (mut places, mut placed) = bufs.models.place(&models);
        let t_place = planning.elapsed();
        if placed.need * 4 > self.limits.binding {
            bufs.models.clear();
            (places, placed) = bufs.models.place(&models);
        }
        let mut uploads: Vec<usize> = (0..jobs.len()).filter(|&k| places[k].upload).collect();
        uploads.sort_by_key(|&k| places[k].off);
        // Tables and the series region.
        let (mut rjobs, mut ritems, mut hosts) = (Vec::<u32>::new(), Vec::<u32>::new(), vec![]);
        let (mut zat, mut eat, mut oat) = (0usize, 0usize, 0usize);
        let (mut zoffs, mut soffs, mut ooffs, mut ks) = (vec![], vec![], vec![], vec![]);
        for (k, j) in jobs.iter().enumerate() {
            let s = j.series;
            let (d, lags, n) = (s.d, s.lags, s.n);
            let kk = top_k.min(d);
            let woff = places[k].off as usize;
            let soff = zat + f4(s.len());
            rjobs.extend([
                u32s(zat),
                u32s(n),
                u32s(d),
                u32s(lags),
                u32s(woff),
                u32s(eat),
                u32s(woff + lags * d * d + d),
                j.model.clip.to_bits(),
            ]);
            for rb in 0..n.div_ceil(RES_ROWS) {
                for mb in 0..d.div_ceil(RES_METRICS) {
                    ritems.extend([u32s(k), u32s(rb), u32s(mb), 0]);
                }
            }
            hosts.extend([
                u32s(eat),
                u32s(n),
                u32s(d),
                u32s(kk),
                u32s(soff),
                u32::from(j.started),
                u32s(oat),
                j.model.alpha.to_bits(),
            ]);
            zoffs.push(zat);
            soffs.push(soff);
            ooffs.push(oat);
            ks.push(kk);
            zat = soff + f4(d);
            eat += f4(n * d);
            oat += f4(plan::stream_words(n, d, kk));
        }
        let n_items = (ritems.len() / 4) as u64;
        let n_hosts = jobs.len() as u64;
        let mut tables = Packer::default();
        let t_rjobs = (
            tables.put(bytemuck::cast_slice(&rjobs)),
            rjobs.len() as u64 * 4,
        );
        let t_ritems = (
            tables.put(bytemuck::cast_slice(&ritems)),
            ritems.len() as u64 * 4,
        );
        let t_hosts = (
            tables.put(bytemuck::cast_slice(&hosts)),
            hosts.len() as u64 * 4,
        );
        let (ex, _) = plan::dispatch_dims(n_items, &self.limits);
        let (sx, _) = plan::dispatch_dims(n_hosts, &self.limits);
        let p_energy = tables.put(&words([u32s(n_items as usize), ex, 1, 0]));
        let p_stream = tables.put(&words([u32s(n_hosts as usize), sx, 0, 0]));
        let tlen = tables.len();
        let t_tables = planning.elapsed();
        let z_bytes = zat as u64 * 4;
        let e_bytes = eat as u64 * 4;
        let out_bytes = oat as u64 * 4;
        let model_bytes: u64 = uploads.iter().map(|&k| models[k].1 * 4).sum();
        let total = tlen + z_bytes + model_bytes;
        // Buffers: the tables, series, energies, results, staging; the models' buffer grows
        // keeping the resident models.
        let grown = self.scoped(|| {
            let mut st = lock(&self.stats);
            let a = &mut st.buffer_allocations;
            let (d, cap) = (&self.device, self.limits.buffer);
            let need = Need {
                z: z_bytes,
                resid: e_bytes,
                out: out_bytes,
                tables: tlen,
                ..Need::default()
            };
            bufs.tables.ensure(d, need.tables, cap, a);
            bufs.z.ensure(d, need.z, cap, a);
            bufs.resid.ensure(d, need.resid, cap, a);
            bufs.out.ensure(d, need.out, cap, a);
            bufs.upload[0].ensure(d, total, cap, a);
            bufs.readback[0].ensure(d, out_bytes, cap, a);
            let m = &mut bufs.models;
            if m.buf.is_some() && placed.need * 4 <= m.size {
                return Ok(None);
            }
            let size = (placed.need * 6)
                .max(MODELS_MIN_BYTES)
                .min(self.limits.binding)
                .max(placed.need * 4);
            let buf = d.create_buffer(&wgpu::BufferDescriptor {
                label: Some("resident models"),
                size: plan::align(size, plan::ALIGN),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            *a += 1;
            m.size = buf.size();
            Ok(m.buf.replace(buf))
        })?;
        let planned = planning.elapsed().as_secs_f64();
        if jobs.len() > 1000 {
            eprintln!(
                "TIMING fp {:?} place {:?} tables {:?} total {:?}",
                t_fp,
                t_place,
                t_tables,
                planning.elapsed()
            );
        }
        let t = Instant::now();
        let up = bufs.upload[0].get();
        self.map_when(up, total, wgpu::MapMode::Write, After::Idle)?;
        let waited = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut copies: Vec<(u64, u64, u64)> = Vec::new(); // staging offset, model offset, bytes
        let fill = |dst: &mut [u8], copies: &mut Vec<(u64, u64, u64)>, threads: usize| {
            let (tdst, rest) = dst.split_at_mut(tlen as usize);
            tdst[..tables.bytes.len()].copy_from_slice(&tables.bytes);
            let (zdst, mdst) = rest.split_at_mut(z_bytes as usize);
            let put = |dst: &mut [u8], at: usize, v: &[f32]| {
                dst[at * 4..(at + v.len()) * 4].copy_from_slice(bytemuck::cast_slice(v));
            };
            // Each host's rows, then its state (a catch-up run is megabytes: threads).
            let mut parts = Vec::with_capacity(2 * jobs.len());
            for (k, j) in jobs.iter().enumerate() {
                parts.push((zoffs[k] as u64 * 4, &j.series.zpad[..j.series.len()]));
                parts.push((soffs[k] as u64 * 4, j.ema));
            }
            scatter(threads, zdst, parts);
            let mut at = 0usize;
            for &k in &uploads {
                let m = &jobs[k].model;
                let parts = [m.weights.weights, m.weights.bias, m.inv_scale];
                let start = at;
                for p in parts {
                    put(mdst, at, p);
                    at += p.len();
                }
                let (src, dst, bytes) = (
                    tlen + z_bytes + start as u64 * 4,
                    places[k].off * 4,
                    (at - start) as u64 * 4,
                );
                match copies.last_mut() {
                    Some(c) if c.0 + c.2 == src && c.1 + c.2 == dst => c.2 += bytes,
                    _ => copies.push((src, dst, bytes)),
                }
            }
        };
        {
            let mut view = up.slice(..total).get_mapped_range_mut();
            if total < PARALLEL_COPY_BYTES as u64 {
                // A one-minute run is thousands of small pieces: gathered in host memory, then
                // written to the mapped buffer (write-combined on a discrete GPU) in one stream.
                let stage = &mut bufs.stage;
                stage.clear();
                stage.resize(total as usize, 0);
                fill(stage, &mut copies, self.threads);
                view.copy_from_slice(stage);
            } else {
                fill(&mut view, &mut copies, self.threads);
            }
        }
        up.unmap();
        let filled = t.elapsed().as_secs_f64();
        let encoding = Instant::now();
        let mut marks = None;
        let index = self.scoped(|| {
            let mut enc = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            let mut m = self.marks(&mut enc, 0);
            let mbuf = bufs.models.buf.as_ref().expect("ensured");
            if let Some(old) = &grown {
                if placed.keep > 0 {
                    enc.copy_buffer_to_buffer(old, 0, mbuf, 0, placed.keep * 4);
                }
            }
            let tb = bufs.tables.get();
            enc.copy_buffer_to_buffer(up, 0, tb, 0, tlen);
            enc.copy_buffer_to_buffer(up, tlen, bufs.z.get(), 0, z_bytes);
            for &(src, dst, bytes) in &copies {
                enc.copy_buffer_to_buffer(up, src, mbuf, dst, bytes);
            }
            self.mark(&mut enc, &mut m, "upload copy");
            let (z, e, out) = (bufs.z.get(), bufs.resid.get(), bufs.out.get());
            self.pass_ranges(
                &mut enc,
                &self.pipes.resid,
                &[
                    (z, 0, z_bytes),
                    (mbuf, 0, bufs.models.size),
                    (tb, t_rjobs.0, t_rjobs.1),
                    (tb, t_ritems.0, t_ritems.1),
                    (tb, p_energy, 16),
                    (e, 0, e_bytes),
                ],
                n_items,
            );
            self.mark(&mut enc, &mut m, "residual energies");
            self.pass_ranges(
                &mut enc,
                &self.pipes.stream,
                &[
                    (e, 0, e_bytes),
                    (tb, t_hosts.0, t_hosts.1),
                    (tb, p_stream, 16),
                    (z, 0, z_bytes),
                    (out, 0, out_bytes),
                ],
                n_hosts,
            );
            self.mark(&mut enc, &mut m, "score stream");
            enc.copy_buffer_to_buffer(out, 0, bufs.readback[0].get(), 0, out_bytes);
            self.mark(&mut enc, &mut m, "result copy");
            self.end_marks(&mut enc, &m);
            marks = Some(m);
            let cmd = enc.finish();
            let t = Instant::now();
            let encoded = t.duration_since(encoding).as_secs_f64();
            let index = self.queue.submit([cmd]);
            let mut st = lock(&self.stats);
            st.submit_s += t.elapsed().as_secs_f64();
            st.encode_s += encoded;
            Ok(index)
        })?;
        drop(grown);
        let t_wait = Instant::now();
        let rb = bufs.readback[0].get();
        self.map_when(rb, out_bytes, wgpu::MapMode::Read, After::Submission(index))?;
        let waited = waited + t_wait.elapsed().as_secs_f64();
        let t = Instant::now();
        let results = {
            let view = rb.slice(..out_bytes).get_mapped_range();
            let bytes: &[u8] = &view;
            // Each host's results are a few small vectors: worth threads from a few hundred.
            let threads = if bytes.len() < PARALLEL_COPY_BYTES && jobs.len() < 256 {
                1
            } else {
                self.threads
            };
            par_map(threads, (0..jobs.len()).collect(), |_, k| {
                read_stream(bytes, ooffs[k], jobs[k].series.n, jobs[k].series.d, ks[k])
            })
        };
        rb.unmap();
        let read = t.elapsed().as_secs_f64();
        if let Some(m) = marks {
            self.read_marks(m);
        }
        let mut st = lock(&self.stats);
        st.plan_s += planned;
        st.submits += 1;
        st.upload_bytes += total;
        st.download_bytes += out_bytes;
        st.fill_s += filled;
        st.wait_s += waited;
        st.read_s += read;
        st.model_uploads += uploads.len() as u64;
        st.model_hits += places.iter().filter(|p| !p.upload).count() as u64;
        drop(st);
        results.into_iter().collect()
    }
}

/// One host's scored rows from its results at word `o`.
fn read_stream(
    bytes: &[u8],
    o: usize,
    n: usize,
    d: usize,
    k: usize,
) -> Result<Streamed, BackendError> {
    let word = |i: usize| {
        let at = (o + i) * 4;
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    let width = 1 + 2 * k;
    let mut scores = Vec::with_capacity(n);
    let mut top = Vec::with_capacity(n * k);
    for t in 0..n {
        let r = t * width;
        scores.push(f32::from_bits(word(r)));
        for c in 0..k {
            let metric = word(r + 1 + 2 * c) as usize;
            if metric >= d {
                return Err(BackendError::Device(format!(
                    "scoring result names metric {metric} of {d}"
                )));
            }
            top.push(Contribution {
                metric,
                share: f32::from_bits(word(r + 2 + 2 * c)),
            });
        }
    }
    let ema = (0..d)
        .map(|j| f32::from_bits(word(n * width + j)))
        .collect();
    Ok(Streamed {
        scores,
        top,
        k,
        ema,
    })
}
