// Per-row energy sums of many hosts' training residuals: sum_j min(a[t, j] * inv[j], clip)^2,
// the row's calibration score before the (linear) moving average, and a copy of the absolute
// residuals of the last `tail` rows (the stream's final per-metric state is computed from
// them on the host). One thread per row; 256 rows per workgroup.
//
// Output per host at coff: inv (d, from scales.wgsl), row sums (n), tail rows (tail x d).

struct Host { roff: u32, n: u32, d: u32, coff: u32, floor: f32, clip: f32, tail: u32, pad: u32 };
struct Params { count: u32, nx: u32, pad0: u32, pad1: u32 };

@group(0) @binding(0) var<storage, read> resid: array<f32>;
@group(0) @binding(1) var<storage, read> hosts: array<Host>;
@group(0) @binding(2) var<storage, read> items: array<vec2<u32>>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let it = items[w];
    let h = hosts[it.x];
    let t = it.y * 256u + li;
    if (t >= h.n) { return; }
    let row = h.roff + t * h.d;
    var s = 0.0;
    for (var j = 0u; j < h.d; j = j + 1u) {
        let r = min(resid[row + j] * out[h.coff + j], h.clip);
        s = fma(r, r, s);
    }
    out[h.coff + h.d + t] = s;
    let first = h.n - h.tail;
    if (t >= first) {
        let at = h.coff + h.d + h.n + (t - first) * h.d;
        for (var j = 0u; j < h.d; j = j + 1u) {
            out[at + j] = resid[row + j];
        }
    }
}
