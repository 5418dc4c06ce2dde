#![allow(dead_code)]
use rackwatch_anomaly::Matrix;

/// Small deterministic RNG (xorshift64*), Box–Muller normals.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// `n` rows of `d` correlated metrics: shared daily-ish cycles plus per-metric noise.
pub fn synthetic(n: usize, d: usize, start: usize, rng: &mut Rng) -> Matrix {
    let mut data = Vec::with_capacity(n * d);
    let mut load = 0.0f64;
    for i in 0..n {
        let t = (start + i) as f64;
        load = 0.95 * load + 0.05 * rng.normal();
        let a = (t / 60.0).sin();
        let b = (t / 17.0).cos();
        for j in 0..d {
            let w = (j as f64 + 1.0) / d as f64;
            let v = 0.5 + 0.2 * (w * a + (1.0 - w) * b) + 0.3 * load + 0.02 * rng.normal();
            data.push(v as f32);
        }
    }
    Matrix::new(n, d, data)
}
