// The calibration of many hosts' alert levels, on the device: one workgroup per host, from the
// absolute training residuals left in `resid` by residuals.wgsl (training mode, which also
// left each metric's sum of squares per 64-row block at poff). (train_common.wgsl is
// prepended.)
//
// 1. residual scales inv[j] = 1 / max(sqrt(sum_t a[t, j]^2 / n), floor), from the block sums
//    (16 metric lanes x 16 block lanes, the lanes added in workgroup memory);
// 2. each row's energy sum sum_j min(a[t, j] * inv[j], clip)^2, and
// 3. the calibration scores: the moving average of the row sums over d (the average is linear
//    and the same for every metric, so this is the mean of the per-metric averages), as a
//    blocked scan: each thread owns a run of rows and folds it from zero (the run's own part,
//    and the decay (1 - alpha)^len), the runs' affine maps are composed by a parallel scan
//    (8 steps), then every thread redoes its run from its carry with the sequential
//    recurrence. Thread 0's run starts from r_0 itself, so a run's values differ from the
//    one-thread recurrence only by the rounding of its carry;
// 4. the drift guard's memory (every `stride`-th score, the last `cap`);
// 5. the per-metric moving averages the stream continues from, rebuilt from the last 256 rows
//    (an older row's weight is (11/13)^256 ≈ 1e-19 for the job's span, far below f32
//    resolution), 16 lanes of 16 rows a metric, composed like the scan;
// 6. the history rows (the last `lags` standardized rows);
// 7. the upper tail the POT fit reads: the finite scores from rank lo = floor(q · (finite − 1))
//    up, sorted. A radix select (four 8-bit digits, histograms in workgroup memory) finds the
//    key K of rank lo and how many copies of K lie at ranks >= lo; the keys above K are
//    gathered into workgroup memory and sorted there (bitonic, up to TAIL of them: a week at
//    q = 0.9 has about 1,000). More than TAIL (a low quantile) sorts every key in the scratch
//    buffer instead, as a bitonic sort over global memory (105 stages of barriers for a week:
//    most of this pass's time before the select).
//
// Sort keys are order-preserving u32s of the scores (f32::total_cmp order; non-finite last),
// so the tail holds exactly the values a sort of the scores would.

@group(0) @binding(0) var<storage, read> resid: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> hosts: array<Host>;
@group(0) @binding(3) var<storage, read> hostf: array<HostF>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> sk: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

const NONE: u32 = 0xffffffffu;
const TAIL: u32 = 2048u;

var<workgroup> lanes: array<f32, 256>;
var<workgroup> decays: array<f32, 256>;
var<workgroup> finite: atomic<u32>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> scan: array<u32, 256>;
var<workgroup> tail: array<u32, TAIL>;
var<workgroup> tail_n: atomic<u32>;
// Values every thread needs after a barrier (read with workgroupUniformLoad).
var<workgroup> nf_all: u32;
var<workgroup> sel_digit: u32;
var<workgroup> sel_rank: u32;
var<workgroup> sel_equal: u32;
var<workgroup> above: u32;

// Order-preserving key of a float (the order of f32::total_cmp); non-finite values sort last.
fn key_of(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7f800000u) == 0x7f800000u) { return NONE; }
    if ((b & 0x80000000u) != 0u) { return ~b; }
    return b | 0x80000000u;
}

// The float bits of a finite key.
fn bits_of(k: u32) -> u32 {
    if ((k & 0x80000000u) != 0u) { return k & 0x7fffffffu; }
    return ~k;
}

// Inclusive scan of the affine maps x -> decays[i] * x + lanes[i] over the 256 threads: after
// it, lanes[i] is the value at the end of run i when run 0 starts from its own first value.
fn scan_maps(li: u32, a0: f32, b0: f32) {
    var a = a0;
    var b = b0;
    decays[li] = a;
    lanes[li] = b;
    workgroupBarrier();
    for (var off = 1u; off < 256u; off = off << 1u) {
        var na = a;
        var nb = b;
        if (li >= off) {
            // The earlier runs' map first, then this one's.
            nb = a * lanes[li - off] + b;
            na = a * decays[li - off];
        }
        workgroupBarrier();
        a = na;
        b = nb;
        decays[li] = a;
        lanes[li] = b;
        workgroupBarrier();
    }
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    let n = h.n;
    let d = h.d;
    if (li == 0u) {
        atomicStore(&finite, 0u);
        atomicStore(&tail_n, 0u);
    }

    // 1. Residual scales, from the sums of squares of 64-row blocks.
    let jl = li % 16u;
    let rl = li / 16u;
    let nb = (n + 63u) / 64u;
    for (var j0 = 0u; j0 < d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var total = 0.0;
        if (j < d) {
            for (var b = rl; b < nb; b = b + 16u) {
                total = total + resid[h.poff + b * d + j];
            }
        }
        lanes[li] = total;
        workgroupBarrier();
        if (rl == 0u && j < d) {
            var s = 0.0;
            for (var r = 0u; r < 16u; r = r + 1u) {
                s = s + lanes[r * 16u + jl];
            }
            out[o_inv(h) + j] = bitcast<u32>(1.0 / max(sqrt(s / f32(n)), h.resid_floor));
        }
        workgroupBarrier();
    }
    storageBarrier();

    // 2, 3. Row energy sums and calibration scores: s_0 = r_0, s_t = s_t-1 + alpha (r_t - s_t-1).
    let inv_d = 1.0 / f32(d);
    let per = (n + 255u) / 256u;
    let t0 = min(li * per, n);
    let t1 = min(t0 + per, n);
    var part = 0.0;
    var decay = 1.0;
    for (var t = t0; t < t1; t = t + 1u) {
        let row = h.roff + t * d;
        var r = 0.0;
        for (var j = 0u; j < d; j = j + 1u) {
            let x = min(resid[row + j] * bitcast<f32>(out[o_inv(h) + j]), h.clip);
            r = fma(x, x, r);
        }
        sk[h.soff + t] = bitcast<u32>(r);
        if (t == 0u) {
            part = r;
            decay = 0.0;
        } else {
            part = part + h.alpha * (r - part);
            decay = decay * (1.0 - h.alpha);
        }
    }
    scan_maps(li, decay, part);
    var sum = 0.0;
    if (li > 0u) { sum = lanes[li - 1u]; }
    var mine = 0u;
    for (var t = t0; t < t1; t = t + 1u) {
        let r = bitcast<f32>(sk[h.soff + t]);
        if (t == 0u) { sum = r; } else { sum = sum + h.alpha * (r - sum); }
        let s = sum * inv_d;
        let k = key_of(s);
        sk[h.soff + t] = bitcast<u32>(s);
        sk[h.koff + t] = k;
        if (k != NONE) { mine = mine + 1u; }
    }
    atomicAdd(&finite, mine);
    storageBarrier();

    // 4. The drift guard's memory.
    var ring = 0u;
    if (h.cap > 0u) {
        let samples = (n + h.stride - 1u) / h.stride;
        let first = select(0u, samples - h.cap, samples > h.cap);
        ring = samples - first;
        for (var i = li; i < ring; i = i + 256u) {
            out[o_ring(h) + i] = sk[h.soff + (first + i) * h.stride];
        }
    }

    // 5. Per-metric moving averages from the last rows: 16 lanes of a metric fold 16 rows
    //    each (the first lane from the first row's value), then lane 0 chains them.
    let tail_rows = min(n, 256u);
    let begin = n - tail_rows;
    let per5 = (tail_rows + 15u) / 16u;
    for (var j0 = 0u; j0 < d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var a = 1.0;
        var b = 0.0;
        if (j < d) {
            let inv = bitcast<f32>(out[o_inv(h) + j]);
            let u0 = begin + min(rl * per5, tail_rows);
            let u1 = min(u0 + per5, n);
            for (var t = u0; t < u1; t = t + 1u) {
                let x = min(resid[h.roff + t * d + j] * inv, h.clip);
                let e = x * x;
                if (t == begin) {
                    b = e;
                    a = 0.0;
                } else {
                    b = b + h.alpha * (e - b);
                    a = a * (1.0 - h.alpha);
                }
            }
        }
        workgroupBarrier();
        lanes[li] = b;
        decays[li] = a;
        workgroupBarrier();
        if (rl == 0u && j < d) {
            var m = 0.0;
            for (var r = 0u; r < 16u; r = r + 1u) {
                m = decays[r * 16u + jl] * m + lanes[r * 16u + jl];
            }
            out[o_ema(h) + j] = bitcast<u32>(m);
        }
    }

    // 6. History.
    for (var i = li; i < h.lags * d; i = i + 256u) {
        out[o_hist(h) + i] = bitcast<u32>(z[h.zoff + n * d + i]);
    }

    // 7. The upper tail.
    workgroupBarrier();
    if (li == 0u) { nf_all = atomicLoad(&finite); }
    let nf = workgroupUniformLoad(&nf_all);
    var lo = 0u;
    if (nf > 0u) {
        lo = u32(floor(hostf[w].q * f64(nf - 1u)));
        // Radix select of rank lo, most significant digit first.
        var prefix = 0u;
        var mask = 0u;
        var rank = lo;
        var equal = 0u;
        for (var round = 0u; round < 4u; round = round + 1u) {
            let shift = 24u - 8u * round;
            atomicStore(&hist[li], 0u);
            workgroupBarrier();
            for (var t = li; t < n; t = t + 256u) {
                let k = sk[h.koff + t];
                if ((k & mask) == prefix) {
                    atomicAdd(&hist[(k >> shift) & 255u], 1u);
                }
            }
            workgroupBarrier();
            let v = atomicLoad(&hist[li]);
            scan[li] = v;
            workgroupBarrier();
            for (var off = 1u; off < 256u; off = off << 1u) {
                var x = scan[li];
                if (li >= off) { x = x + scan[li - off]; }
                workgroupBarrier();
                scan[li] = x;
                workgroupBarrier();
            }
            let incl = scan[li];
            if (incl - v <= rank && rank < incl) {
                sel_digit = li;
                sel_rank = rank - (incl - v);
                sel_equal = v;
            }
            let digit = workgroupUniformLoad(&sel_digit);
            rank = workgroupUniformLoad(&sel_rank);
            equal = workgroupUniformLoad(&sel_equal);
            prefix = prefix | (digit << shift);
            mask = mask | (255u << shift);
        }
        // prefix is the key of rank lo; `equal - rank` copies of it lie at ranks >= lo.
        let copies = equal - rank;
        for (var t = li; t < n; t = t + 256u) {
            let k = sk[h.koff + t];
            if (k > prefix && k != NONE) {
                let i = atomicAdd(&tail_n, 1u);
                if (i < TAIL) { tail[i] = k; }
            }
        }
        workgroupBarrier();
        if (li == 0u) { above = atomicLoad(&tail_n); }
        let m = workgroupUniformLoad(&above);
        if (m <= TAIL) {
            var size = 1u;
            while (size < m) { size = size << 1u; }
            for (var i = m + li; i < size; i = i + 256u) { tail[i] = NONE; }
            workgroupBarrier();
            for (var k = 2u; k <= size; k = k << 1u) {
                for (var j = k >> 1u; j > 0u; j = j >> 1u) {
                    for (var i = li; i < size; i = i + 256u) {
                        let l = i ^ j;
                        if (l > i) {
                            let x = tail[i];
                            let y = tail[l];
                            if ((x > y) == ((i & k) == 0u)) {
                                tail[i] = y;
                                tail[l] = x;
                            }
                        }
                    }
                    workgroupBarrier();
                }
            }
            for (var i = li; i < copies; i = i + 256u) {
                out[o_upper(h) + i] = bits_of(prefix);
            }
            for (var i = li; i < m; i = i + 256u) {
                out[o_upper(h) + copies + i] = bits_of(tail[i]);
            }
        } else {
            for (var t = n + li; t < h.sort_n; t = t + 256u) {
                sk[h.koff + t] = NONE;
            }
            storageBarrier();
            for (var k = 2u; k <= h.sort_n; k = k << 1u) {
                for (var j = k >> 1u; j > 0u; j = j >> 1u) {
                    for (var i = li; i < h.sort_n; i = i + 256u) {
                        let l = i ^ j;
                        if (l > i) {
                            let x = sk[h.koff + i];
                            let y = sk[h.koff + l];
                            if ((x > y) == ((i & k) == 0u)) {
                                sk[h.koff + i] = y;
                                sk[h.koff + l] = x;
                            }
                        }
                    }
                    storageBarrier();
                }
            }
            for (var i = lo + li; i < nf; i = i + 256u) {
                out[o_upper(h) + i - lo] = bits_of(sk[h.koff + i]);
            }
        }
    }
    if (li == 0u) {
        out[h.ooff + 1u] = nf;
        out[h.ooff + 2u] = ring;
        out[h.ooff + 3u] = nf - lo;
    }
}
