//! Integration tests: the real server, a real Postgres, real HTTP.

mod agent;
mod alerts;
mod cli;
mod forecasts;
mod ingest;
mod managed_pg;
mod nvml;
mod pages;
mod rollups;
mod support;
