//! The analytics layer: jobs that turn rollups into forecasts, anomaly scores and energy
//! accounting, and those into capacity recommendations. The models live in workspace
//! crates.

pub mod anomaly;
pub mod capacity;
pub mod energy;
pub mod forecast;
