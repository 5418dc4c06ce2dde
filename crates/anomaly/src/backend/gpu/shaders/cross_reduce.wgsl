// Sum the chunk partials of every (host, tile pair) entry: pairwise (cascade) summation in
// f32, so the rounding error grows with log2(chunks), not with the number of chunks. A
// compensated (Kahan) sum would be as accurate, but a driver compiler is free to reassociate
// it away; pairwise sums hold under any evaluation order of each addition.

struct Params { count: u32, nx: u32, pad0: u32, pad1: u32 };

@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read> pairs: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const ENTRY: u32 = 4160u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.y * (p.nx * 256u) + gid.x;
    if (idx >= p.count) { return; }
    let pr = idx / ENTRY;
    let e = idx % ENTRY;
    let q = pairs[pr];
    // Binary-counter cascade: level[k] holds the sum of a completed block of 2^k chunks.
    var level: array<f32, 32>;
    var count = 0u;
    for (var c = 0u; c < q.y; c = c + 1u) {
        var s = part[(q.x + c) * ENTRY + e];
        var k = 0u;
        var bits = count;
        while ((bits & 1u) == 1u) {
            s = level[k] + s;
            bits = bits >> 1u;
            k = k + 1u;
        }
        level[k] = s;
        count = count + 1u;
    }
    var total = 0.0;
    var bits = count;
    var k = 0u;
    while (bits != 0u) {
        if ((bits & 1u) == 1u) { total = total + level[k]; }
        bits = bits >> 1u;
        k = k + 1u;
    }
    out[idx] = total;
}
