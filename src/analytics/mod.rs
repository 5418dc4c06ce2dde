//! The analytics layer: jobs that turn rollups into forecasts, anomaly scores and energy
//! accounting (and, later, capacity recommendations). The models live in workspace crates.

pub mod anomaly;
pub mod energy;
pub mod forecast;
