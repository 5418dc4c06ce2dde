//! `rackwatch backup` and `rackwatch restore`, as an operator runs them: the binary, the
//! Postgres tools of the managed cluster, a real database with samples, events, users,
//! tokens and sessions in it.

use std::process::Command;

use chrono::DurationRound;

use rackwatch::store::backup::fingerprint;
use rackwatch::store::{create_database_if_missing, Store};
use serde_json::json;

use crate::support::{recent, TestApp};

fn rackwatch(db_url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rackwatch"))
        .args(args)
        .env("RACKWATCH_DATABASE__URL", db_url)
        .env("RACKWATCH_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn blocking(db_url: String, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rackwatch(&db_url, &args)
    })
    .await
    .unwrap()
}

/// Every table's rows and checksum but the audit trail's, which records the backup and
/// the restore themselves.
async fn data(store: &Store) -> Vec<rackwatch::store::backup::TableSum> {
    let mut all = fingerprint(store).await.unwrap();
    all.retain(|t| t.table != "audit_log");
    all
}

/// The audit trail's actions, oldest first.
async fn audit_actions(store: &Store) -> Vec<String> {
    sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
        .fetch_all(&store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_backup_restores_into_an_empty_database_with_every_row_and_the_same_answers() {
    let app = TestApp::spawn().await;
    for host in ["bk-a", "bk-b"] {
        let token = app.token(host).await;
        let ts = recent(30, 5, 10);
        let body = json!({
            "host": {"name": host, "rack": "r1", "labels": {"team": "ml"}},
            "gpus": [{"index": 0, "model": "H100"}, {"index": 1, "model": "H100"}],
            "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": 12.5})).collect::<Vec<_>>(),
            "gpu_samples": ts.iter().flat_map(|t| (0..2).map(move |i| json!({"ts": t, "index": i, "util_pct": 80.0, "power_watts": 500.0}))).collect::<Vec<_>>(),
            "events": [{"ts": ts[3], "index": 1, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus"}],
        });
        let r = app.ingest(&token, &body).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let cookie = app.login("backup-admin", "a long enough password").await;
    let before = data(&app.store).await;
    let rows: i64 = before.iter().map(|t| t.rows).sum();
    assert!(rows > 150, "{before:?}");
    let audit_actions_before = audit_actions(&app.store).await;

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("rackwatch.dump");
    let a = archive.to_string_lossy().into_owned();
    let (ok, out) = blocking(
        app.db_url.clone(),
        vec!["backup".into(), "--out".into(), a.clone()],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("backup written to"), "{out}");
    assert!(std::fs::metadata(&archive).unwrap().len() > 1000);
    // It holds password and token hashes: readable by its owner only.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A directory for --out is refused before the dump, and leaves no partial archive.
    let d = dir.path().to_string_lossy().into_owned();
    let (ok, out) = blocking(app.db_url.clone(), vec!["backup".into(), "--out".into(), d]).await;
    assert!(!ok);
    assert!(
        out.contains("is a directory: name the archive file"),
        "{out}"
    );
    assert!(!dir.path().with_extension("partial").exists());

    // An empty database in the same cluster.
    let name = format!("restored_{}", std::process::id());
    let (head, tail) = app.db_url.split_once('?').unwrap();
    let (server, _) = head.rsplit_once('/').unwrap();
    create_database_if_missing(&format!("{server}/postgres?{tail}"), &name)
        .await
        .unwrap();
    let restored_url = format!("{server}/{name}?{tail}");
    let (ok, out) = blocking(restored_url.clone(), vec!["restore".into(), a.clone()]).await;
    assert!(ok, "{out}");
    let restored = Store::connect(&restored_url, 2, 10).await.unwrap();
    let after = data(&restored).await;
    assert_eq!(before, after, "every table's rows and checksum");
    // The audit trail: the original's rows, plus the restore itself by the command line
    // (the original has the backup, made after its snapshot).
    assert_eq!(
        audit_actions(&restored).await,
        [
            audit_actions_before.clone(),
            vec!["backup.restored".to_string()]
        ]
        .concat()
    );
    assert_eq!(
        audit_actions(&app.store).await,
        [
            audit_actions_before.clone(),
            vec!["backup.made".to_string()]
        ]
        .concat()
    );

    // A second restore finds the database in use and says what to do.
    let (ok, out) = blocking(restored_url.clone(), vec!["restore".into(), a.clone()]).await;
    assert!(!ok);
    assert!(
        out.contains("not empty") && out.contains("--force"),
        "{out}"
    );
    let force = || {
        blocking(
            restored_url.clone(),
            vec!["restore".into(), "--force".into(), a.clone()],
        )
    };
    // Still connected (as a server that does not lead would be, storing what agents send
    // into the tables the restore replaces): refused, and nothing touched.
    let (ok, out) = force().await;
    if !(crate::support::citus() && out.contains("distributed with Citus")) {
        assert!(!ok);
        assert!(
            out.contains("connections of other Rackwatch servers or commands are open"),
            "{out}"
        );
    }
    restored.pool.close().await;
    let (ok, out) = force().await;
    if crate::support::citus() && out.contains("distributed with Citus") {
        // Replacing a distributed database in place is refused, naming the way that works.
        assert!(!ok);
        assert!(out.contains("rackwatch migrate --citus"), "{out}");
    } else {
        assert!(ok, "{out}");
    }
    let restored = Store::connect(&restored_url, 2, 10).await.unwrap();
    assert_eq!(data(&restored).await, before);

    // A server on the restored database answers as the original does (the session
    // cookie is in the restored sessions table too).
    let copy = TestApp::spawn_on(restored_url.clone(), |_| {}).await;
    let to = (chrono::Utc::now() + chrono::Duration::minutes(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let samples = format!("/api/v1/hosts/bk-a/samples?from=2000-01-01T00:00:00Z&to={to}");
    let samples = samples.replace("2000-01-01T00:00:00Z", &{
        (chrono::Utc::now() - chrono::Duration::hours(2))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    for path in [
        "/api/v1/hosts",
        "/api/v1/events",
        "/api/v1/inventory",
        samples.as_str(),
    ] {
        let a = app.json(&cookie, path).await;
        let b = copy.json(&cookie, path).await;
        assert!(a == b, "{path} differs on the restored database");
    }
    copy.stop().await;
    restored.pool.close().await;

    // A file that is not an archive is refused with pg_restore's reason, with or without
    // --force, before the database's contents are weighed.
    let junk = dir.path().join("junk.dump");
    std::fs::write(&junk, b"not an archive").unwrap();
    for force in [true, false] {
        let mut args = vec!["restore".to_string()];
        if force {
            args.push("--force".into());
        }
        args.push(junk.to_string_lossy().into_owned());
        let (ok, out) = blocking(restored_url.clone(), args).await;
        assert!(!ok);
        assert!(
            out.contains("is not a readable backup archive") && out.contains("pg_restore"),
            "{out}"
        );
    }
    // A truncated archive lists fine; with --force it is read to its end before the target
    // is emptied, so the target keeps its contents.
    let cut = dir.path().join("cut.dump");
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 200]).unwrap();
    let (ok, out) = blocking(
        restored_url.clone(),
        vec![
            "restore".into(),
            "--force".into(),
            cut.to_string_lossy().into_owned(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("cannot be read to its end")
            || out.contains("is not a readable backup archive"),
        "{out}"
    );
    let target = Store::connect(&restored_url, 2, 10).await.unwrap();
    assert_eq!(data(&target).await, before, "the target was not touched");
    // An archive of a newer Rackwatch is refused before anything is touched.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99999, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let newer = dir.path().join("newer.dump");
    // This binary does not open a database a newer one migrated, and says so.
    let (ok, out) = blocking(
        app.db_url.clone(),
        vec![
            "backup".into(),
            "--out".into(),
            newer.to_string_lossy().into_owned(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains(
            "this database was migrated by a newer Rackwatch (its schema has migration 99999"
        ),
        "{out}"
    );
    // (pg_dump as `backup` runs it.)
    let made = rackwatch::store::backup::backup("", &app.db_url, &newer).await;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99999")
        .execute(&app.store.pool)
        .await
        .unwrap();
    made.unwrap();
    let (ok, out) = blocking(
        restored_url.clone(),
        vec![
            "restore".into(),
            "--force".into(),
            newer.to_string_lossy().into_owned(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("the archive's schema is at migration 99999, newer than")
            && out.contains("nothing was touched"),
        "{out}"
    );
    assert_eq!(data(&target).await, before, "the target was not touched");
    target.pool.close().await;
    app.stop().await;
}

/// `./scripts/bench backup`: `BENCH_BACKUP_GPUS` GPUs (default 1,000, 8 per host) with
/// `BENCH_BACKUP_DAYS` days (default 7) of 1-minute rollups and 6 h of raw samples at
/// 5 s, on a cluster with Postgres's durable defaults; backup, restore into an empty
/// database, compare every table.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: ./scripts/bench backup"]
async fn backup_benchmark() {
    let knob = |k: &str, d: i64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let gpus = knob("BENCH_BACKUP_GPUS", 1000);
    let days = knob("BENCH_BACKUP_DAYS", 7);
    let hosts = (gpus / 8).max(1);
    let (_opts, pg) = tokio::task::spawn_blocking(|| crate::faults::own_cluster("backup-bench"))
        .await
        .unwrap();
    create_database_if_missing(&pg.admin_url(), "source")
        .await
        .unwrap();
    create_database_if_missing(&pg.admin_url(), "restored")
        .await
        .unwrap();
    let src_url = pg.url_for("source");
    let dst_url = pg.url_for("restored");
    let src = Store::connect(&src_url, 4, 30).await.unwrap();
    src.migrate().await.unwrap();
    let now = chrono::Utc::now();
    src.ensure_partitions(now, days as u32 + 1, 1)
        .await
        .unwrap();
    let load = std::time::Instant::now();
    sqlx::query("INSERT INTO hosts (name, site, rack) SELECT 'bk-' || h, 'site', 'r' || (h / 20) FROM generate_series(1, $1) h")
        .bind(hosts)
        .execute(&src.pool)
        .await
        .unwrap();
    let now_min = now.duration_trunc(chrono::Duration::minutes(1)).unwrap();
    // One statement per day keeps each transaction and its WAL moderate.
    for d in 0..days {
        let end = now_min - chrono::Duration::days(d);
        let start = end - chrono::Duration::days(1);
        sqlx::query(
            "INSERT INTO gpu_samples_1m (host_id, gpu_index, bucket, samples, util_pct, util_pct_max,
                    mem_util_pct, mem_used_bytes, power_watts, power_watts_max, energy_joules_total,
                    temp_celsius, temp_celsius_max, sm_clock_mhz)
             SELECT h.id, g, b, 12, 50 + 40 * sin(extract(epoch FROM b) / 3600 + g), 95, 30,
                    40000000000, 400 + h.id % 200, 650, extract(epoch FROM b) * 500, 60, 70, 1700
               FROM hosts h, generate_series(0, 7) g,
                    generate_series($1::timestamptz, $2::timestamptz - interval '1 minute', interval '1 minute') b
              WHERE h.name LIKE 'bk-%'",
        )
        .bind(start)
        .bind(end)
        .execute(&src.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO host_samples_1m (host_id, bucket, samples, cpu_util_pct, cpu_util_pct_max,
                    load1, mem_used_bytes, mem_total_bytes)
             SELECT h.id, b, 12, 20, 60, 8, 200000000000, 1000000000000
               FROM hosts h, generate_series($1::timestamptz, $2::timestamptz - interval '1 minute', interval '1 minute') b
              WHERE h.name LIKE 'bk-%'",
        )
        .bind(start)
        .bind(end)
        .execute(&src.pool)
        .await
        .unwrap();
    }
    for (table, cols, vals) in [
        (
            "gpu_samples",
            "host_id, gpu_index, ts, util_pct, mem_used_bytes, power_watts, energy_joules_total, temp_celsius",
            "h.id, g, t, 50 + 40 * sin(extract(epoch FROM t) / 600 + g), 40000000000, 500, extract(epoch FROM t) * 500, 61",
        ),
        (
            "host_samples",
            "host_id, ts, cpu_util_pct, load1, mem_used_bytes, mem_total_bytes",
            "h.id, t, 20, 8, 200000000000, 1000000000000",
        ),
    ] {
        let from_gpus = if table == "gpu_samples" { ", generate_series(0, 7) g" } else { "" };
        let q = format!(
            "INSERT INTO {table} ({cols}) SELECT {vals} FROM hosts h{from_gpus},
                    generate_series($1::timestamptz - interval '6 hours', $1::timestamptz - interval '5 seconds', interval '5 seconds') t
              WHERE h.name LIKE 'bk-%'"
        );
        sqlx::query(sqlx::AssertSqlSafe(q))
            .bind(now_min)
            .execute(&src.pool)
            .await
            .unwrap();
    }
    sqlx::query("VACUUM ANALYZE")
        .execute(&src.pool)
        .await
        .unwrap();
    let before = fingerprint(&src).await.unwrap();
    let rows: i64 = before.iter().map(|t| t.rows).sum();
    println!(
        "loaded {rows} rows ({hosts} hosts, {gpus} GPUs, {days} days of 1-minute rollups, 6 h raw at 5 s) in {:.1} s",
        load.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bench.dump");
    let b = rackwatch::store::backup::backup("", &src_url, &archive)
        .await
        .unwrap();
    let dst = Store::connect(&dst_url, 4, 30).await.unwrap();
    let r = rackwatch::store::backup::restore("", &dst, &dst_url, &archive, false)
        .await
        .unwrap();
    let after = fingerprint(&dst).await.unwrap();
    let identical = before == after;
    for (x, y) in before.iter().zip(&after) {
        if x != y {
            println!("differs: {x:?} vs {y:?}");
        }
    }
    let mb = b.bytes as f64 / 1e6;
    println!(
        "pg_dump (custom format, one job): {:.1} s, {:.0} rows/s on one core; archive {mb:.1} MB ({:.1} bytes/row)",
        b.seconds,
        rows as f64 / b.seconds,
        b.bytes as f64 / rows as f64
    );
    println!(
        "pg_restore (one job, single transaction, indexes rebuilt): {:.1} s, {:.0} rows/s on one core",
        r.seconds,
        rows as f64 / r.seconds
    );
    println!(
        "BENCH backup rows={rows} backup_s={:.1} restore_s={:.1} archive_mb={mb:.1} identical={}",
        b.seconds,
        r.seconds,
        u8::from(identical)
    );
    src.pool.close().await;
    dst.pool.close().await;
    drop(pg);
}

/// `[backup]`: the job leader makes an archive when the newest is `every_hours` old,
/// deletes the oldest beyond `keep`, records it in the audit trail and on `/metrics`.
#[tokio::test]
async fn the_server_makes_scheduled_backups_and_keeps_the_newest() {
    use rackwatch::store::backup::{archive_name, archives};
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    // Two archives from earlier days (not real dumps: only their names, ages and first
    // bytes matter), and a newer file a crash cut short: no backup, so one is due, and it
    // neither counts toward `keep` nor is deleted.
    for days in [3, 2] {
        let at = now - chrono::Duration::days(days);
        std::fs::write(dir.path().join(archive_name(at)), b"PGDMP older").unwrap();
    }
    let cut = dir
        .path()
        .join(archive_name(now - chrono::Duration::hours(1)));
    std::fs::write(&cut, b"").unwrap();
    let path = dir.path().to_path_buf();
    let app = TestApp::spawn_full(crate::support::fresh_database().await, |c| {
        c.backup.dir = path;
        c.backup.every_hours = 24;
        c.backup.keep = 2;
    })
    .await;
    let token = app.token("sched-bk").await;
    let body = json!({
        "host": {"name": "sched-bk"},
        "host_samples": recent(5, 5, 10).iter().map(|t| json!({"ts": t, "cpu_util_pct": 1.0})).collect::<Vec<_>>(),
    });
    assert_eq!(app.ingest(&token, &body).await.status(), 200);

    // A new leader runs every job at once; the newest archive is 2 days old, so it is due.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let made = loop {
        let all: Vec<_> = archives(dir.path())
            .unwrap()
            .into_iter()
            .filter(|a| a.valid)
            .collect();
        if let Some(a) = all
            .last()
            .filter(|a| a.made > now - chrono::Duration::minutes(5))
        {
            break (all.clone(), a.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled backup: {all:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let (all, newest) = made;
    assert_eq!(
        all.len(),
        2,
        "keep = 2 deletes the 3-day-old archive: {all:?}"
    );
    assert!(all[0].made < now - chrono::Duration::days(1));
    assert!(newest.bytes > 1000, "a real archive: {newest:?}");
    assert!(cut.exists(), "the cut file is left for a person to look at");

    // It restores into an empty database with the ingested rows.
    let name = format!("sched_restored_{}", std::process::id());
    let (head, tail) = app.db_url.split_once('?').unwrap();
    let (server, _) = head.rsplit_once('/').unwrap();
    create_database_if_missing(&format!("{server}/postgres?{tail}"), &name)
        .await
        .unwrap();
    let restored_url = format!("{server}/{name}?{tail}");
    let file = newest.path.to_string_lossy().into_owned();
    let (ok, out) = blocking(restored_url.clone(), vec!["restore".into(), file.clone()]).await;
    assert!(ok, "{out}");
    let restored = Store::connect(&restored_url, 2, 10).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM host_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = 'sched-bk'",
    )
    .fetch_one(&restored.pool)
    .await
    .unwrap();
    assert_eq!(n, 5);
    // The restore is in the restored database's audit trail, by the command line.
    let restored_rows: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, target FROM audit_log WHERE action = 'backup.restored'")
            .fetch_all(&restored.pool)
            .await
            .unwrap();
    assert_eq!(restored_rows.len(), 1, "{restored_rows:?}");
    assert!(restored_rows[0].0.starts_with("cli:"), "{restored_rows:?}");
    assert_eq!(restored_rows[0].1, file);
    restored.pool.close().await;

    // Restoring over the database a server runs on is refused, and touches nothing.
    let (ok, out) = blocking(
        app.db_url.clone(),
        vec!["restore".into(), "--force".into(), file.clone()],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("a Rackwatch server is running on this database"),
        "{out}"
    );
    // One audit row by the system, naming the archive.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT actor, target, outcome FROM audit_log WHERE action = 'backup.made'")
            .fetch_all(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![("system".to_string(), file.clone(), "ok".to_string())]
    );
    // /metrics says when, and how big.
    let metrics = app.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("rackwatch_backup_last_success_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no backup gauge in\n{metrics}"));
    let at: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((at - newest.made.timestamp() as f64).abs() < 1.0, "{line}");
    app.stop().await;
}

#[tokio::test]
async fn backup_settings_out_of_range_are_refused_by_name() {
    for (toml, want) in [
        ("[backup]\nevery_hours = 0\n", "backup.every_hours"),
        ("[backup]\nkeep = 0\n", "backup.keep"),
        ("[backup]\nevery_days = 1\n", "every_days"),
    ] {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), toml).unwrap();
        let err = rackwatch::config::Config::load_with_env(Some(f.path()), Vec::new()).unwrap_err();
        assert!(err.to_string().contains(want), "{toml}: {err}");
    }
}
