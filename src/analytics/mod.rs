//! The analytics layer: jobs that turn rollups into forecasts (and, later, anomaly
//! scores and capacity recommendations). The models live in workspace crates.

pub mod energy;
pub mod forecast;
