// Partial Gram matrices of the lag windows of many hosts, tiled.
//
// Host h's window matrix W (n rows, m = (lags + 1) * d columns) has W[t, c] = z[zoff + t*d + c]:
// the lagged inputs followed by the target, so W^T W holds X^T X and X^T Y, and the column sums
// of W the constant feature's row. One workgroup computes one 64 x 64 tile (ti <= tj) of
// W^T W over one chunk of `chunk_rows` rows, staging 16 rows of both column ranges in
// workgroup memory at a time (2 x 4 KiB); each of its 16 x 16 threads accumulates a 4 x 4 block
// in f32 registers, block by block (16 rows, then into the chunk sum). It also writes the
// column sums of the tile's row range. The chunk partials are summed by cross_reduce.wgsl.
//
// Work items (job, ti, tj, chunk) come from a table, so hosts of any size share one dispatch;
// the dispatch is 2-D (x wraps at `nx`) to stay under 65535 workgroups per dimension.

struct Job { zoff: u32, n: u32, d: u32, m: u32 };
struct Params { count: u32, nx: u32, chunk_rows: u32, pad: u32 };

@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> jobs: array<Job>;
@group(0) @binding(2) var<storage, read> items: array<vec4<u32>>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

const T: u32 = 64u;        // tile edge
const K: u32 = 16u;        // rows staged per step
const ENTRY: u32 = 4160u;  // T * T products + T column sums per work item

// [row k][column group q] = columns 4q .. 4q + 3 of staged row k.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

fn ld(base: u32, col: u32, m: u32) -> f32 {
    if (col < m) { return z[base + col]; }
    return 0.0;
}

fn ld4(base: u32, col: u32, m: u32) -> vec4<f32> {
    return vec4<f32>(ld(base, col, m), ld(base, col + 1u, m), ld(base, col + 2u, m), ld(base, col + 3u, m));
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let it = items[w];
    let job = jobs[it.x];
    let i0 = it.y * T;
    let j0 = it.z * T;
    let t0 = it.w * p.chunk_rows;
    let t1 = min(t0 + p.chunk_rows, job.n);
    let tx = lid.x;
    let ty = lid.y;
    // Staging: thread li loads row li / 16, columns 4 (li % 16) .. + 3, of both ranges.
    let lk = li / 16u;
    let lc = (li % 16u) * 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var cs = vec4<f32>(0.0);
    for (var t = t0; t < t1; t = t + K) {
        let row = t + lk;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if (row < t1) {
            let base = job.zoff + row * job.d;
            a = ld4(base, i0 + lc, job.m);
            b = ld4(base, j0 + lc, job.m);
        }
        As[li] = a;
        Bs[li] = b;
        workgroupBarrier();
        // Blocked summation: the 16 staged rows are summed in fresh registers, then added to
        // the chunk sums, so a chunk's rounding bound is (16 + 16) ulps instead of 256.
        var b0 = vec4<f32>(0.0);
        var b1 = vec4<f32>(0.0);
        var b2 = vec4<f32>(0.0);
        var b3 = vec4<f32>(0.0);
        var bs = vec4<f32>(0.0);
        for (var k = 0u; k < K; k = k + 1u) {
            let av = As[k * 16u + ty];
            let bv = Bs[k * 16u + tx];
            b0 = fma(vec4<f32>(av.x), bv, b0);
            b1 = fma(vec4<f32>(av.y), bv, b1);
            b2 = fma(vec4<f32>(av.z), bv, b2);
            b3 = fma(vec4<f32>(av.w), bv, b3);
            bs = bs + av;
        }
        acc0 = acc0 + b0;
        acc1 = acc1 + b1;
        acc2 = acc2 + b2;
        acc3 = acc3 + b3;
        cs = cs + bs;
        workgroupBarrier();
    }
    let slot = w * ENTRY;
    let r0 = ty * 4u;
    let c0 = tx * 4u;
    for (var c = 0u; c < 4u; c = c + 1u) {
        part[slot + (r0 + 0u) * T + c0 + c] = acc0[c];
        part[slot + (r0 + 1u) * T + c0 + c] = acc1[c];
        part[slot + (r0 + 2u) * T + c0 + c] = acc2[c];
        part[slot + (r0 + 3u) * T + c0 + c] = acc3[c];
    }
    if (tx == 0u) {
        for (var r = 0u; r < 4u; r = r + 1u) {
            part[slot + T * T + r0 + r] = cs[r];
        }
    }
}
