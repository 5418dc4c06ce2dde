//! A primary with a streaming replica: the server follows a multi-host `database.url`
//! to the new primary after a failover without losing an acknowledged sample, and sends
//! history reads to `database.read_url` only while the replica is within its lag bound.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rackwatch::config::Secret;
use rackwatch::store::managed::{ManagedOptions, ManagedPostgres};
use rackwatch::store::{create_database_if_missing, Store};
use serde_json::json;

use crate::support::{cluster_root, fast_settings, recent, TestApp};

/// A primary with a migrated database `rw` and a streaming replica of it, each a managed
/// cluster of its own.
async fn pair(name: &str, synchronous: bool) -> (ManagedPostgres, ManagedPostgres) {
    let root = cluster_root(name);
    let _ = std::fs::remove_dir_all(&root);
    let mut settings = fast_settings();
    if synchronous {
        settings.retain(|s| !s.starts_with("synchronous_commit"));
        settings.push("synchronous_commit=on".into());
    }
    let primary_opts = ManagedOptions {
        root: root.join("a"),
        settings: settings.clone(),
        ..Default::default()
    };
    let primary = tokio::task::spawn_blocking(move || ManagedPostgres::start(&primary_opts))
        .await
        .unwrap()
        .unwrap();
    create_database_if_missing(&primary.admin_url(), "rw")
        .await
        .unwrap();
    let store = Store::connect(&primary.url_for("rw"), 2, 10).await.unwrap();
    store.migrate().await.unwrap();
    store.pool.close().await;
    let standby_opts = ManagedOptions {
        root: root.join("b"),
        settings,
        standby_of: Some(primary.conninfo()),
        ..Default::default()
    };
    let standby = tokio::task::spawn_blocking(move || ManagedPostgres::start(&standby_opts))
        .await
        .unwrap()
        .unwrap();
    if synchronous {
        // From now on a commit returns once the standby has it: what an acknowledged
        // sample relies on. (Set before the standby exists, every commit would wait.)
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&primary.admin_url())
            .await
            .unwrap();
        sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut c)
            .await
            .unwrap();
    }
    (primary, standby)
}

fn batch(host: &str, ts: &[chrono::DateTime<chrono::Utc>], util: f64) -> serde_json::Value {
    json!({"host": {"name": host},
           "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": util})).collect::<Vec<_>>(),
           "gpu_samples": ts.iter().map(|t| json!({"ts": t, "index": 0, "util_pct": util})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn a_multi_host_url_follows_the_primary_across_a_failover() {
    let (mut primary, standby) = pair("failover", true).await;
    // The standby listed first: the router must pass it over for the read-write primary.
    let url = format!(
        "postgres://postgres@localhost/rw?host={},{}&port={},{}&target_session_attrs=read-write",
        standby.socket_dir().display(),
        primary.socket_dir().display(),
        standby.port(),
        primary.port()
    );
    let app = TestApp::spawn_on(url, |_| {}).await;
    let router = app.store.router.clone().expect("a routed store");
    let ro: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(
        ro, "off",
        "connected to the primary, not the standby listed first"
    );
    let token = app.token("f1").await;
    let before = recent(10, 1, 30);
    let r: serde_json::Value = app
        .ingest(&token, &batch("f1", &before, 10.0))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["stored"], 20, "{r}");

    // The primary dies; the standby is promoted (what pg_auto_failover or Patroni do).
    let standby = tokio::task::spawn_blocking(move || {
        primary.stop_immediate();
        standby.promote().unwrap();
        standby
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    let after = recent(10, 1, 0);
    let mut refused = 0;
    loop {
        let r = app.ingest(&token, &batch("f1", &after, 20.0)).await;
        if r.status() == 200 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["stored"], 20, "{v}");
            break;
        }
        // Refused with 503, never lost: the agent keeps the batch and replays it.
        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
        refused += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "ingest did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = t0.elapsed();
    assert!(back < Duration::from_secs(10), "ingest back after {back:?}");
    assert_eq!(router.switches.load(Ordering::Relaxed), 1);
    // Everything acknowledged before the failover is on the new primary, once.
    let (n, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT ts) FROM host_samples")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!((n, distinct), (20, 20), "after {refused} refusals");
    app.stop().await;
    drop(standby);
}

#[tokio::test]
async fn history_reads_go_to_a_replica_within_its_lag_bound() {
    let (primary, standby) = pair("replica", false).await;
    let read_url = standby.url_for("rw");
    let app = TestApp::spawn_on(primary.url_for("rw"), |cfg| {
        cfg.database.read_url = Secret::new(read_url.clone());
        cfg.database.read_max_lag_secs = 2;
    })
    .await;
    let replica = app.store.replica.clone().expect("a read replica");
    let t0 = Instant::now();
    while !replica.healthy() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "replica never healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replica.lag().unwrap() <= Duration::from_secs(2));
    let cookie = app.login("admin", "correct horse battery").await;
    let token = app.token("r1").await;
    let first = recent(5, 1, 20);
    assert_eq!(
        app.ingest(&token, &batch("r1", &first, 10.0))
            .await
            .status(),
        200
    );
    let t0 = Instant::now();
    while history(&app, &cookie).await < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::ptr::eq(app.store.history(), &replica.pool));

    // Replay stops on the replica: what is ingested now is on the primary only.
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&read_url)
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut c)
        .await
        .unwrap();
    let later = recent(3, 1, 0);
    assert_eq!(
        app.ingest(&token, &batch("r1", &later, 30.0))
            .await
            .status(),
        200
    );
    let paused = Instant::now();
    // History may be as old as the bound; "now" is not (it reads the primary).
    assert_eq!(
        history(&app, &cookie).await,
        5,
        "the replica, within its bound, lacks them"
    );
    let host = app.json(&cookie, "/api/v1/hosts/r1").await;
    assert_eq!(host["host"]["cpu_util_pct"], 30.0, "{}", host["host"]);
    // Past the bound the primary serves history: never staler than bound + one check.
    while history(&app, &cookie).await < 8 {
        assert!(
            paused.elapsed() < Duration::from_secs(2 + 2),
            "history stayed stale past the bound (lag {:?})",
            replica.lag()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!replica.healthy());
    assert!(replica.lag().unwrap() > Duration::from_secs(2));
    // Replay resumes: the replica serves again, with everything.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut c)
        .await
        .unwrap();
    let t0 = Instant::now();
    while !replica.healthy() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "replica never healthy again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(history(&app, &cookie).await, 8);
    drop(c);
    app.stop().await;
    drop((primary, standby));
}

/// Raw host samples of `r1` the API returns (a history read).
async fn history(app: &TestApp, cookie: &str) -> usize {
    let v = app.json(cookie, "/api/v1/hosts/r1/samples").await;
    v["host_samples"].as_array().map_or(0, Vec::len)
}
