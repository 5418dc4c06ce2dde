// The calibration of many hosts' alert levels, on the device: one workgroup per host, from the
// absolute training residuals left in `resid` by residuals.wgsl. (train_common.wgsl is
// prepended.)
//
// 1. residual scales inv[j] = 1 / max(sqrt(sum_t a[t, j]^2 / n), floor): 16 metric lanes x 16
//    row lanes, blocked f32 sums of 64 rows, the lanes added in workgroup memory;
// 2. each row's energy sum sum_j min(a[t, j] * inv[j], clip)^2;
// 3. the calibration scores: the moving average of the row sums over d (the average is linear
//    and the same for every metric, so this is the mean of the per-metric averages), a blocked
//    scan (each thread a run of rows, the runs' carries chained on one thread);
// 4. the drift guard's memory (every `stride`-th score, the last `cap`);
// 5. the per-metric moving averages the stream continues from, rebuilt from the last 256 rows
//    (an older row's weight is (11/13)^256 ≈ 1e-19 for the job's span, far below f32
//    resolution);
// 6. the history rows (the last `lags` standardized rows);
// 7. the scores sorted (bitonic, on order-preserving u32 keys, in the scratch buffer) and the
//    upper tail the POT fit reads: the finite scores from rank floor(q · (finite − 1)) up.

@group(0) @binding(0) var<storage, read> resid: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> hosts: array<Host>;
@group(0) @binding(3) var<storage, read> hostf: array<HostF>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> sk: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

var<workgroup> lanes: array<f32, 256>;
var<workgroup> decays: array<f32, 256>;
var<workgroup> finite: atomic<u32>;

const NONE: u32 = 0xffffffffu;

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

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    let n = h.n;
    let d = h.d;
    if (li == 0u) { atomicStore(&finite, 0u); }

    // 1. Residual scales.
    let jl = li % 16u;
    let rl = li / 16u;
    for (var j0 = 0u; j0 < d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var total = 0.0;
        if (j < d) {
            var blk = 0.0;
            var cnt = 0u;
            for (var t = rl; t < n; t = t + 16u) {
                let a = resid[h.roff + t * d + j];
                blk = fma(a, a, blk);
                cnt = cnt + 1u;
                if (cnt == 64u) {
                    total = total + blk;
                    blk = 0.0;
                    cnt = 0u;
                }
            }
            total = total + blk;
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

    // 2. Row energy sums.
    for (var t = li; t < n; t = t + 256u) {
        let row = h.roff + t * d;
        var s = 0.0;
        for (var j = 0u; j < d; j = j + 1u) {
            let r = min(resid[row + j] * bitcast<f32>(out[o_inv(h) + j]), h.clip);
            s = fma(r, r, s);
        }
        sk[h.soff + t] = bitcast<u32>(s);
    }
    storageBarrier();

    // 3. Calibration scores: s_0 = r_0, s_t = s_t-1 + alpha (r_t - s_t-1), as a blocked scan.
    //    Each thread owns a run of rows; it folds its run from zero (the run's own part, and
    //    the decay (1 - alpha)^len), thread 0 chains the 256 carries, then every thread redoes
    //    its run from its carry with the sequential recurrence. Thread 0's run starts from r_0
    //    itself, so a run's values differ from the one-thread recurrence only by the rounding
    //    of its carry.
    let inv_d = 1.0 / f32(d);
    let per = (n + 255u) / 256u;
    let t0 = min(li * per, n);
    let t1 = min(t0 + per, n);
    var part = 0.0;
    var decay = 1.0;
    for (var t = t0; t < t1; t = t + 1u) {
        let r = bitcast<f32>(sk[h.soff + t]);
        if (t == 0u) { part = r; } else { part = part + h.alpha * (r - part); }
        decay = decay * (1.0 - h.alpha);
    }
    lanes[li] = part;
    decays[li] = decay;
    workgroupBarrier();
    if (li == 0u) {
        // lanes[b] becomes the score at the end of run b (the carry into run b + 1).
        var carry = lanes[0];
        for (var b = 1u; b < 256u; b = b + 1u) {
            carry = decays[b] * carry + lanes[b];
            lanes[b] = carry;
        }
    }
    workgroupBarrier();
    var sum = 0.0;
    if (li > 0u) { sum = lanes[li - 1u]; }
    for (var t = t0; t < t1; t = t + 1u) {
        let r = bitcast<f32>(sk[h.soff + t]);
        if (t == 0u) { sum = r; } else { sum = sum + h.alpha * (r - sum); }
        let s = sum * inv_d;
        let k = key_of(s);
        sk[h.soff + t] = bitcast<u32>(s);
        sk[h.koff + t] = k;
        if (k != NONE) { atomicAdd(&finite, 1u); }
    }
    for (var t = n + li; t < h.sort_n; t = t + 256u) {
        sk[h.koff + t] = NONE;
    }
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

    // 5. Per-metric moving averages from the last rows.
    let tail = min(n, 256u);
    for (var j = li; j < d; j = j + 256u) {
        let inv = bitcast<f32>(out[o_inv(h) + j]);
        var m = 0.0;
        for (var t = n - tail; t < n; t = t + 1u) {
            let r = min(resid[h.roff + t * d + j] * inv, h.clip);
            let e = r * r;
            if (t == n - tail) { m = e; } else { m = m + h.alpha * (e - m); }
        }
        out[o_ema(h) + j] = bitcast<u32>(m);
    }

    // 6. History.
    for (var i = li; i < h.lags * d; i = i + 256u) {
        out[o_hist(h) + i] = bitcast<u32>(z[h.zoff + n * d + i]);
    }

    // 7. Sort the keys, then the upper tail.
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
    let nf = atomicLoad(&finite);
    var lo = 0u;
    if (nf > 0u) {
        lo = u32(floor(hostf[w].q * f64(nf - 1u)));
    }
    for (var i = lo + li; i < nf; i = i + 256u) {
        out[o_upper(h) + i - lo] = bits_of(sk[h.koff + i]);
    }
    if (li == 0u) {
        out[h.ooff + 1u] = nf;
        out[h.ooff + 2u] = ring;
        out[h.ooff + 3u] = nf - lo;
    }
}
