//! Integration tests: the real server, a real Postgres, real HTTP.

mod abuse;
mod agent;
mod alerts;
mod anomalies;
mod browser;
mod capacity;
mod cli;
mod dashboard;
mod demo;
mod energy;
mod forecasts;
mod ingest;
mod managed_pg;
mod metric_table;
mod nvml;
mod openapi;
mod pages;
mod rollups;
mod support;
