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
    assert!(app.store.revoke_token(tokens[0].id).await.unwrap());
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
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
