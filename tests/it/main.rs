//! Integration tests: the real server, a real Postgres, real HTTP.

mod agent;
mod browser;
mod cli;
mod dashboard;
mod ingest;
mod managed_pg;
mod openapi;
mod pages;
mod rollups;
mod support;
