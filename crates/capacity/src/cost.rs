//! Cost accounting: idle and unserved GPU-hours of a capacity held against demand samples,
//! the same arithmetic as the shared scorer (`eval/capacity/score.py`).

/// What a capacity timeline cost against the demand it met.
///
/// `cost` is the product's headline: (idle GPU-h + price × unserved GPU-h) divided by
/// (mean demand of the pool's history × scored hours), so 0.30 means the mistakes cost as
/// much as idling 30 % of a typical pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CostSummary {
    /// hours with at least one observed demand sample
    pub hours: f64,
    /// normalized cost (see above); 0 when nothing was scored
    pub cost: f64,
    /// idle GPU-hours / provisioned GPU-hours, percent
    pub slack_pct: f64,
    /// share of samples whose demand exceeded the capacity, percent
    pub shortage_pct: f64,
    /// GPU-hours of demand above the capacity
    pub unserved_gpu_hours: f64,
    /// GPU-hours of capacity above the demand
    pub idle_gpu_hours: f64,
    /// GPU-hours of demand
    pub demand_gpu_hours: f64,
}

/// Running totals behind a [`CostSummary`].
#[derive(Clone, Debug, Default)]
pub(crate) struct CostAcc {
    idle: f64,
    unserved: f64,
    demand: f64,
    provisioned: f64,
    slots: usize,
    short: usize,
    sph: usize,
}

impl CostAcc {
    /// Totals for samples taken `sph` times an hour.
    pub fn new(sph: usize) -> CostAcc {
        CostAcc {
            sph: sph.max(1),
            ..CostAcc::default()
        }
    }

    /// Adds one hour held at `cap` against its samples (NaN samples are skipped).
    pub fn add_hour(&mut self, cap: f64, samples: &[f64]) {
        let dt = 1.0 / self.sph as f64;
        for &d in samples {
            if d.is_nan() {
                continue;
            }
            self.slots += 1;
            self.demand += d * dt;
            self.provisioned += cap * dt;
            if cap > d {
                self.idle += (cap - d) * dt;
            } else if d > cap + 1e-9 {
                self.unserved += (d - cap) * dt;
                self.short += 1;
            }
        }
    }

    /// Adds another accumulator's totals.
    pub fn merge(&mut self, o: &CostAcc) {
        self.idle += o.idle;
        self.unserved += o.unserved;
        self.demand += o.demand;
        self.provisioned += o.provisioned;
        self.slots += o.slots;
        self.short += o.short;
    }

    /// Normalized cost at `price`, `scale` = mean demand of the history.
    pub fn cost(&self, price: f64, scale: f64) -> f64 {
        if self.slots == 0 {
            return 0.0;
        }
        let hours = self.slots as f64 / self.sph as f64;
        let norm = if scale > 1e-9 {
            scale * hours
        } else {
            self.demand.max(1e-12)
        };
        (self.idle + price * self.unserved) / norm
    }

    /// The summary at `price` and history scale `scale`.
    pub fn summary(&self, price: f64, scale: f64) -> CostSummary {
        CostSummary {
            hours: self.slots as f64 / self.sph as f64,
            cost: self.cost(price, scale),
            slack_pct: if self.provisioned > 0.0 {
                100.0 * self.idle / self.provisioned
            } else {
                0.0
            },
            shortage_pct: if self.slots > 0 {
                100.0 * self.short as f64 / self.slots as f64
            } else {
                0.0
            },
            unserved_gpu_hours: self.unserved,
            idle_gpu_hours: self.idle,
            demand_gpu_hours: self.demand,
        }
    }
}

/// Idle + price × unserved GPU-hours of one hour held at `cap` (NaN samples skipped).
pub(crate) fn hour_cost(cap: f64, samples: &[f64], price: f64, sph: usize) -> f64 {
    let mut c = 0.0;
    for &d in samples {
        if d.is_nan() {
            continue;
        }
        if cap > d {
            c += cap - d;
        } else {
            c += price * (d - cap);
        }
    }
    c / sph as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the scorer's README: vcJLV, 2020-05-18 09:00, scale 10.01.
    #[test]
    fn matches_scorer_worked_example() {
        let d = [
            17.0, 17.0, 17.0, 17.0, 17.0, 17.0, 17.0, 17.0, 16.4, 16.0, 16.0, 17.0,
        ];
        let mut a = CostAcc::new(12);
        a.add_hour(16.0, &d);
        assert!((a.cost(20.0, 10.01) - 1.565).abs() < 1e-3);
        let mut a = CostAcc::new(12);
        a.add_hour(17.0, &d);
        assert!((a.cost(20.0, 10.01) - 0.022).abs() < 1e-3);
        let mut a = CostAcc::new(12);
        a.add_hour(20.0, &d);
        let s = a.summary(20.0, 10.01);
        assert!((s.cost - 0.321).abs() < 1e-3);
        assert!((s.idle_gpu_hours - 3.217).abs() < 1e-3);
        assert_eq!(s.shortage_pct, 0.0);
        assert!((hour_cost(16.0, &d, 20.0, 12) - 15.667).abs() < 1e-3);
    }
}
