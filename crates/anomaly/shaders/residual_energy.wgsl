// Residual energy of the lag-window linear predictor: one invocation per (row t, metric j).
// e[t, j] = min(|zpad[t + lags, j] - bias[j] - sum_f zpad[t*d + f] * w[f*d + j]| * inv_scale[j], clip)^2
struct Params { n: u32, d: u32, lags: u32, row_stride: u32, clip: f32, _p0: f32, _p1: f32, _p2: f32 };

@group(0) @binding(0) var<storage, read> zpad: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> inv_scale: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.y * p.row_stride + gid.x;
    if (idx >= p.n * p.d) { return; }
    let t = idx / p.d;
    let j = idx % p.d;
    let fx = p.lags * p.d;
    let base = t * p.d;
    var acc = bias[j];
    for (var f = 0u; f < fx; f = f + 1u) {
        acc = acc + zpad[base + f] * w[f * p.d + j];
    }
    let r = min(abs(zpad[base + fx + j] - acc) * inv_scale[j], p.clip);
    out[idx] = r * r;
}
