// The ridge normal equations of many hosts, solved in f64 on the device: one workgroup per
// host. (train_common.wgsl is prepended, and `const SMALL: u32`: the f64s a workgroup may hold.)
//
// From the reduced f32 Gram tiles of host h's lag windows (cross_reduce.wgsl) it assembles, in
// f64 and exactly as the CPU detector does, A = XᵀX + ridge·I (+ 1e-9·n on the intercept) and
// B = XᵀY in a scratch region, factors A = L Lᵀ by Cholesky (left-looking: column j's
// diagonal on one thread, its other entries on all threads, each a sequential dot product in
// the CPU's order), and solves L Lᵀ X = B column by column. The weights (f32) go to the
// weights buffer, where the residual kernel reads them, and to the host's summary. A pivot
// that is not positive marks the host (status 1) instead of stopping the workgroup.
//
// Two entry points run the same steps: `small` holds A and B in workgroup memory (hosts with
// F · (F + d) <= SMALL: the job's 49 x 65 fit in 25 KB), `main` in the scratch buffer (any
// size). A Cholesky step reads a row of L per entry; from workgroup memory that is a few
// cycles, from the scratch buffer a trip to the L2 cache, which made `main` about 0.2 ms a
// host on an H200. With `p.pad0 == 1` (both dispatched) `main` leaves the small hosts alone.

@group(0) @binding(0) var<storage, read> red: array<f32>;
@group(0) @binding(1) var<storage, read> hosts: array<Host>;
@group(0) @binding(2) var<storage, read> hostf: array<HostF>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> a: array<f64>;
@group(0) @binding(5) var<storage, read_write> wts: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

const T: u32 = 64u;
const ENTRY: u32 = 4160u;

var<workgroup> bad: u32;

fn pair_index(ti: u32, tj: u32, tiles: u32) -> u32 {
    return ti * tiles - ti * (ti + 1u) / 2u + tj;
}

// Window Gram entry (i, j), i <= j.
fn gram(h: Host, i: u32, j: u32) -> f64 {
    let q = pair_index(i / T, j / T, h.tiles);
    return f64(red[(h.pair0 + q) * ENTRY + (i % T) * T + j % T]);
}

// Column sum of window column i (the constant feature's products).
fn colsum(h: Host, i: u32) -> f64 {
    let q = pair_index(i / T, i / T, h.tiles);
    return f64(red[(h.pair0 + q) * ENTRY + T * T + i % T]);
}

var<workgroup> sa: array<f64, SMALL>;

fn is_small(h: Host) -> bool {
    let f = h.lags * h.d + 1u;
    return f * (f + h.d) <= SMALL;
}

@compute @workgroup_size(256, 1, 1)
fn small(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    if (!is_small(h)) { return; }
    let ridge = hostf[w].ridge;
    let d = h.d;
    let fx = h.lags * d;
    let f = fx + 1u;
    let A = 0u;
    let B = f * f;
    for (var i = li; i < f * f; i = i + 256u) {
        let r = i / f;
        let c = i % f;
        var v = f64(h.n);
        if (r < fx && c < fx) {
            v = gram(h, min(r, c), max(r, c));
        } else if (r < fx) {
            v = colsum(h, r);
        } else if (c < fx) {
            v = colsum(h, c);
        }
        if (r == c) {
            if (r < fx) { v = v + ridge; } else { v = v + 1e-9lf * f64(h.n); }
        }
        sa[A + i] = v;
    }
    for (var i = li; i < f * d; i = i + 256u) {
        let r = i / d;
        let j = i % d;
        if (r < fx) { sa[B + i] = gram(h, r, fx + j); } else { sa[B + i] = colsum(h, fx + j); }
    }
    if (li == 0u) { bad = 0u; }
    workgroupBarrier();
    for (var j = 0u; j < f; j = j + 1u) {
        if (li == 0u) {
            var s = sa[A + j * f + j];
            for (var k = 0u; k < j; k = k + 1u) {
                let l = sa[A + j * f + k];
                s = s - l * l;
            }
            if (!(s > 0.0lf)) {
                bad = 1u;
                s = 1.0lf;
            }
            sa[A + j * f + j] = sqrt(s);
        }
        workgroupBarrier();
        let l = sa[A + j * f + j];
        for (var i = j + 1u + li; i < f; i = i + 256u) {
            var s = sa[A + i * f + j];
            for (var k = 0u; k < j; k = k + 1u) {
                s = s - sa[A + i * f + k] * sa[A + j * f + k];
            }
            sa[A + i * f + j] = s / l;
        }
        workgroupBarrier();
    }
    for (var c = li; c < d; c = c + 256u) {
        for (var i = 0u; i < f; i = i + 1u) {
            var s = sa[B + i * d + c];
            for (var k = 0u; k < i; k = k + 1u) {
                s = s - sa[A + i * f + k] * sa[B + k * d + c];
            }
            sa[B + i * d + c] = s / sa[A + i * f + i];
        }
        for (var i1 = f; i1 > 0u; i1 = i1 - 1u) {
            let i = i1 - 1u;
            var s = sa[B + i * d + c];
            for (var k = i + 1u; k < f; k = k + 1u) {
                s = s - sa[A + k * f + i] * sa[B + k * d + c];
            }
            sa[B + i * d + c] = s / sa[A + i * f + i];
        }
        for (var r = 0u; r < f; r = r + 1u) {
            let v = f32(sa[B + r * d + c]);
            wts[h.woff + r * d + c] = v;
            out[o_w(h) + r * d + c] = bitcast<u32>(v);
        }
    }
    workgroupBarrier();
    if (li == 0u) { out[h.ooff] = bad; }
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg.y * p.nx + wg.x;
    if (w >= p.count) { return; }
    let h = hosts[w];
    if (p.pad0 == 1u && is_small(h)) { return; }
    let ridge = hostf[w].ridge;
    let d = h.d;
    let fx = h.lags * d;
    let f = fx + 1u;
    let A = h.aoff;
    let B = h.aoff + f * f;
    for (var i = li; i < f * f; i = i + 256u) {
        let r = i / f;
        let c = i % f;
        var v = f64(h.n);
        if (r < fx && c < fx) {
            v = gram(h, min(r, c), max(r, c));
        } else if (r < fx) {
            v = colsum(h, r);
        } else if (c < fx) {
            v = colsum(h, c);
        }
        if (r == c) {
            if (r < fx) { v = v + ridge; } else { v = v + 1e-9lf * f64(h.n); }
        }
        a[A + i] = v;
    }
    for (var i = li; i < f * d; i = i + 256u) {
        let r = i / d;
        let j = i % d;
        if (r < fx) { a[B + i] = gram(h, r, fx + j); } else { a[B + i] = colsum(h, fx + j); }
    }
    if (li == 0u) { bad = 0u; }
    storageBarrier();
    workgroupBarrier();
    for (var j = 0u; j < f; j = j + 1u) {
        if (li == 0u) {
            var s = a[A + j * f + j];
            for (var k = 0u; k < j; k = k + 1u) {
                let l = a[A + j * f + k];
                s = s - l * l;
            }
            if (!(s > 0.0lf)) {
                bad = 1u;
                s = 1.0lf;
            }
            a[A + j * f + j] = sqrt(s);
        }
        storageBarrier();
        let l = a[A + j * f + j];
        for (var i = j + 1u + li; i < f; i = i + 256u) {
            var s = a[A + i * f + j];
            for (var k = 0u; k < j; k = k + 1u) {
                s = s - a[A + i * f + k] * a[A + j * f + k];
            }
            a[A + i * f + j] = s / l;
        }
        storageBarrier();
    }
    for (var c = li; c < d; c = c + 256u) {
        for (var i = 0u; i < f; i = i + 1u) {
            var s = a[B + i * d + c];
            for (var k = 0u; k < i; k = k + 1u) {
                s = s - a[A + i * f + k] * a[B + k * d + c];
            }
            a[B + i * d + c] = s / a[A + i * f + i];
        }
        for (var i1 = f; i1 > 0u; i1 = i1 - 1u) {
            let i = i1 - 1u;
            var s = a[B + i * d + c];
            for (var k = i + 1u; k < f; k = k + 1u) {
                s = s - a[A + k * f + i] * a[B + k * d + c];
            }
            a[B + i * d + c] = s / a[A + i * f + i];
        }
        for (var r = 0u; r < f; r = r + 1u) {
            let v = f32(a[B + r * d + c]);
            wts[h.woff + r * d + c] = v;
            out[o_w(h) + r * d + c] = bitcast<u32>(v);
        }
    }
    workgroupBarrier();
    if (li == 0u) { out[h.ooff] = bad; }
}
