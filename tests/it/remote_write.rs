//! `POST /api/v1/write` (Prometheus remote write 1.0): the answers Prometheus's retry
//! logic reads, token scopes, merging of a scrape spread over requests, and end to end a
//! real Prometheus that scrapes a real node_exporter and a dcgm-exporter-format endpoint
//! served here and remote-writes to Rackwatch: the hosts and GPUs on the fleet page, an
//! XID flip mailed by the hardware rule to a real SMTP server, and the energy report.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use prost::Message as _;
use rackwatch::ingest::remote_write::proto::{Label, Sample, TimeSeries, WriteRequest};
use rackwatch::report::IsoWeek;
use rackwatch::store::auth::WriteScope;

use crate::prometheus::Prometheus;
use crate::support::{free_port, subject, SmtpServer, TestApp};

/// A series with `labels` and `(ms, value)` points.
pub fn series(labels: &[(&str, &str)], points: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: points
            .iter()
            .map(|(t, v)| Sample {
                value: *v,
                timestamp: *t,
            })
            .collect(),
    }
}

/// A remote-write body: the request as protobuf, snappy block-compressed.
pub fn body(series: &[TimeSeries]) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series.to_vec(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap()
}

async fn write(app: &TestApp, token: &str, body: Vec<u8>) -> reqwest::Response {
    app.http
        .post(format!("{}/api/v1/write", app.base))
        .bearer_auth(token)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A remote-write token for site fra1.
async fn fra1_token(app: &TestApp) -> String {
    app.store
        .create_write_token(&WriteScope::Site("fra1".into()), "test")
        .await
        .unwrap()
}

fn dcgm(name: &str, host: &str, gpu: &str, t: i64, v: f64) -> TimeSeries {
    series(
        &[
            ("__name__", name),
            ("Hostname", host),
            ("gpu", gpu),
            ("UUID", &format!("GPU-{host}-{gpu}")),
            ("modelName", "NVIDIA H100 80GB HBM3"),
            ("instance", "10.0.0.9:9400"),
            ("job", "dcgm"),
        ],
        &[(t, v)],
    )
}

/// A counter's value on `/metrics`.
fn counter(text: &str, line: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line} not on /metrics"))
}

#[tokio::test]
async fn remote_write_answers_as_prometheus_retries_and_merges_split_scrapes() {
    let app = TestApp::spawn().await;
    let site = fra1_token(&app).await;
    let t = Utc::now().timestamp_millis() - 2_000;

    // One scrape's series in two requests: the second fills the row the first began.
    let first = body(&[
        dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-w1", "0", t, 93.0),
        dcgm("DCGM_FI_DEV_ENC_UTIL", "gpu-w1", "0", t, 0.0),
        series(&[("__name__", "up"), ("instance", "x:1")], &[(t, 1.0)]),
    ]);
    let r = write(&app, &site, first.clone()).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let second = body(&[
        dcgm("DCGM_FI_DEV_POWER_USAGE", "gpu-w1", "0", t, 412.5),
        dcgm("DCGM_FI_DEV_FB_USED", "gpu-w1", "0", t, 2048.0),
    ]);
    assert_eq!(write(&app, &site, second.clone()).await.status(), 204);
    let stored_before = counter(&app.metrics().await, "rackwatch_samples_stored_total ");
    // A retry of both stores nothing new.
    assert_eq!(write(&app, &site, first).await.status(), 204);
    assert_eq!(write(&app, &site, second).await.status(), 204);
    let text = app.metrics().await;
    assert_eq!(
        counter(&text, "rackwatch_samples_stored_total "),
        stored_before
    );
    let row: (i64, Option<f32>, Option<f32>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(util_pct), max(power_watts), max(mem_used_bytes) FROM gpu_samples",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(row, (1, Some(93.0), Some(412.5), Some(2048 << 20)));
    let latest: (Option<f32>, Option<f32>) =
        sqlx::query_as("SELECT util_pct, power_watts FROM gpu_latest")
            .fetch_one(&app.store.pool)
            .await
            .unwrap();
    assert_eq!(latest, (Some(93.0), Some(412.5)));
    let (site_of, uuid): (String, String) = sqlx::query_as(
        "SELECT h.site, g.uuid FROM hosts h JOIN gpus g ON g.host_id = h.id WHERE h.name = 'gpu-w1'",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!((site_of.as_str(), uuid.as_str()), ("fra1", "GPU-gpu-w1-0"));
    // ENC_UTIL (twice) and `up` (twice) were dropped and counted.
    assert_eq!(
        counter(
            &text,
            "rackwatch_remote_write_series_dropped_total{reason=\"unmapped\"} "
        ),
        4.0
    );

    // A value out of the metric's bounds is rejected alone.
    let r = write(
        &app,
        &site,
        body(&[
            dcgm("DCGM_FI_DEV_GPU_TEMP", "gpu-w1", "0", t + 1000, 900.0),
            dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-w1", "0", t + 1000, 50.0),
        ]),
    )
    .await;
    assert_eq!(r.status(), 204);
    let text = app.metrics().await;
    assert!(counter(&text, "rackwatch_samples_rejected_total ") >= 1.0);

    // 4xx: never retried by Prometheus.
    let ok = body(&[dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-w1", "0", t, 1.0)]);
    let agent = app.token("gpu-w1").await;
    assert_eq!(write(&app, &agent, ok.clone()).await.status(), 401);
    let anon = app
        .http
        .post(format!("{}/api/v1/write", app.base))
        .body(ok.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    // The write token is no agent token.
    let r = app
        .ingest(&site, &serde_json::json!({"host": {"name": "gpu-w1"}}))
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        write(&app, &site, b"not snappy".to_vec()).await.status(),
        400
    );
    let garbage = snap::raw::Encoder::new()
        .compress_vec(b"\xff\xff\xff")
        .unwrap();
    assert_eq!(write(&app, &site, garbage).await.status(), 400);
    // A body that says it inflates to 4 GiB (snappy's largest block) is refused before
    // it is inflated.
    let mut bomb = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
    bomb.extend_from_slice(&[0u8; 16]);
    assert_eq!(write(&app, &site, bomb).await.status(), 413);
    let v2 = app
        .http
        .post(format!("{}/api/v1/write", app.base))
        .bearer_auth(&site)
        .header(
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )
        .header("content-encoding", "snappy")
        .body(ok.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(v2.status(), 415);

    // Scopes: a host of another site, a host not on the list.
    let lon = app.token("gpu-lon").await;
    let r = app
        .ingest(
            &lon,
            &serde_json::json!({"host": {"name": "gpu-lon", "site": "lon1"},
                                "host_samples": [{"ts": Utc::now(), "cpu_util_pct": 5.0}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let other = body(&[dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-lon", "0", t, 1.0)]);
    assert_eq!(write(&app, &site, other.clone()).await.status(), 403);
    let listed = app
        .store
        .create_write_token(&WriteScope::Hosts(vec!["gpu-w2".into()]), "test")
        .await
        .unwrap();
    assert_eq!(write(&app, &listed, other).await.status(), 403);
    let both = body(&[
        dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-lon", "0", t, 1.0),
        dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-w2", "0", t, 77.0),
    ]);
    assert_eq!(write(&app, &listed, both).await.status(), 204);
    let util: f32 = sqlx::query_scalar(
        "SELECT s.util_pct FROM gpu_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = 'gpu-w2'",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(util, 77.0);
    // The refused requests count as refusals, the partly written one's series as dropped.
    let text = app.metrics().await;
    assert_eq!(
        counter(
            &text,
            "rackwatch_remote_write_series_dropped_total{reason=\"out_of_scope\"} "
        ),
        1.0
    );
    assert_eq!(
        counter(
            &text,
            "rackwatch_remote_write_errors_total{reason=\"forbidden\"} "
        ),
        2.0
    );

    // A host whose name cannot be stored (a control character in its label) is rejected
    // alone; the other host's series in the same request are kept.
    let mixed = body(&[
        dcgm("DCGM_FI_DEV_GPU_UTIL", "bad\u{0}host", "0", t + 3000, 5.0),
        dcgm("DCGM_FI_DEV_GPU_UTIL", "gpu-w1", "0", t + 3000, 55.0),
    ]);
    let rejected_before = counter(&app.metrics().await, "rackwatch_samples_rejected_total ");
    let r = write(&app, &site, mixed).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM gpu_samples s JOIN hosts h ON h.id = s.host_id
          WHERE h.name = 'gpu-w1' AND s.util_pct = 55",
    )
    .fetch_one(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(kept, 1);
    assert_eq!(
        counter(&app.metrics().await, "rackwatch_samples_rejected_total "),
        rejected_before + 1.0
    );

    // 5xx: retried. With the database out of reach, the answer is 503 and says when.
    app.store.pool.close().await;
    let r = write(&app, &site, ok).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    app.stop().await;
}

#[tokio::test]
async fn node_exporter_scrapes_split_over_requests_store_each_time_s_own_values() {
    let app = TestApp::spawn().await;
    let site = fra1_token(&app).await;
    let node = |name: &str, extra: &[(&str, &str)], points: &[(i64, f64)]| {
        let mut labels = vec![("__name__", name), ("instance", "node-sp:9100")];
        labels.extend_from_slice(extra);
        series(&labels, points)
    };
    let idle = |cpu: &str, t: i64, v: f64| {
        node(
            "node_cpu_seconds_total",
            &[("cpu", cpu), ("mode", "idle")],
            &[(t, v)],
        )
    };
    let rapl = |pkg: &str, t: i64, v: f64| {
        node(
            "node_rapl_package_joules_total",
            &[("index", pkg)],
            &[(t, v)],
        )
    };
    let mem = |t: i64, avail: f64| {
        [
            node("node_memory_MemTotal_bytes", &[], &[(t, 1e9)]),
            node("node_memory_MemAvailable_bytes", &[], &[(t, avail)]),
        ]
    };
    let t0 = (Utc::now().timestamp_millis() - 60_000) / 1000 * 1000;
    let t1 = t0 + 15_000;
    let mut whole = vec![
        node("node_load1", &[], &[(t0, 1.0)]),
        idle("0", t0, 100.0),
        idle("1", t0, 100.0),
        rapl("0", t0, 1_000.0),
        rapl("1", t0, 2_000.0),
    ];
    whole.extend(mem(t0, 5e8));
    // The next scrape in two requests, as Prometheus splits a scrape's series.
    let part_a = vec![
        node("node_load1", &[], &[(t1, 2.0)]),
        idle("0", t1, 115.0),
        rapl("0", t1, 1_100.0),
    ];
    let mut part_b = vec![idle("1", t1, 107.5), rapl("1", t1, 2_200.0)];
    part_b.extend(mem(t1, 4e8));
    for b in [&whole, &part_a, &part_b] {
        let r = write(&app, &site, body(b)).await;
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    // A point an hour ahead is refused and moves nothing; the next scrape is itself.
    let rejected = counter(&app.metrics().await, "rackwatch_samples_rejected_total ");
    let ahead = Utc::now().timestamp_millis() + 3_600_000;
    let r = write(
        &app,
        &site,
        body(&[node("node_load1", &[], &[(ahead, 9.0)])]),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        counter(&app.metrics().await, "rackwatch_samples_rejected_total "),
        rejected + 1.0
    );
    let t2 = t1 + 15_000;
    let r = write(&app, &site, body(&[node("node_load1", &[], &[(t2, 3.0)])])).await;
    assert_eq!(r.status(), 204);
    // Rackwatch's own /metrics/fleet series sent back are dropped: no XID event from a count.
    let own = series(
        &[
            ("__name__", "DCGM_FI_DEV_XID_ERRORS"),
            ("Hostname", "node-sp"),
            ("gpu", "0"),
            ("exporter", "rackwatch"),
        ],
        &[(t2, 2.0)],
    );
    assert_eq!(write(&app, &site, body(&[own])).await.status(), 204);
    let text = app.metrics().await;
    assert_eq!(
        counter(
            &text,
            "rackwatch_remote_write_series_dropped_total{reason=\"own\"} "
        ),
        1.0
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM hardware_events")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);

    type Row = (i64, Option<f32>, Option<f32>, Option<f64>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT (extract(epoch FROM s.ts) * 1000)::int8, s.load1, s.cpu_util_pct,
                s.energy_joules::float8, s.mem_used_bytes
           FROM host_samples s JOIN hosts h ON h.id = s.host_id
          WHERE h.name = 'node-sp' ORDER BY s.ts",
    )
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (t0, Some(1.0), None, None, Some(500_000_000)),
            // Both CPUs (0 % and 50 % busy), both packages (+100 J, +200 J).
            (t1, Some(2.0), Some(25.0), Some(300.0), Some(600_000_000)),
            (t2, Some(3.0), None, None, None),
        ]
    );
    app.stop().await;
}

/// A series family served by the endpoint: name, type, value per GPU.
type Family<'a> = (&'a str, &'a str, &'a dyn Fn(u8) -> String);

/// A dcgm-exporter-format endpoint for host `gpu-rw1` with two GPUs: fixed gauges, a
/// total-energy counter growing at 400 W per GPU, and GPU 1's XID code from `xid`.
async fn dcgm_endpoint(xid: Arc<AtomicU64>) -> u16 {
    let started = Instant::now();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let xid = xid.load(Ordering::SeqCst);
            let ms = started.elapsed().as_millis() as u64;
            async move {
                let mut out = String::new();
                let families: [Family; 8] = [
                    ("DCGM_FI_DEV_GPU_UTIL", "gauge", &|g| format!("{}", 87 - g)),
                    ("DCGM_FI_DEV_POWER_USAGE", "gauge", &|_| "400.000".into()),
                    ("DCGM_FI_DEV_GPU_TEMP", "gauge", &|g| format!("{}", 61 + g)),
                    ("DCGM_FI_DEV_FB_USED", "gauge", &|_| "40960".into()),
                    ("DCGM_FI_DEV_FB_FREE", "gauge", &|_| "40960".into()),
                    ("DCGM_FI_DEV_SM_CLOCK", "gauge", &|_| "1980".into()),
                    // 400 W is 400 mJ per ms.
                    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", &|g| {
                        format!("{}", 1_000_000_000 * (u64::from(g) + 1) + 400 * ms)
                    }),
                    ("DCGM_FI_DEV_XID_ERRORS", "gauge", &|g| {
                        format!("{}", if g == 1 { xid } else { 0 })
                    }),
                ];
                for (name, kind, value) in families {
                    out.push_str(&format!("# HELP {name} {name}\n# TYPE {name} {kind}\n"));
                    for g in 0..2u8 {
                        out.push_str(&format!(
                            "{name}{{gpu=\"{g}\",UUID=\"GPU-rw1-{g}\",device=\"nvidia{g}\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"gpu-rw1\",DCGM_FI_DRIVER_VERSION=\"550.54.15\"}} {}\n",
                            value(g)
                        ));
                    }
                }
                out
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Debian's node_exporter on loopback, with the collectors Rackwatch reads.
struct NodeExporter {
    port: u16,
    child: Child,
}

impl NodeExporter {
    async fn start() -> NodeExporter {
        let port = free_port();
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args([
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.meminfo",
                "--collector.loadavg",
                "--collector.netdev",
                "--collector.diskstats",
                "--collector.filesystem",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus-node-exporter (Debian package) on PATH; ./scripts/test installs it",
            );
        // Killed and reaped on drop, also when it never answers.
        let node = NodeExporter { port, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node_exporter did not start");
    }

    /// A gauge from node_exporter's own page.
    async fn gauge(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        counter(&text, &format!("{name} "))
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RULES: &str = r#"
[[rule]]
name = "gpu-xid"
kind = "hardware"
events = ["xid", "gpu_lost"]
severity = "critical"
summary = "GPU reported an XID error"

[[route]]
to = ["oncall@example.com"]
"#;

/// Poll `f` every 250 ms until it is true or `secs` passed.
async fn until<F, Fut>(secs: u64, what: &str, log: impl Fn() -> String, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s; prometheus log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn prometheus_remote_writes_node_exporter_and_dcgm_series_into_the_fleet() {
    let smtp = SmtpServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.toml");
    std::fs::write(&rules, RULES).unwrap();
    let db = crate::support::fresh_database().await;
    let app = TestApp::spawn_full(db, |c| smtp.alert_through(c, &rules)).await;
    let token = app
        .store
        .create_write_token(&WriteScope::Site("fra1".into()), "prometheus")
        .await
        .unwrap();
    let xid = Arc::new(AtomicU64::new(0));
    let dcgm_port = dcgm_endpoint(xid.clone()).await;
    let node = NodeExporter::start().await;
    let config = format!(
        r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: dcgm
    static_configs:
      - targets: ["127.0.0.1:{dcgm_port}"]
        labels: {{rack: r7}}
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:{node_port}"]
        labels: {{instance: gpu-rw1, rack: r7}}
remote_write:
  - url: {base}/api/v1/write
    authorization:
      credentials: {token}
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
    metadata_config:
      send: false
"#,
        node_port = node.port,
        base = app.base,
    );
    let prom = Prometheus::start(&config).await;
    let log = || prom.log();
    let pool = app.store.pool.clone();

    // Hosts and GPUs arrive: node_exporter's CPU rate needs two scrapes.
    until(60, "host and GPU samples", log, || {
        let pool = pool.clone();
        async move {
            let (h, g): (i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM host_latest WHERE cpu_util_pct IS NOT NULL AND mem_used_bytes IS NOT NULL),
                        (SELECT count(*) FROM gpu_latest WHERE util_pct IS NOT NULL AND energy_joules_total IS NOT NULL)",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            h == 1 && g == 2
        }
    })
    .await;
    let (name, site, rack): (String, String, String) =
        sqlx::query_as("SELECT name, site, rack FROM hosts")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (name.as_str(), site.as_str(), rack.as_str()),
        ("gpu-rw1", "fra1", "r7")
    );
    let (util, power, temp, used, total): (f32, f32, f32, i64, i64) = sqlx::query_as(
        "SELECT l.util_pct, l.power_watts, l.temp_celsius, l.mem_used_bytes, g.memory_total_bytes
           FROM gpu_latest l JOIN gpus g USING (host_id, gpu_index) WHERE l.gpu_index = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((util, power, temp), (86.0, 400.0, 62.0));
    assert_eq!((used, total), (40 << 30, 80 << 30));
    let (mem_total, cpu, load): (i64, f32, f32) =
        sqlx::query_as("SELECT mem_total_bytes, cpu_util_pct, load1 FROM host_latest")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        mem_total as f64,
        node.gauge("node_memory_MemTotal_bytes").await
    );
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    assert!(load >= 0.0);

    let cookie = app.login("admin", "correct-horse-battery").await;
    let (status, fleet) = app.page(&cookie, "/").await;
    assert_eq!(status, 200);
    assert!(fleet.contains("gpu-rw1"), "the fleet page lists the host");
    let (status, host) = app.page(&cookie, "/hosts/gpu-rw1").await;
    assert_eq!(status, 200);
    assert!(host.contains("GPU-rw1-1"), "the host page lists GPU 1");
    assert!(host.contains("NVIDIA H100 80GB HBM3"));

    // GPU 1 reports XID 79: the hardware rule mails.
    let flipped = Instant::now();
    xid.store(79, Ordering::SeqCst);
    let mails = smtp.wait_for(1, 30).await;
    assert_eq!(
        mails.len(),
        1,
        "one XID mail; prometheus log:\n{}",
        prom.log()
    );
    let m = &mails[0];
    assert!(
        subject(m).starts_with("[FIRING:CRITICAL] GPU reported an XID error"),
        "{}",
        subject(m)
    );
    assert!(m.contains("fra1 / r7 / gpu-rw1 / GPU 1"), "{m}");
    assert!(m.contains("XID 79"), "{m}");
    let latency = flipped.elapsed();
    let events: Vec<(i16, i64)> =
        sqlx::query_as("SELECT gpu_index, code FROM hardware_events ORDER BY ts")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        events,
        vec![(1, 79)],
        "one event, however often 79 is scraped"
    );
    assert!(latency < Duration::from_secs(30));

    // Energy: the report counts what the counters said between the first and the last
    // sample, 400 W per GPU.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(prom);
    // A write Prometheus sent before it was stopped may still be committing: wait until
    // the samples stop changing, so the spans below cover what the report will count.
    let mut last = -1i64;
    for _ in 0..50 {
        let (n, newest): (i64, Option<chrono::DateTime<Utc>>) =
            sqlx::query_as("SELECT count(*), max(ts) FROM gpu_samples")
                .fetch_one(&pool)
                .await
                .unwrap();
        let key = n ^ newest.map_or(0, |t| t.timestamp_micros());
        if key == last {
            break;
        }
        last = key;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let spans: Vec<(f64, f64, f64)> = sqlx::query_as(
        "SELECT max(energy_joules_total) - min(energy_joules_total),
                extract(epoch FROM max(ts) - min(ts))::float8, count(*)::float8
           FROM gpu_samples GROUP BY gpu_index",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(spans.len(), 2);
    let mut expected_j = 0.0;
    for (j, secs, n) in &spans {
        assert!(*n >= 5.0, "{n} samples");
        assert!((j / secs - 400.0).abs() < 400.0 * 0.05, "{j} J in {secs} s");
        expected_j += j;
    }
    let (from, to): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT min(ts), max(ts) FROM gpu_samples")
            .fetch_one(&pool)
            .await
            .unwrap();
    let hour = |t: chrono::DateTime<Utc>| {
        chrono::DurationRound::duration_trunc(t, chrono::Duration::hours(1)).unwrap()
    };
    app.store
        .rollup_range(
            from - chrono::Duration::minutes(1),
            to + chrono::Duration::minutes(1),
            None,
        )
        .await
        .unwrap();
    // The rollup and accounting jobs as they will run two hours on: the samples' hours are
    // rolled up, settled and accounted, and the report (which reads accounted hours only)
    // has them.
    app.store
        .run_rollups(hour(to) + chrono::Duration::hours(2))
        .await
        .unwrap();
    rackwatch::analytics::energy::run(
        &app.store,
        &app.cfg.energy,
        hour(to) + chrono::Duration::hours(2),
    )
    .await
    .unwrap();
    // A GPU minute whose only counter reading is the series' first has no delta; the
    // accounting estimates it from power × 60 s (analytics::energy). That happens when the
    // first scrape lands in the last second of a minute.
    let estimated: f64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(power_watts::float8 * 60), 0) FROM gpu_samples_1m
          WHERE COALESCE(energy_samples, 0) = 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let expected_j = expected_j + estimated;
    let tz = app.cfg.energy.tz();
    let week = IsoWeek::containing(from, tz);
    let report =
        rackwatch::report::energy::build(&app.store, &app.cfg.energy, week, None, Utc::now())
            .await
            .unwrap();
    let total = report.total();
    assert_eq!(total.gpus, 2);
    let got_j = total.gpu_energy_kwh * 3.6e6;
    assert!(
        (got_j - expected_j).abs() <= 1e-6 * expected_j,
        "report {got_j} J, counters and estimated minutes {expected_j} J ({estimated} J estimated)"
    );
    assert!(total.measured_energy_kwh > 0.0);
    app.stop().await;
}

/// A request with one host past the batch size is refused whole (413, which Prometheus
/// drops), not after the hosts before it were stored.
#[tokio::test]
async fn a_request_with_a_host_past_the_batch_size_stores_none_of_its_hosts() {
    let app = TestApp::spawn_with(|c| c.ingest.max_samples_per_batch = 100).await;
    let token = app
        .store
        .create_write_token(&WriteScope::Site("fra1".into()), "sized")
        .await
        .unwrap();
    let now = Utc::now().timestamp_millis();
    let util = |host: &str, n: i64| {
        let mut s = dcgm("DCGM_FI_DEV_GPU_UTIL", host, "0", 0, 0.0);
        s.samples = (0..n)
            .map(|i| Sample {
                timestamp: now - (n - i) * 1000,
                value: 50.0,
            })
            .collect();
        s
    };
    // "rw-a" comes first (hosts are taken in name order); "rw-b" has 100 samples and its
    // GPU: 101 items.
    let r = write(&app, &token, body(&[util("rw-a", 5), util("rw-b", 100)])).await;
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&app.store.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing of the refused request");
    let r = write(&app, &token, body(&[util("rw-a", 5), util("rw-b", 90)])).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    app.stop().await;
}

/// Before: a remote-write token had no volume limit; a leaked one could send a full
/// batch per request as fast as the ingest slots allowed.
#[tokio::test]
async fn a_remote_write_token_over_its_sample_volume_gets_503_and_stores_nothing_of_that_request() {
    let app = TestApp::spawn_with(|c| {
        c.ingest.remote_write_samples_per_sec = 100.0;
        c.ingest.remote_write_samples_burst = 1000;
        c.ingest.max_samples_per_batch = 1000;
    })
    .await;
    let busy = app
        .store
        .create_write_token(&WriteScope::Site("fra1".into()), "busy")
        .await
        .unwrap();
    let other = app
        .store
        .create_write_token(&WriteScope::Site("ams2".into()), "other")
        .await
        .unwrap();
    let now = Utc::now().timestamp_millis();
    let points = |n: usize, from_s: i64| -> Vec<(i64, f64)> {
        (0..n as i64)
            .map(|i| (now - (from_s + i) * 1000, 50.0))
            .collect()
    };
    let util = |host: &str, pts: &[(i64, f64)]| {
        let mut s = dcgm("DCGM_FI_DEV_GPU_UTIL", host, "0", 0, 0.0);
        s.samples = pts
            .iter()
            .map(|(t, v)| Sample {
                timestamp: *t,
                value: *v,
            })
            .collect();
        body(&[s])
    };
    let stored = |host: &'static str| {
        let pool = app.store.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM gpu_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = $1",
            )
            .bind(host)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let r = write(&app, &busy, util("rw-busy", &points(800, 2000))).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    // 200 samples left: 500 more wait for 300 to refill (3 s at 100/s). 503, which
    // Prometheus retries (it drops a 429 unless `retry_on_http_429` is set).
    let r = write(&app, &busy, util("rw-busy", &points(500, 1000))).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "3");
    let text = r.text().await.unwrap();
    assert!(
        text.contains("ingest.remote_write_samples_per_sec"),
        "{text}"
    );
    assert_eq!(
        stored("rw-busy").await,
        800,
        "nothing of the refused request"
    );
    // Another token is not held back.
    let r = write(&app, &other, util("rw-other", &points(800, 2000))).await;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert_eq!(stored("rw-other").await, 800);
    // A burst smaller than a batch could never be written: refused at start.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[ingest]\nremote_write_samples_burst = 10\n").unwrap();
    let e = rackwatch::config::Config::load(Some(&file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ingest.remote_write_samples_burst (10)"), "{e}");
    app.stop().await;
}
