//! What every benchmark needs: knobs from the environment, a multi-threaded runtime, and
//! a Postgres cluster of its own with a migrated `bench` database.

#![allow(dead_code)] // each benchmark compiles its own copy and uses part of it

use std::future::Future;
use std::path::PathBuf;

use rackwatch::store::managed::{ManagedOptions, ManagedPostgres};
use rackwatch::store::{create_database_if_missing, Store};

/// A numeric knob from the environment (`BENCH_…`), or its default.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run the benchmark's `main` future on a multi-threaded runtime.
pub fn block_on(f: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// A benchmark's own cluster and its migrated `bench` database.
pub struct BenchDb {
    pub pg: ManagedPostgres,
    pub store: Store,
    pub url: String,
}

/// Start a cluster under `root` with the given server `settings`, create and migrate the
/// `bench` database, and connect a pool of `pool` connections.
pub async fn start_db(root: PathBuf, settings: &[&str], pool: u32) -> BenchDb {
    let opts = ManagedOptions {
        root,
        bin_dir: String::new(),
        user: "postgres".into(),
        settings: settings.iter().map(|s| s.to_string()).collect(),
        own_adopted: true,
        port: rackwatch::store::managed::DEFAULT_PORT,
        standby_of: None,
    };
    let pg = tokio::task::spawn_blocking(move || ManagedPostgres::start(&opts))
        .await
        .unwrap()
        .expect("starting Postgres");
    create_database_if_missing(&pg.admin_url(), "bench")
        .await
        .unwrap();
    let url = pg.url_for("bench");
    let store = Store::connect(&url, pool, 30).await.unwrap();
    store.migrate().await.unwrap();
    BenchDb { pg, store, url }
}
