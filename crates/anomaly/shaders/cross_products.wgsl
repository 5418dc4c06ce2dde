// Partial cross products of the lag-window design matrix X (rows t, features a < F; feature
// F-1 = 1) with [X | Y] (Y = targets): one invocation per (a, b, chunk c) sums rows
// t in [c*chunk, min((c+1)*chunk, n)); the host adds the chunks in f64.
struct Params { n: u32, d: u32, lags: u32, chunk: u32 };

@group(0) @binding(0) var<storage, read> zpad: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn feat(t: u32, a: u32, fx: u32) -> f32 {
    if (a < fx) { return zpad[t * p.d + a]; }
    return 1.0;
}

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let fx = p.lags * p.d;
    let f = fx + 1u;
    let cols = f + p.d;
    let a = gid.x;
    let b = gid.y;
    let c = gid.z;
    if (a >= f || b >= cols) { return; }
    let t0 = c * p.chunk;
    let t1 = min(t0 + p.chunk, p.n);
    var acc = 0.0;
    for (var t = t0; t < t1; t = t + 1u) {
        var y: f32;
        if (b < f) { y = feat(t, b, fx); } else { y = zpad[(t + p.lags) * p.d + (b - f)]; }
        acc = acc + feat(t, a, fx) * y;
    }
    out[(c * f + a) * cols + b] = acc;
}
