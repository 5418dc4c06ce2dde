// Shared by the device-training kernels (prepended to each by the backend): one record per
// host, its f64 settings, a pass's parameters, and the layout of a host's output summary.
//
// Per host: zoff (series), woff (weights), roff (training residuals) and poff (their sums of
// squares per 64-row block, after the residuals) in floats; ooff (summary) in words; soff
// (calibration scores) and koff (their sort keys) in words; aoff (solve scratch: A, B) and
// moff (per-chunk mean and squared deviations of each metric) in f64s.
//
// Summary (u32 words from ooff): status (0 ok, 1 not positive definite), finite calibration
// scores, ring length, upper-tail length; then mean (d), 1 / std (d), weights (lags·d·d),
// bias (d), 1 / residual scale (d), moving averages (d), history (lags·d), ring (ring_cap),
// upper tail (the sorted finite scores from rank floor(q · (finite − 1)) up).

struct Host {
    zoff: u32, n: u32, d: u32, lags: u32,
    woff: u32, roff: u32, ooff: u32, soff: u32,
    koff: u32, sort_n: u32, aoff: u32, pair0: u32,
    tiles: u32, stride: u32, cap: u32, ring_cap: u32,
    std_floor: f32, resid_floor: f32, clip: f32, alpha: f32,
    poff: u32, moff: u32, pad2: u32, pad3: u32,
};
struct HostF { ridge: f64, q: f64 };
struct Params { count: u32, nx: u32, pad0: u32, pad1: u32 };

const HEADER: u32 = 4u;

fn o_mean(h: Host) -> u32 { return h.ooff + HEADER; }
fn o_std(h: Host) -> u32 { return o_mean(h) + h.d; }
fn o_w(h: Host) -> u32 { return o_std(h) + h.d; }
fn o_bias(h: Host) -> u32 { return o_w(h) + h.lags * h.d * h.d; }
fn o_inv(h: Host) -> u32 { return o_bias(h) + h.d; }
fn o_ema(h: Host) -> u32 { return o_inv(h) + h.d; }
fn o_hist(h: Host) -> u32 { return o_ema(h) + h.d; }
fn o_ring(h: Host) -> u32 { return o_hist(h) + h.lags * h.d; }
fn o_upper(h: Host) -> u32 { return o_ring(h) + h.ring_cap; }
