// Residual scales of many hosts from their absolute training residuals (left on the device
// by residuals.wgsl): inv[j] = 1 / max(sqrt(sum_t a[t, j]^2 / n), floor). One workgroup per
// host; 16 metric lanes x 16 row lanes, each summing every 16th row in blocks of 64 rows
// (blocked f32 summation), then the 16 row lanes are added in workgroup memory.

struct Host { roff: u32, n: u32, d: u32, coff: u32, floor: f32, clip: f32, tail: u32, pad: u32 };
struct Params { count: u32, nx: u32, pad0: u32, pad1: u32 };

@group(0) @binding(0) var<storage, read> resid: array<f32>;
@group(0) @binding(1) var<storage, read> hosts: array<Host>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> lanes: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    let jl = li % 16u;
    let rl = li / 16u;
    for (var j0 = 0u; j0 < h.d; j0 = j0 + 16u) {
        let j = j0 + jl;
        var total = 0.0;
        if (j < h.d) {
            var blk = 0.0;
            var cnt = 0u;
            for (var t = rl; t < h.n; t = t + 16u) {
                let a = resid[h.roff + t * h.d + j];
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
        if (rl == 0u && j < h.d) {
            var s = 0.0;
            for (var r = 0u; r < 16u; r = r + 1u) {
                s = s + lanes[r * 16u + jl];
            }
            out[h.coff + j] = 1.0 / max(sqrt(s / f32(h.n)), h.floor);
        }
        workgroupBarrier();
    }
}
