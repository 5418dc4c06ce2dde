//! The analytics layer: jobs that turn rollups into forecasts and anomaly scores (and,
//! later, capacity recommendations). The models live in workspace crates.

pub mod anomaly;
pub mod forecast;
