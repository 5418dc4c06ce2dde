// Standardizing many hosts' raw training rows on the device, in place.
//
// Host h's raw rows (n x d) sit in z at zoff + lags * d; `lags` rows in front are left for the
// padding. Three passes:
//
// * `stats`, one workgroup per 256-row chunk of a host (16 metric lanes x 16 row lanes): each
//   metric's chunk mean and sum of squared deviations from it, in f64 (the sum, then the
//   deviations: two passes over 16 rows a thread), to `mom` at moff + (chunk * d + j) * 2;
// * `merge`, one workgroup per host: the chunks combined in f64 (Chan, Golub and LeVeque's
//   pairwise update: 16 lanes of strided chunks, then the lanes in order), which equals the
//   two-pass mean and variance of all rows up to f64 rounding; writes mean (as f32) and
//   1 / max(std, floor) to the host's output summary. A chunk workgroup reads 16 rows a thread
//   where one workgroup per host read 630: a week of minutes costs two short passes instead
//   of one long one;
// * `apply` (256 threads x 4 values per workgroup) replaces each value v by
//   (v - mean) * inv_std in f32, the CPU's expression, and the threads of row 0 also write the
//   padding rows (row 0 repeated `lags` times).

// (train_common.wgsl is prepended.)

@group(0) @binding(0) var<storage, read_write> z: array<f32>;
@group(0) @binding(1) var<storage, read> hosts: array<Host>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<storage, read> blocks: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> mom: array<f64>;
@group(0) @binding(6) var<storage, read> chunks: array<vec2<u32>>;

const SROWS: u32 = 256u;

var<workgroup> lanes: array<f64, 256>;
var<workgroup> lanes_n: array<f64, 256>;
var<workgroup> lanes_q: array<f64, 256>;
var<workgroup> means: array<f64, 16>;

@compute @workgroup_size(256, 1, 1)
fn stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let it = chunks[w];
    let h = hosts[it.x];
    let c = it.y;
    let jl = li % 16u;
    let rl = li / 16u;
    let base = h.zoff + h.lags * h.d;
    let t0 = c * SROWS;
    let t1 = min(t0 + SROWS, h.n);
    for (var j0 = 0u; j0 < h.d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var s = 0.0lf;
        if (j < h.d) {
            for (var t = t0 + rl; t < t1; t = t + 16u) {
                s = s + f64(z[base + t * h.d + j]);
            }
        }
        lanes[li] = s;
        workgroupBarrier();
        if (rl == 0u) {
            var m = 0.0lf;
            for (var r = 0u; r < 16u; r = r + 1u) {
                m = m + lanes[r * 16u + jl];
            }
            means[jl] = m / f64(t1 - t0);
        }
        workgroupBarrier();
        let m = means[jl];
        var q = 0.0lf;
        if (j < h.d) {
            for (var t = t0 + rl; t < t1; t = t + 16u) {
                let v = f64(z[base + t * h.d + j]) - m;
                q = q + v * v;
            }
        }
        lanes[li] = q;
        workgroupBarrier();
        if (rl == 0u && j < h.d) {
            var v = 0.0lf;
            for (var r = 0u; r < 16u; r = r + 1u) {
                v = v + lanes[r * 16u + jl];
            }
            let at = h.moff + (c * h.d + j) * 2u;
            mom[at] = m;
            mom[at + 1u] = v;
        }
        workgroupBarrier();
    }
}

// (count, mean, squared deviations) of a and b together.
fn combine(na: f64, ma: f64, qa: f64, nb: f64, mb: f64, qb: f64) -> vec3<f64> {
    if (nb == 0.0lf) { return vec3<f64>(na, ma, qa); }
    if (na == 0.0lf) { return vec3<f64>(nb, mb, qb); }
    let n = na + nb;
    let delta = mb - ma;
    return vec3<f64>(n, ma + delta * (nb / n), qa + qb + delta * delta * (na * nb / n));
}

@compute @workgroup_size(256, 1, 1)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    let jl = li % 16u;
    let rl = li / 16u;
    let nc = (h.n + SROWS - 1u) / SROWS;
    for (var j0 = 0u; j0 < h.d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var acc = vec3<f64>(0.0lf, 0.0lf, 0.0lf);
        if (j < h.d) {
            for (var c = rl; c < nc; c = c + 16u) {
                let at = h.moff + (c * h.d + j) * 2u;
                let cnt = f64(min((c + 1u) * SROWS, h.n) - c * SROWS);
                acc = combine(acc.x, acc.y, acc.z, cnt, mom[at], mom[at + 1u]);
            }
        }
        lanes_n[li] = acc.x;
        lanes[li] = acc.y;
        lanes_q[li] = acc.z;
        workgroupBarrier();
        if (rl == 0u && j < h.d) {
            var all = vec3<f64>(0.0lf, 0.0lf, 0.0lf);
            for (var r = 0u; r < 16u; r = r + 1u) {
                let k = r * 16u + jl;
                all = combine(all.x, all.y, all.z, lanes_n[k], lanes[k], lanes_q[k]);
            }
            let sd = f32(sqrt(all.z / f64(h.n)));
            out[o_mean(h) + j] = bitcast<u32>(f32(all.y));
            out[o_std(h) + j] = bitcast<u32>(1.0 / max(sd, h.std_floor));
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256, 1, 1)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let it = blocks[w];
    let h = hosts[it.x];
    let total = h.n * h.d;
    let base = h.zoff + h.lags * h.d;
    for (var e = 0u; e < 4u; e = e + 1u) {
        let i = it.y * 1024u + e * 256u + li;
        if (i < total) {
            let j = i % h.d;
            let v = (z[base + i] - bitcast<f32>(out[o_mean(h) + j])) * bitcast<f32>(out[o_std(h) + j]);
            z[base + i] = v;
            if (i < h.d) {
                for (var k = 0u; k < h.lags; k = k + 1u) {
                    z[h.zoff + k * h.d + j] = v;
                }
            }
        }
    }
}
