// The scoring stream of many hosts: one workgroup per host, from the per-metric energies the
// residual kernel wrote (energy mode) for the host's new rows.
//
// 1. each metric's moving average over the rows (one thread per metric, rows in order, from
//    the stream's state: started or not, the averages so far), written over the energies; the
//    final averages go to the output, where the stream continues from them;
// 2. each row's score (the mean of the averages: their sum in metric order, times 1 / d) and
//    its `k` largest averages (largest first, ties to the lower metric, as a stable sort
//    would), as shares of the row's sum.
//
// Output per host at ooff: n rows of [score, metric_0, share_0, ..., metric_k-1, share_k-1]
// (u32 words; scores and shares as f32 bits), then the d final averages.

struct Host { eoff: u32, n: u32, d: u32, k: u32, soff: u32, started: u32, ooff: u32, alpha: f32 };
struct Params { count: u32, nx: u32, pad0: u32, pad1: u32 };

@group(0) @binding(0) var<storage, read_write> e: array<f32>;
@group(0) @binding(1) var<storage, read> hosts: array<Host>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> state: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    let n = h.n;
    let d = h.d;
    let width = 1u + 2u * h.k;
    for (var j = li; j < d; j = j + 256u) {
        var m = state[h.soff + j];
        var started = h.started != 0u;
        for (var t = 0u; t < n; t = t + 1u) {
            let v = e[h.eoff + t * d + j];
            if (started) { m = m + h.alpha * (v - m); } else { m = v; started = true; }
            e[h.eoff + t * d + j] = m;
        }
        out[h.ooff + n * width + j] = bitcast<u32>(m);
    }
    storageBarrier();
    let inv_d = 1.0 / f32(d);
    for (var t = li; t < n; t = t + 256u) {
        let row = h.eoff + t * d;
        var sum = 0.0;
        for (var j = 0u; j < d; j = j + 1u) {
            sum = sum + e[row + j];
        }
        let o = h.ooff + t * width;
        out[o] = bitcast<u32>(sum * inv_d);
        let total = max(sum, 1.17549435e-38);
        var pv = 0.0;
        var pj = 0u;
        for (var r = 0u; r < h.k; r = r + 1u) {
            var bv = 0.0;
            var bj = d;
            for (var j = 0u; j < d; j = j + 1u) {
                let v = e[row + j];
                let after = r == 0u || v < pv || (v == pv && j > pj);
                if (after && (bj == d || v > bv)) {
                    bv = v;
                    bj = j;
                }
            }
            out[o + 1u + 2u * r] = bj;
            out[o + 2u + 2u * r] = bitcast<u32>(bv / total);
            pv = bv;
            pj = bj;
        }
    }
}
