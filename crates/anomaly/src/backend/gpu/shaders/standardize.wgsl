// Standardizing many hosts' raw training rows on the device, in place.
//
// Host h's raw rows (n x d) sit in z at zoff + lags * d; `lags` rows in front are left for the
// padding. `stats` (one workgroup per host) sums each metric in f64, as the CPU does: 16 metric
// lanes x 16 row lanes, the lanes added in workgroup memory; then the squared deviations from
// that mean, again in f64. It writes mean (as f32) and 1 / max(std, floor) to the host's output
// summary. `apply` (256 threads x 4 values per workgroup) replaces each value v by
// (v - mean) * inv_std in f32, the CPU's expression, and the threads of row 0 also write the
// padding rows (row 0 repeated `lags` times).

// (train_common.wgsl is prepended.)

@group(0) @binding(0) var<storage, read_write> z: array<f32>;
@group(0) @binding(1) var<storage, read> hosts: array<Host>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
@group(0) @binding(4) var<storage, read> blocks: array<vec2<u32>>;

var<workgroup> lanes: array<f64, 256>;
var<workgroup> means: array<f64, 16>;

@compute @workgroup_size(256, 1, 1)
fn stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    let jl = li % 16u;
    let rl = li / 16u;
    let base = h.zoff + h.lags * h.d;
    for (var j0 = 0u; j0 < h.d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var s = 0.0lf;
        if (j < h.d) {
            for (var t = rl; t < h.n; t = t + 16u) {
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
            means[jl] = m / f64(h.n);
        }
        workgroupBarrier();
        let m = means[jl];
        var q = 0.0lf;
        if (j < h.d) {
            for (var t = rl; t < h.n; t = t + 16u) {
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
            let sd = f32(sqrt(v / f64(h.n)));
            out[o_mean(h) + j] = bitcast<u32>(f32(m));
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
