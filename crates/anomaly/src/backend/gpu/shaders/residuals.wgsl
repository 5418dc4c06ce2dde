// Absolute residuals of the lag-window linear predictor for many hosts, tiled.
//
// a[t, j] = |z[t + lags, j] - sum_f x[t, f] * w[f, j] - bias[j]|, with x[t, f] = z[zoff + t*d + f]
// (the lags rows before the target, flattened) and f < lags * d. One workgroup computes 64 rows
// x 16 metrics of one host, staging 16 features of those rows (4 KiB) and the matching 16 x 16
// weights (1 KiB) in workgroup memory per step; each thread accumulates 4 rows of one metric in
// f32, in the CPU backend's order (features ascending from 0, then the intercept).
//
// In energy mode (`p.energy == 1`, scoring) it writes min(a * inv[j], clip)^2 instead, the CPU's
// expression, with inv[j] read from wts at `ioff` (a resident model: weights, bias, scales).
// In training mode (`p.energy == 2`) it writes the residuals and, at out[ioff + block * d + j],
// each metric's sum of squared residuals over the workgroup's 64 rows (the residual scales'
// partial sums: the calibration adds n / 64 of them per metric instead of n residuals).

struct Job { zoff: u32, n: u32, d: u32, lags: u32, woff: u32, roff: u32, ioff: u32, clip: f32 };
struct Params { count: u32, nx: u32, energy: u32, pad1: u32 };

@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> wts: array<f32>;
@group(0) @binding(2) var<storage, read> jobs: array<Job>;
@group(0) @binding(3) var<storage, read> items: array<vec4<u32>>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const TR: u32 = 64u;  // rows per workgroup
const TM: u32 = 16u;  // metrics per workgroup
const KF: u32 = 16u;  // features staged per step

var<workgroup> Xs: array<f32, 1024>;  // [row][feature]
var<workgroup> Ws: array<f32, 256>;   // [feature][metric]
var<workgroup> Sq: array<f32, 256>;   // [row group][metric] sums of squares (training mode)

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let it = items[w];
    let job = jobs[it.x];
    let r0 = it.y * TR;
    let j0 = it.z * TM;
    let fx = job.lags * job.d;
    let tx = lid.x;  // metric j0 + tx
    let ty = lid.y;  // rows r0 + 4 ty .. + 3
    var acc = vec4<f32>(0.0);
    for (var f0 = 0u; f0 < fx; f0 = f0 + KF) {
        for (var e = 0u; e < 4u; e = e + 1u) {
            let idx = li + e * 256u;
            let r = idx / KF;
            let f = idx % KF;
            let t = r0 + r;
            var v = 0.0;
            if (t < job.n && f0 + f < fx) { v = z[job.zoff + t * job.d + f0 + f]; }
            Xs[idx] = v;
        }
        {
            let f = li / TM;
            let j = li % TM;
            var v = 0.0;
            if (f0 + f < fx && j0 + j < job.d) { v = wts[job.woff + (f0 + f) * job.d + j0 + j]; }
            Ws[li] = v;
        }
        workgroupBarrier();
        for (var f = 0u; f < KF; f = f + 1u) {
            let wv = Ws[f * TM + tx];
            let xv = vec4<f32>(Xs[(ty * 4u) * KF + f], Xs[(ty * 4u + 1u) * KF + f],
                               Xs[(ty * 4u + 2u) * KF + f], Xs[(ty * 4u + 3u) * KF + f]);
            acc = fma(xv, vec4<f32>(wv), acc);
        }
        workgroupBarrier();
    }
    let j = j0 + tx;
    var sq = 0.0;
    if (j < job.d) {
        let bias = wts[job.woff + fx * job.d + j];
        for (var r = 0u; r < 4u; r = r + 1u) {
            let t = r0 + ty * 4u + r;
            if (t < job.n) {
                let y = z[job.zoff + (t + job.lags) * job.d + j];
                let a = abs(y - acc[r] - bias);
                if (p.energy == 1u) {
                    let s = min(a * wts[job.ioff + j], job.clip);
                    out[job.roff + t * job.d + j] = s * s;
                } else {
                    out[job.roff + t * job.d + j] = a;
                    sq = fma(a, a, sq);
                }
            }
        }
    }
    if (p.energy == 2u) {
        Sq[li] = sq;
        workgroupBarrier();
        if (ty == 0u && j < job.d) {
            var s = 0.0;
            for (var r = 0u; r < 16u; r = r + 1u) {
                s = s + Sq[r * 16u + tx];
            }
            out[job.ioff + it.y * job.d + j] = s;
        }
    }
}
