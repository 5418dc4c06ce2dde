//! The schema on Citus: every table has a placement that fits it (checked on plain
//! Postgres too, so a new migration's table is classified before anyone distributes it),
//! and on the Citus cluster of `./scripts/test-citus` samples land on both workers.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use rackwatch::store::citus::{self, Placement, DISTRIBUTION_COLUMN, TABLES};
use serde_json::json;

use crate::support::{citus as on_citus, recent, TestApp};

/// Tables of the migrated schema (partitions and sqlx' own table left out).
async fn schema_tables(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
            AND c.relname NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_table_has_a_citus_placement_that_fits_it() {
    let app = TestApp::spawn().await;
    let tables = schema_tables(&app).await;
    let unlisted: Vec<&String> = tables
        .iter()
        .filter(|t| citus::placement(t).is_none())
        .collect();
    assert!(
        unlisted.is_empty(),
        "tables without a Citus placement (add them to store::citus::TABLES): {unlisted:?}"
    );
    let gone: Vec<&str> = TABLES
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| !tables.iter().any(|s| s == t))
        .collect();
    assert!(
        gone.is_empty(),
        "TABLES lists tables the schema lacks: {gone:?}"
    );

    // What Citus requires of a distributed table: the distribution column, in every
    // primary key and unique constraint.
    let keys: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT c.relname::text, k.contype::text,
                array_agg(a.attname::text ORDER BY a.attnum)
           FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY(k.conkey)
          WHERE k.contype IN ('p', 'u') AND NOT c.relispartition AND c.relnamespace = 'public'::regnamespace
          GROUP BY c.relname, k.conname, k.contype",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    for (table, placement) in TABLES {
        if *placement != Placement::Distributed {
            continue;
        }
        let col: Option<String> = sqlx::query_scalar(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
              WHERE attrelid = $1::regclass AND attname = $2 AND attnotnull",
        )
        .bind(table)
        .bind(DISTRIBUTION_COLUMN)
        .fetch_optional(&app.store.pool)
        .await
        .unwrap();
        assert_eq!(col.as_deref(), Some("bigint"), "{table}.host_id");
        for (t, kind, cols) in keys.iter().filter(|k| k.0 == *table) {
            assert!(
                cols.iter().any(|c| c == DISTRIBUTION_COLUMN),
                "{t}: a {kind} key without host_id cannot be enforced per shard: {cols:?}"
            );
        }
    }
    // Foreign keys: a distributed table may point at a reference table only; a reference
    // table at another reference table; nothing points at a distributed table from
    // another placement.
    let fks: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, r.relname::text FROM pg_constraint k
           JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid
          WHERE k.contype = 'f' AND NOT c.relispartition AND c.relnamespace = 'public'::regnamespace",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    for (from, to) in &fks {
        let (f, t) = (citus::placement(from), citus::placement(to));
        let ok = matches!(
            (f, t),
            (Some(Placement::Distributed), Some(Placement::Reference))
                | (Some(Placement::Reference), Some(Placement::Reference))
                | (Some(Placement::Local), Some(Placement::Local))
        );
        assert!(
            ok,
            "foreign key {from} ({f:?}) → {to} ({t:?}) cannot be kept on Citus"
        );
    }

    if on_citus() {
        // And the database really is laid out so: one co-location group for all
        // distributed tables, every reference table replicated.
        let dist: Vec<(String, String, i32)> = sqlx::query_as(
            "SELECT logicalrelid::regclass::text, partmethod::text, colocationid FROM pg_dist_partition
              WHERE NOT (SELECT relispartition FROM pg_class WHERE oid = logicalrelid)",
        )
        .fetch_all(&app.store.pool)
        .await
        .unwrap();
        let by_name: BTreeMap<&str, (&str, i32)> = dist
            .iter()
            .map(|(t, m, c)| (t.as_str(), (m.as_str(), *c)))
            .collect();
        let anchor = by_name[citus::COLOCATION_ANCHOR].1;
        for (table, placement) in TABLES {
            match placement {
                Placement::Distributed => {
                    assert_eq!(by_name.get(table), Some(&("h", anchor)), "{table}")
                }
                Placement::Reference => assert_eq!(by_name.get(table).map(|v| v.0), Some("n")),
                Placement::Local => assert!(!by_name.contains_key(table), "{table}"),
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs the Citus cluster of ./scripts/test-citus"]
async fn samples_land_on_both_workers_and_the_pages_read_them_back() {
    assert!(
        on_citus(),
        "run through ./scripts/test-citus (RACKWATCH_TEST_CITUS=1)"
    );
    let app = TestApp::spawn().await;
    let hosts = 16;
    let gpus = 4;
    let ts = recent(12, 5, 5);
    for h in 0..hosts {
        let name = format!("c{h:02}");
        let token = app.token(&name).await;
        let body = json!({
            "host": {"name": name, "site": "s", "rack": format!("r{}", h % 2), "pool": "p"},
            "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": 10.0 + h as f64})).collect::<Vec<_>>(),
            "gpu_samples": ts.iter().flat_map(|t| (0..gpus).map(move |i| json!({"ts": t, "index": i, "util_pct": 50.0, "power_watts": 300.0}))).collect::<Vec<_>>(),
            "events": [{"ts": ts[0], "index": 0, "kind": "xid", "code": 79, "message": "fell off the bus"}]
        });
        let r: serde_json::Value = app.ingest(&token, &body).await.json().await.unwrap();
        assert_eq!(r["stored"], 12 * (1 + gpus) + 1, "{r}");
    }
    let run = app
        .store
        .run_rollups(Utc::now() + Duration::minutes(1))
        .await
        .unwrap();
    assert!(run.gpu_rows >= (hosts * gpus) as u64, "{run:?}");

    let expect = [
        ("host_samples", hosts * 12),
        ("gpu_samples", hosts * gpus * 12),
        ("host_latest", hosts),
        ("gpu_latest", hosts * gpus),
        ("hardware_events", hosts),
    ];
    for (table, total) in expect {
        let per_node = citus::rows_per_node(&app.store.pool, table).await.unwrap();
        assert_eq!(per_node.len(), 2, "{table}: {per_node:?}");
        assert!(
            per_node.iter().all(|(_, _, n)| *n > 0),
            "{table} has a worker without rows: {per_node:?}"
        );
        let sum: i64 = per_node.iter().map(|(_, _, n)| n).sum();
        assert_eq!(sum, total as i64, "{table}: {per_node:?}");
        let coordinator: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&app.store.pool)
                .await
                .unwrap();
        assert_eq!(
            coordinator, total as i64,
            "{table} read through the coordinator"
        );
    }
    let rollups = citus::rows_per_node(&app.store.pool, "gpu_samples_1m")
        .await
        .unwrap();
    assert!(
        rollups.len() == 2 && rollups.iter().all(|r| r.2 > 0),
        "{rollups:?}"
    );
    // One host's rows all sit on one worker, with its latest rows (co-location).
    let placements: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT h.id, count(DISTINCT p.nodeport)
           FROM hosts h, unnest(ARRAY['host_samples', 'gpu_samples_1m', 'gpu_latest', 'hardware_events']::regclass[]) t,
                pg_dist_shard_placement p
          WHERE p.shardid = get_shard_id_for_distribution_column(t, h.id)
          GROUP BY h.id",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(placements.len(), hosts);
    assert!(placements.iter().all(|p| p.1 == 1), "{placements:?}");
    // The inventory is on every worker.
    let copies: Vec<String> = sqlx::query_scalar(
        "SELECT result FROM run_command_on_workers('SELECT count(*) FROM hosts')",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(copies, vec![hosts.to_string(); 2]);

    // The fleet reads them back through the coordinator.
    let cookie = app.login("admin", "correct horse battery").await;
    let fleet = app.json(&cookie, "/api/v1/fleet").await;
    assert_eq!(fleet["gpus_total"], hosts * gpus);
    assert_eq!(fleet["hosts_up"], hosts);
    assert_eq!(fleet["gpus_faulty"], hosts, "one XID 79 per host");
    let (status, page) = app.page(&cookie, "/hosts/c07").await;
    assert_eq!(status, 200);
    assert!(page.contains("c07"));
    app.stop().await;
}
