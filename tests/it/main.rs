//! Integration tests: the real server, a real Postgres, real HTTP.

mod abuse;
mod agent;
mod alerts;
mod anomalies;
mod browser;
mod capacity;
mod citus;
mod cli;
mod dashboard;
mod energy;
mod forecasts;
mod ingest;
mod load_balancer;
mod managed_pg;
mod metric_table;
mod nvml;
mod openapi;
mod pages;
mod replication;
mod rollups;
mod support;
