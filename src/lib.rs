//! Rackwatch: monitoring and capacity planning for GPU fleets.
//!
//! The data path runs one way: `collect` (agent) → `ingest` (HTTP) → `store`
//! (Postgres) → `analytics` → `web` / alerts / reports. Each stage only calls the one
//! to its right through a small interface.

pub mod alert;
pub mod analytics;
pub mod app;
pub mod collect;
pub mod config;
pub mod ingest;
pub mod jobs;
pub mod model;
pub mod report;
pub mod store;
pub mod web;
