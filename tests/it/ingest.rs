//! POST /api/v1/ingest against a real Postgres.

use std::io::Write;

use serde_json::json;

use crate::support::{recent, TestApp};

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.store.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn mixed_batch_stores_the_good_and_explains_the_bad() {
    let app = TestApp::spawn().await;
    let token = app.token("gpu-17").await;
    let ts = recent(4, 5, 10);
    let t = |i: usize| ts[i].to_rfc3339();
    let body = json!({
        "host": {"name": "gpu-17", "site": "fra1", "rack": "r12", "pool": "train-a", "labels": {"team": "ml"}},
        "gpus": [{"index": 0, "uuid": "GPU-abc", "model": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85899345920u64, "power_limit_watts": 700}],
        "host_samples": [
            {"ts": t(0), "cpu_util_pct": 37.5, "mem_used_bytes": 1, "mem_total_bytes": 2},
            {"ts": t(1), "cpu_util_pct": -4.0},
            {"ts": "2099-01-01T00:00:00Z", "cpu_util_pct": 1.0},
            {"ts": "2001-01-01T00:00:00Z", "cpu_util_pct": 1.0},
            {"ts": t(2), "cpu_util_pct": "lots"}
        ],
        "gpu_samples": [
            {"ts": t(0), "index": 0, "util_pct": 99, "power_watts": 650.5, "energy_joules_total": 123456.7, "temp_celsius": 71},
            {"ts": t(1), "index": 0, "util_pct": 101},
            {"ts": t(2), "index": 0, "temp_celsius": 400},
            {"ts": t(3), "index": 0, "power_watts": 640.0}
        ],
        "events": [
            {"ts": t(3), "index": 0, "kind": "xid", "code": 79, "message": "GPU has fallen off the bus"},
            {"ts": t(3), "index": 0, "kind": "xid"}
        ]
    });
    let r = app.ingest(&token, &body).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], 4, "{v}");
    assert_eq!(v["stored"], 4, "{v}");
    assert_eq!(v["rejected"], 7, "{v}");
    let errors = v["errors"].as_array().unwrap();
    let find = |section: &str, index: u64| {
        errors
            .iter()
            .find(|e| e["section"] == section && e["index"] == index)
            .unwrap()
            .clone()
    };
    assert_eq!(find("host_samples", 1)["field"], "cpu_util_pct");
    assert!(find("host_samples", 2)["reason"]
        .as_str()
        .unwrap()
        .contains("future"));
    assert!(find("host_samples", 3)["reason"]
        .as_str()
        .unwrap()
        .contains("old"));
    assert!(find("host_samples", 4)["reason"]
        .as_str()
        .unwrap()
        .contains("invalid type"));
    assert_eq!(find("gpu_samples", 1)["field"], "util_pct");
    assert_eq!(find("gpu_samples", 2)["field"], "temp_celsius");
    assert_eq!(find("events", 1)["field"], "code");

    assert_eq!(count(&app, "SELECT count(*) FROM host_samples").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM gpu_samples").await, 2);
    assert_eq!(
        count(&app, "SELECT count(*) FROM hardware_events WHERE code = 79").await,
        1
    );
    let (site, model): (String, String) =
        sqlx::query_as("SELECT h.site, g.model FROM hosts h JOIN gpus g ON g.host_id = h.id WHERE h.name = 'gpu-17'")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(
        (site.as_str(), model.as_str()),
        ("fra1", "NVIDIA H100 80GB HBM3")
    );
    let power: f32 = sqlx::query_scalar("SELECT power_watts FROM gpu_samples WHERE util_pct = 99")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(power, 650.5);
    app.stop().await;
}

#[tokio::test]
async fn the_same_batch_twice_is_stored_once() {
    let app = TestApp::spawn().await;
    let token = app.token("h1").await;
    let ts = recent(10, 5, 10);
    let body = json!({
        "host": {"name": "h1"},
        "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": 10.0})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().flat_map(|t| (0..4).map(move |i| json!({"ts": t, "index": i, "util_pct": 50.0}))).collect::<Vec<_>>(),
        "events": [{"ts": ts[0], "index": 1, "kind": "ecc_dbe", "message": "double-bit ECC error"}]
    });
    let first: serde_json::Value = app.ingest(&token, &body).await.json().await.unwrap();
    assert_eq!(first["stored"], 51, "{first}");
    let second: serde_json::Value = app.ingest(&token, &body).await.json().await.unwrap();
    assert_eq!(second["accepted"], 51, "{second}");
    assert_eq!(second["stored"], 0, "{second}");
    // A batch overlapping a stored one stores only what is new.
    let later = recent(2, 5, 0);
    let mut overlap = body.clone();
    overlap["host_samples"]
        .as_array_mut()
        .unwrap()
        .push(json!({"ts": later[1], "cpu_util_pct": 11.0}));
    let third: serde_json::Value = app.ingest(&token, &overlap).await.json().await.unwrap();
    assert_eq!(third["stored"], 1, "{third}");
    assert_eq!(count(&app, "SELECT count(*) FROM host_samples").await, 11);
    assert_eq!(count(&app, "SELECT count(*) FROM gpu_samples").await, 40);
    assert_eq!(count(&app, "SELECT count(*) FROM hardware_events").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn tokens_are_scoped_to_their_host() {
    let app = TestApp::spawn().await;
    let token = app.token("host-a").await;
    let body = json!({"host": {"name": "host-b"}, "host_samples": [{"ts": recent(1, 1, 1)[0], "cpu_util_pct": 1.0}]});
    let r = app.ingest(&token, &body).await;
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("host-a"), "{v}");
    assert_eq!(app.ingest("rwa_not_a_token", &body).await.status(), 401);
    let r = app
        .http
        .post(format!("{}/api/v1/ingest", app.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A revoked token stops working.
    let tokens = app.store.list_tokens().await.unwrap();
    assert!(app
        .store
        .revoke_token(tokens[0].id)
        .await
        .unwrap()
        .is_some());
    let body_a = json!({"host": {"name": "host-a"}});
    assert_eq!(app.ingest(&token, &body_a).await.status(), 401);
    assert_eq!(count(&app, "SELECT count(*) FROM host_samples").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn gzip_bodies_limits_and_malformed_json() {
    let app = TestApp::spawn_with(|c| {
        c.server.max_body_bytes = 64 * 1024;
        c.server.max_decompressed_bytes = 256 * 1024;
    })
    .await;
    let token = app.token("gz").await;
    let ts = recent(100, 1, 5);
    let body = json!({"host": {"name": "gz"}, "host_samples": ts.iter().map(|t| json!({"ts": t, "load1": 0.5})).collect::<Vec<_>>()});
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body.to_string().as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let post = |bytes: Vec<u8>, encoding: &'static str| {
        app.http
            .post(format!("{}/api/v1/ingest", app.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(bytes)
            .send()
    };
    let r = post(gz, "gzip").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["stored"], 100, "{v}");

    // A small body that inflates past the limit (a "zip bomb") is refused.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b' '; 1024 * 1024]).unwrap();
    let r = post(enc.finish().unwrap(), "gzip").await.unwrap();
    assert_eq!(r.status(), 413);
    // Too large on the wire.
    let r = post(vec![b' '; 100 * 1024], "identity").await.unwrap();
    assert_eq!(r.status(), 413);
    // Not gzip although it says so; unknown encoding; broken JSON with its position.
    assert_eq!(post(b"plain".to_vec(), "gzip").await.unwrap().status(), 400);
    assert_eq!(post(b"{}".to_vec(), "br").await.unwrap().status(), 415);
    let r = post(
        b"{\"host\": {\"name\": \"gz\"}, \"host_samples\": [}".to_vec(),
        "identity",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("line 1 column"),
        "{v}"
    );
    app.stop().await;
}

#[tokio::test]
async fn database_gone_answers_503_with_retry_after() {
    let app = TestApp::spawn().await;
    let token = app.token("h").await;
    let body = json!({"host": {"name": "h"}, "host_samples": [{"ts": recent(1, 1, 1)[0], "cpu_util_pct": 3.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    crate::support::drop_database(&app.db_url).await;
    let r = app.ingest(&token, &body).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "5");
    let h = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 503);
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_what_ingest_did() {
    let app = TestApp::spawn().await;
    let token = app.token("m").await;
    let ts = recent(3, 1, 2);
    let body = json!({"host": {"name": "m"}, "host_samples": [
        {"ts": ts[0], "cpu_util_pct": 1.0}, {"ts": ts[1], "cpu_util_pct": 1000.0}, {"ts": ts[2], "cpu_util_pct": 2.0}]});
    app.ingest(&token, &body).await;
    app.ingest("bad", &body).await;
    let text = app.metrics().await;
    assert!(text.contains("rackwatch_ingest_requests_total 2"), "{text}");
    assert!(
        text.contains("rackwatch_samples_accepted_total 2"),
        "{text}"
    );
    assert!(
        text.contains("rackwatch_samples_rejected_total 1"),
        "{text}"
    );
    assert!(
        text.contains("rackwatch_ingest_errors_total{reason=\"unauthorized\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("rackwatch_db_pool_connections{state=\"idle\"}"),
        "{text}"
    );
    app.stop().await;
}

/// GPU samples that reach every column: NULLs, range ends, values a `REAL` cannot hold
/// exactly (halfway between two, subnormal), the largest counts, sub-microsecond times.
fn extreme_gpu_samples(ts: &[chrono::DateTime<chrono::Utc>]) -> Vec<rackwatch::model::GpuSample> {
    use rackwatch::model::GpuSample;
    let halfway = 1.0 + f64::from(f32::EPSILON) / 2.0;
    vec![
        GpuSample {
            ts: ts[0] + chrono::Duration::nanoseconds(123_456_789),
            index: 0,
            ..Default::default()
        },
        GpuSample {
            ts: ts[1] + chrono::Duration::nanoseconds(999_999_999),
            index: 255,
            util_pct: Some(100.0),
            mem_util_pct: Some(1e-40),
            mem_used_bytes: Some(1 << 53),
            mem_total_bytes: Some(1 << 53),
            power_watts: Some(halfway),
            energy_joules_total: Some(1e18),
            temp_celsius: Some(-40.0),
            mem_temp_celsius: Some(150.0),
            sm_clock_mhz: Some(0.1),
            mem_clock_mhz: Some(19_999.99),
            fan_pct: Some(-0.0),
            throttle_reasons: Some(u64::MAX),
            power_limit_watts: Some(5_000.0),
            energy_joules: Some(5e-324),
            pcie_rx_bytes_per_s: Some(1e12),
            pcie_tx_bytes_per_s: Some(0.1 + 0.2),
            pcie_replay_total: Some(i64::MAX as u64),
            ecc_sbe_total: Some(0),
            ecc_dbe_total: Some(1),
            retired_pages_sbe: Some(2),
            retired_pages_dbe: Some(3),
            retired_pages_pending: Some(true),
            remapped_rows_correctable: Some(4),
            remapped_rows_uncorrectable: Some(5),
            remapped_rows_pending: Some(false),
            remapped_rows_failure: Some(true),
            mig_enabled: Some(false),
        },
        GpuSample {
            ts: ts[2],
            index: 7,
            util_pct: Some(33.333333333333336),
            power_watts: Some(f64::from(f32::MIN_POSITIVE)),
            temp_celsius: Some(71.3),
            throttle_reasons: Some(1 << 63),
            energy_joules: Some(0.0),
            ..Default::default()
        },
    ]
}

fn extreme_host_samples(ts: &[chrono::DateTime<chrono::Utc>]) -> Vec<rackwatch::model::HostSample> {
    use rackwatch::model::HostSample;
    vec![
        HostSample {
            ts: ts[0] + chrono::Duration::nanoseconds(1_999),
            ..Default::default()
        },
        HostSample {
            ts: ts[1],
            cpu_util_pct: Some(99.99999999),
            load1: Some(1e6),
            mem_used_bytes: Some(0),
            mem_total_bytes: Some(1 << 53),
            disk_read_bytes_per_s: Some(9e15),
            disk_write_bytes_per_s: Some(1e-310),
            net_rx_bytes_per_s: Some(0.1),
            net_tx_bytes_per_s: Some(-0.0),
            disk_used_bytes: Some(12_345),
            disk_total_bytes: Some(67_890),
            energy_joules: Some(1.728e9),
        },
    ]
}

/// Every stored column of a host's rows as Postgres prints them (floats exactly).
async fn stored_rows(app: &TestApp, table: &str, host_id: i64) -> Vec<String> {
    use rackwatch::store::samples::{gpu_columns, host_columns};
    let (cols, order) = if table == "gpu_samples" {
        (gpu_columns(), "gpu_index, ts")
    } else {
        (host_columns(), "ts")
    };
    let cols = cols.trim_start_matches("host_id, ");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT ROW({cols})::text FROM {table} WHERE host_id = $1 ORDER BY {order}"
    )))
    .bind(host_id)
    .fetch_all(&app.store.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn binary_copy_stores_exactly_what_text_copy_stores() {
    use rackwatch::store::samples::*;
    let app = TestApp::spawn().await;
    let ts = recent(3, 5, 10);
    let gpu = extreme_gpu_samples(&ts);
    let host = extreme_host_samples(&ts);
    let mut conn = app.store.pool.acquire().await.unwrap();
    // Each set of rows through the text format (odd host ids) and the binary one (the
    // next even id): all rows (every column present), only the all-NULL row (no
    // optional column sent), only the partly filled row (some columns sent).
    let sets: [(std::ops::Range<usize>, std::ops::Range<usize>); 3] =
        [(0..3, 0..2), (0..1, 0..1), (2..3, 1..2)];
    for (k, (g, h)) in sets.iter().enumerate() {
        let (text_id, binary_id) = (2 * k as i64 + 1, 2 * k as i64 + 2);
        let (gpu, host) = (&gpu[g.clone()], &host[h.clone()]);
        let (mut gt, mut ht) = (String::new(), String::new());
        encode_gpu_rows(text_id, gpu, &mut gt);
        encode_host_rows(text_id, host, &mut ht);
        let (mut gb, mut hb) = (Vec::new(), Vec::new());
        let gpu_cols = encode_gpu_rows_binary(binary_id, gpu, &mut gb);
        let host_cols = encode_host_rows_binary(binary_id, host, &mut hb);
        if k == 1 {
            assert_eq!(gpu_cols, "host_id, gpu_index, ts");
        }
        for (table, cols, data, format) in [
            ("gpu_samples", gpu_columns(), gt.into_bytes(), ""),
            ("host_samples", host_columns(), ht.into_bytes(), ""),
            ("gpu_samples", gpu_cols.as_str(), gb, " (FORMAT binary)"),
            ("host_samples", host_cols.as_str(), hb, " (FORMAT binary)"),
        ] {
            let mut copy = conn
                .copy_in_raw(&format!("COPY {table} ({cols}) FROM STDIN{format}"))
                .await
                .unwrap();
            copy.send(data).await.unwrap();
            assert!(copy.finish().await.unwrap() > 0);
        }
        for (table, n) in [("gpu_samples", gpu.len()), ("host_samples", host.len())] {
            let text = stored_rows(&app, table, text_id).await;
            let binary = stored_rows(&app, table, binary_id).await;
            assert_eq!(text.len(), n);
            assert_eq!(text, binary, "{table}, rows {k}");
        }
    }
    drop(conn);
    // Columns a batch leaves out are not sent and so take the column default: there
    // must be none, so that they are NULL as the text format stores them.
    let defaults: Vec<String> = sqlx::query_scalar(
        "SELECT table_name || '.' || column_name FROM information_schema.columns
          WHERE table_name IN ('gpu_samples', 'host_samples') AND column_default IS NOT NULL",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(defaults, Vec::<String>::new());
    app.stop().await;
}

type GpuRow = (
    i16,
    chrono::DateTime<chrono::Utc>,
    Option<f32>,
    Option<f32>,
    Option<i64>,
    Option<f32>,
    Option<f64>,
    Option<f32>,
    Option<i64>,
    Option<f64>,
    Option<i64>,
    Option<bool>,
    Option<bool>,
);

#[tokio::test]
async fn a_batch_reaching_every_column_round_trips_exactly_and_its_replay_is_stored_once() {
    let app = TestApp::spawn().await;
    let token = app.token("x1").await;
    let ts = recent(4, 5, 10);
    let mut gpu = extreme_gpu_samples(&ts);
    let host = extreme_host_samples(&ts);
    let batch = rackwatch::model::Batch {
        host: rackwatch::model::HostInfo {
            name: "x1".into(),
            ..Default::default()
        },
        gpu_samples: gpu.clone(),
        host_samples: host.clone(),
        ..Default::default()
    };
    let body = serde_json::to_value(&batch).unwrap();
    let v: serde_json::Value = app.ingest(&token, &body).await.json().await.unwrap();
    assert_eq!(v["stored"], 5, "{v}");
    let host_id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = 'x1'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();

    // Read back typed: what was sent, at the columns' precision.
    let real = |x: f64| -> f32 { x.to_string().parse().unwrap() };
    let r: GpuRow = sqlx::query_as(
        "SELECT gpu_index, ts, util_pct, mem_util_pct, mem_used_bytes, power_watts, energy_joules_total,
                fan_pct, throttle_reasons, energy_joules, pcie_replay_total, retired_pages_pending, mig_enabled
           FROM gpu_samples WHERE host_id = $1 AND gpu_index = 255",
    )
    .bind(host_id)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    let s = &gpu[1];
    assert_eq!(r.0, 255);
    assert_eq!(r.1, ts[1] + chrono::Duration::microseconds(999_999));
    assert_eq!(r.2, Some(100.0));
    assert_eq!(r.3.map(f32::to_bits), Some(real(1e-40).to_bits()));
    assert_ne!(r.3, Some(0.0));
    assert_eq!(r.4, Some(1 << 53));
    assert_eq!(r.5, Some(real(s.power_watts.unwrap())));
    assert_ne!(
        r.5,
        Some(s.power_watts.unwrap() as f32),
        "rounded as the decimal is"
    );
    assert_eq!(r.6, Some(1e18));
    assert_eq!(r.7.map(f32::to_bits), Some((-0.0f32).to_bits()));
    assert_eq!(r.8, Some(-1));
    assert_eq!(r.9.map(f64::to_bits), Some(5e-324f64.to_bits()));
    assert_eq!(r.10, Some(i64::MAX));
    assert_eq!((r.11, r.12), (Some(true), Some(false)));
    let nulls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM gpu_samples WHERE host_id = $1 AND gpu_index = 0
            AND util_pct IS NULL AND mem_used_bytes IS NULL AND energy_joules_total IS NULL
            AND throttle_reasons IS NULL AND retired_pages_pending IS NULL AND mig_enabled IS NULL
            AND ts = $2",
    )
    .bind(host_id)
    .bind(ts[0] + chrono::Duration::microseconds(123_456))
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(nulls, 1);
    let h: (Option<f32>, Option<f32>, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT cpu_util_pct, load1, disk_write_bytes_per_s, energy_joules FROM host_samples
          WHERE host_id = $1 AND cpu_util_pct IS NOT NULL",
    )
    .bind(host_id)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        h,
        (
            Some(real(99.99999999)),
            Some(1e6),
            Some(1e-310),
            Some(1.728e9)
        )
    );
    let before_gpu = stored_rows(&app, "gpu_samples", host_id).await;
    let before_host = stored_rows(&app, "host_samples", host_id).await;

    // The same batch again: nothing new. With one new sample: that one only, through
    // the replay path, and the stored rows stay exactly as they were.
    let v: serde_json::Value = app.ingest(&token, &body).await.json().await.unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["stored"].as_u64()),
        (Some(5), Some(0)),
        "{v}"
    );
    gpu.push(rackwatch::model::GpuSample {
        ts: ts[3],
        index: 1,
        power_watts: Some(1.0 + f64::from(f32::EPSILON) * 1.5),
        mem_temp_celsius: Some(1e-300),
        ..gpu[1].clone()
    });
    let overlap = serde_json::to_value(rackwatch::model::Batch {
        gpu_samples: gpu.clone(),
        ..batch.clone()
    })
    .unwrap();
    let v: serde_json::Value = app.ingest(&token, &overlap).await.json().await.unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["stored"].as_u64()),
        (Some(6), Some(1)),
        "{v}"
    );
    let after_gpu = stored_rows(&app, "gpu_samples", host_id).await;
    assert_eq!(after_gpu.len(), 4);
    assert_eq!(
        after_gpu.iter().filter(|r| !before_gpu.contains(r)).count(),
        1,
        "{after_gpu:?}"
    );
    assert!(before_gpu.iter().all(|r| after_gpu.contains(r)));
    assert_eq!(
        stored_rows(&app, "host_samples", host_id).await,
        before_host
    );
    // A value below the smallest REAL is stored as 0 (a text COPY refused the batch).
    let (p, m): (Option<f32>, Option<f32>) = sqlx::query_as(
        "SELECT power_watts, mem_temp_celsius FROM gpu_samples WHERE host_id = $1 AND gpu_index = 1",
    )
    .bind(host_id)
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(p, Some(real(1.0 + f64::from(f32::EPSILON) * 1.5)));
    assert_eq!(m, Some(0.0));
    app.stop().await;
}

/// A host taken out through one server while its agent still runs: another server that
/// looked the agent's token up in the last minute still stores its batches, but the host
/// stays out of the fleet; only a token issued after the removal brings it back.
#[tokio::test]
async fn a_revoked_token_another_server_still_trusts_does_not_bring_a_removed_host_back() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(a.db_url.clone(), |_| {}).await;
    let sample = || json!({"host": {"name": "old-box", "site": "fra1", "rack": "r1"}, "host_samples": [{"ts": chrono::Utc::now(), "cpu_util_pct": 3.0}]});
    let in_fleet = |app: &TestApp| {
        let store = app.store.clone();
        async move {
            store
                .hosts_latest()
                .await
                .unwrap()
                .iter()
                .any(|h| h.name == "old-box")
        }
    };
    let token = a.token("old-box").await;
    // Server b looks the token up (and trusts it for a minute).
    assert_eq!(b.ingest(&token, &sample()).await.status(), 200);
    assert_eq!(
        a.store.remove_host("old-box", "admin").await.unwrap(),
        Some(1)
    );
    assert_eq!(
        a.ingest(&token, &sample()).await.status(),
        401,
        "revoked on a"
    );
    let stale = b.ingest(&token, &sample()).await;
    assert_eq!(stale.status(), 200, "b still trusts the token it looked up");
    assert!(!in_fleet(&a).await, "the host stays out");
    assert_eq!(
        count(&a, "SELECT count(*) FROM host_samples").await,
        2,
        "its samples are stored"
    );
    // Reinstalled with a new token: back in the fleet.
    let new_token = a.token("old-box").await;
    assert_eq!(b.ingest(&new_token, &sample()).await.status(), 200);
    assert!(in_fleet(&a).await);
    b.stop().await;
    a.stop().await;
}

/// A batch whose every item is refused adds no host: a token tried out with bad samples
/// would leave a host in the fleet that never reported.
#[tokio::test]
async fn a_batch_with_every_item_refused_adds_no_host() {
    let app = TestApp::spawn().await;
    let token = app.token("ghost").await;
    let ts = recent(1, 1, 1)[0];
    let body = json!({"host": {"name": "ghost"}, "gpus": [{"index": "a"}],
                      "host_samples": [{"ts": ts, "cpu_util_pct": 500.0}]});
    let r = app.ingest(&token, &body).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(0), Some(2)),
        "{v}"
    );
    let hosts: i64 = sqlx::query_scalar("SELECT count(*) FROM hosts WHERE name = 'ghost'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(hosts, 0);
    // One good sample: the host is there.
    let good =
        json!({"host": {"name": "ghost"}, "host_samples": [{"ts": ts, "cpu_util_pct": 5.0}]});
    assert_eq!(app.ingest(&token, &good).await.status(), 200);
    let hosts: i64 = sqlx::query_scalar("SELECT count(*) FROM hosts WHERE name = 'ghost'")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(hosts, 1);
    app.stop().await;
}

/// A GPU's samples arrive in a batch whose GPU list leaves it out: it joins the host's
/// inventory, so its page and API open (its samples were stored, and its page was a 404).
#[tokio::test]
async fn a_gpu_seen_only_in_samples_joins_the_inventory() {
    let app = TestApp::spawn().await;
    let token = app.token("partial").await;
    let ts = recent(1, 1, 1)[0];
    let body = json!({"host": {"name": "partial"}, "gpus": [{"index": 0, "model": "NVIDIA H100"}],
                      "gpu_samples": [{"ts": ts, "index": 0, "util_pct": 10.0},
                                      {"ts": ts, "index": 3, "util_pct": 30.0}]});
    assert_eq!(app.ingest(&token, &body).await.status(), 200);
    let cookie = app.login("ops", "ops-pass-12").await;
    let three = app
        .json(&cookie, "/api/v1/hosts/partial/gpus/3?range=1h")
        .await;
    assert_eq!(three["gpu"]["index"], 3, "{three}");
    assert_eq!(three["gpu"]["util_pct"], 30.0, "{three}");
    let zero = app
        .json(&cookie, "/api/v1/hosts/partial/gpus/0?range=1h")
        .await;
    assert_eq!(zero["gpu"]["model"], "NVIDIA H100", "{zero}");
    app.stop().await;
}
