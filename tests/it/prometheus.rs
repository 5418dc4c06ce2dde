//! `GET /metrics/fleet` against the real Prometheus tools: Debian's `promtool` lints the
//! exposition, a real `prometheus` process scrapes it, its HTTP API answers the same
//! values as Rackwatch's own API, and the queries of NVIDIA's Grafana dashboard for
//! dcgm-exporter (`grafana/dcgm-exporter-dashboard.json` in NVIDIA/dcgm-exporter) return
//! series through it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use crate::support::{free_port, TestApp, METRICS_TOKEN};

/// Two fresh hosts with two GPUs each (one XID on gpu-a's GPU 1) and one host whose
/// samples are 10 minutes old.
async fn load_fleet(app: &TestApp) {
    let now = Utc::now();
    let fresh = now - chrono::Duration::seconds(2);
    let old = now - chrono::Duration::minutes(10);
    for (host, rack, ts, job) in [
        ("gpu-a", "r1", fresh, Some("4711")),
        ("gpu-b", "r2", fresh, None),
        ("gpu-old", "r2", old, None),
    ] {
        let token = app.token(host).await;
        let k = match host {
            "gpu-a" => 0.0,
            "gpu-b" => 10.0,
            _ => 20.0,
        };
        let labels = match job {
            Some(j) => json!({"hpc_job": j}),
            None => json!({}),
        };
        let gpus: Vec<Value> = (0..2)
            .map(|i| {
                json!({"index": i, "uuid": format!("GPU-{host}-{i}"), "model": "NVIDIA H100 80GB HBM3",
                       "memory_total_bytes": 85_899_345_920u64, "power_limit_watts": 700,
                       "driver_version": "550.54.15"})
            })
            .collect();
        let samples: Vec<Value> = (0..2)
            .map(|i| {
                let i = f64::from(i);
                json!({"ts": ts, "index": i as u8, "util_pct": 90.5 - k - i, "mem_util_pct": 40.0 + i,
                       "mem_used_bytes": 40u64 * 1_073_741_824 + i as u64 * 1_048_576,
                       "power_watts": 612.3 - k - i, "energy_joules_total": 1.25e7 + k * 1000.0 + i,
                       "temp_celsius": 61.5 + i - k / 10.0, "sm_clock_mhz": 1980.0 - k,
                       "mem_clock_mhz": 2619.0})
            })
            .collect();
        let mut events = vec![];
        if host == "gpu-a" {
            events.push(json!({"ts": fresh, "index": 1, "kind": "xid", "code": 79,
                               "message": "GPU has fallen off the bus"}));
        }
        let body = json!({
            "host": {"name": host, "site": "fra1", "rack": rack, "pool": "train", "labels": labels},
            "gpus": gpus,
            "host_samples": [{"ts": ts, "cpu_util_pct": 37.5 + k, "load1": 12.25,
                              "mem_used_bytes": 512u64 << 30, "mem_total_bytes": 2048u64 << 30,
                              "net_rx_bytes_per_s": 1.5e9}],
            "gpu_samples": samples,
            "events": events,
        });
        let r = app.ingest(&token, &body).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

async fn fleet(app: &TestApp, query: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/metrics/fleet{query}", app.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
}

/// `promtool check metrics` on `text`: exit code and findings.
fn promtool(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), msg)
}

/// The sample lines of one family: labels → (value, timestamp).
fn family(text: &str, name: &str) -> BTreeMap<String, (f64, i64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .map(|rest| {
            let (labels, tail) = rest.split_once("} ").unwrap();
            let mut it = tail.split(' ');
            let v: f64 = it.next().unwrap().parse().unwrap();
            let ts: i64 = it.next().expect("a timestamp").parse().unwrap();
            (labels.to_string(), (v, ts))
        })
        .collect()
}

#[tokio::test]
async fn fleet_exposition_names_gpus_as_dcgm_exporter_and_passes_promtool() {
    let app = TestApp::spawn().await;
    load_fleet(&app).await;

    // Credentials: none → 401; the scrape token or a user's HTTP Basic → 200.
    let r = app
        .http
        .get(format!("{}/metrics/fleet", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.store
        .upsert_user(
            "grafana",
            rackwatch::store::auth::Role::Viewer,
            "scrape-pass",
        )
        .await
        .unwrap();
    let r = app
        .http
        .get(format!("{}/metrics/fleet", app.base))
        .basic_auth("grafana", Some("scrape-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = fleet(&app, "?labels=camel").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("labels=snake_case"));

    let r = fleet(&app, "").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    for help in text.lines().filter(|l| l.starts_with("# HELP ")) {
        let mut parts = help.splitn(4, ' ');
        let text = parts.nth(3).unwrap_or("");
        assert!(
            !text.is_empty() && text.trim() == text,
            "HELP text without stray spaces: {help:?}"
        );
    }

    // dcgm-exporter's names, units and labels, plus place and job.
    let temp = family(&text, "DCGM_FI_DEV_GPU_TEMP");
    assert_eq!(
        temp.len(),
        4,
        "two fresh hosts × 2 GPUs, gpu-old left out: {temp:?}"
    );
    let a1 = "gpu=\"1\",UUID=\"GPU-gpu-a-1\",device=\"nvidia1\",modelName=\"NVIDIA H100 80GB HBM3\",\
              Hostname=\"gpu-a\",DCGM_FI_DRIVER_VERSION=\"550.54.15\",site=\"fra1\",rack=\"r1\",pool=\"train\",hpc_job=\"4711\",exporter=\"rackwatch\"";
    assert_eq!(temp[a1].0, 62.5, "{temp:?}");
    assert!(!text.contains("gpu-old"), "stale samples are left out");
    let (_, ts) = temp[a1];
    let age = Utc::now().timestamp_millis() - ts;
    assert!(
        (1_000..60_000).contains(&age),
        "sample timestamp sent: {age} ms old"
    );
    let b0 = "gpu=\"0\",UUID=\"GPU-gpu-b-0\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",\
              Hostname=\"gpu-b\",DCGM_FI_DRIVER_VERSION=\"550.54.15\",site=\"fra1\",rack=\"r2\",pool=\"train\",exporter=\"rackwatch\"";
    assert_eq!(family(&text, "DCGM_FI_DEV_POWER_USAGE")[b0].0, 602.3);
    assert_eq!(family(&text, "DCGM_FI_DEV_GPU_UTIL")[b0].0, 80.5);
    assert_eq!(family(&text, "DCGM_FI_DEV_SM_CLOCK")[b0].0, 1970.0);
    assert_eq!(family(&text, "DCGM_FI_DEV_MEM_CLOCK")[b0].0, 2619.0);
    assert_eq!(
        family(&text, "DCGM_FI_DEV_FB_USED")[a1].0,
        40.0 * 1024.0 + 1.0
    );
    assert_eq!(
        family(&text, "DCGM_FI_DEV_FB_FREE")[a1].0,
        80.0 * 1024.0 - (40.0 * 1024.0 + 1.0)
    );
    // J → mJ, as dcgm-exporter counts energy.
    assert_eq!(
        family(&text, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")[b0].0,
        (1.25e7 + 10_000.0) * 1000.0
    );
    assert_eq!(family(&text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")[b0].0, 0.805);
    // The XID count: 1 on the GPU that had one, 0 on the others, never the last code.
    let xid = family(&text, "DCGM_FI_DEV_XID_ERRORS");
    assert_eq!(xid.len(), 4);
    assert_eq!(xid[a1].0, 1.0);
    assert_eq!(xid.values().filter(|(v, _)| *v == 0.0).count(), 3);
    assert_eq!(family(&text, "rackwatch_gpu_last_xid_code")[a1].0, 79.0);
    // Host series, units in their names.
    let cpu = family(&text, "rackwatch_host_cpu_util_percent");
    assert_eq!(
        cpu["Hostname=\"gpu-a\",site=\"fra1\",rack=\"r1\",pool=\"train\",hpc_job=\"4711\",exporter=\"rackwatch\""].0,
        37.5
    );
    assert_eq!(family(&text, "rackwatch_host_mem_total_bytes").len(), 2);
    assert_eq!(
        family(&text, "rackwatch_host_net_rx_bytes_per_second").len(),
        2
    );

    // promtool: snake-case labels lint clean; dcgm-exporter's own label names draw
    // only the camel-case finding for `modelName`, which dcgm-exporter itself has.
    let snake = fleet(&app, "?labels=snake_case")
        .await
        .text()
        .await
        .unwrap();
    assert!(snake.contains("model_name=\"NVIDIA H100 80GB HBM3\""));
    let (code, msg) = promtool(&snake);
    assert_eq!(code, 0, "promtool check metrics: {msg}");
    let (code, msg) = promtool(&text);
    let findings: Vec<&str> = msg.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!findings.is_empty());
    for f in &findings {
        assert!(
            f.ends_with("label names should be written in 'snake_case' not 'camelCase'"),
            "promtool (exit {code}): {f}"
        );
    }
    app.stop().await;
}

/// A real Prometheus server on loopback with its own TSDB.
pub(crate) struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub(crate) async fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus) on PATH");
        let p = Prometheus {
            port,
            child,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("{}/-/ready", p.base())).send().await {
                if r.status() == 200 {
                    return p;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus did not become ready: {}", p.log());
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    /// An instant query's result vector.
    pub(crate) async fn query(&self, q: &str) -> Vec<Value> {
        let r: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base()))
            .query(&[("query", q)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{q}: {r}");
        r["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The values of a label on series matching `matcher` (Grafana's `label_values`).
    async fn label_values(&self, label: &str, matcher: &str) -> Vec<String> {
        let r: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/label/{label}/values", self.base()))
            .query(&[("match[]", matcher)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value_of(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

/// The panels of NVIDIA's "NVIDIA DCGM Exporter Dashboard" (grafana/dcgm-exporter-dashboard.json
/// in NVIDIA/dcgm-exporter, Grafana id 12239), by title, with its template variables
/// `$Hostname` and `$gpu` as written there.
const DASHBOARD_PANELS: &[(&str, &str)] = &[
    (
        "GPU Temperature",
        r#"max(DCGM_FI_DEV_GPU_TEMP{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, uuid)"#,
    ),
    (
        "GPU Avg. Temp",
        r#"avg(DCGM_FI_DEV_GPU_TEMP{Hostname=~"$Hostname", gpu=~"$gpu"})"#,
    ),
    (
        "GPU Power Usage",
        r#"max(DCGM_FI_DEV_POWER_USAGE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, uuid)"#,
    ),
    (
        "GPU Power Total",
        r#"sum(max(DCGM_FI_DEV_POWER_USAGE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (gpu))"#,
    ),
    (
        "GPU SM Clocks",
        r#"max(DCGM_FI_DEV_SM_CLOCK{Hostname=~"$Hostname", gpu=~"$gpu"} * 1000000) by (Hostname, UUID, gpu)"#,
    ),
    (
        "GPU Utilization",
        r#"max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)"#,
    ),
    (
        "GPU Framebuffer Mem Used",
        r#"max(DCGM_FI_DEV_FB_USED{Hostname=~"$Hostname", gpu=~"$gpu"}) by (Hostname, gpu, GPU_I_ID, GPU_I_PROFILE)"#,
    ),
    // Not served: "Tensor Core Utilization", max(DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{…}),
    // a DCGM profiling field NVML does not provide.
];

/// Further dcgm-exporter queries common in operators' dashboards and alert rules
/// (the older revision of the same dashboard and NVIDIA's examples).
const COMMON_QUERIES: &[&str] = &[
    r#"DCGM_FI_DEV_GPU_TEMP{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
    r#"DCGM_FI_DEV_GPU_UTIL{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
    r#"DCGM_FI_DEV_POWER_USAGE{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
    r#"DCGM_FI_DEV_MEM_CLOCK{Hostname=~"$Hostname", gpu=~"$gpu"} * 1000000"#,
    r#"DCGM_FI_DEV_FB_FREE{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
    r#"DCGM_FI_DEV_MEM_COPY_UTIL{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
    r#"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
    r#"DCGM_FI_DEV_XID_ERRORS{Hostname=~"$Hostname", gpu=~"$gpu"}"#,
];

#[tokio::test]
async fn prometheus_scrapes_the_fleet_and_nvidias_dashboard_queries_answer() {
    let app = TestApp::spawn().await;
    load_fleet(&app).await;
    let target = app.base.trim_start_matches("http://");
    let prom = Prometheus::start(&format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: rackwatch\n    metrics_path: /metrics/fleet\n\
         \x20   authorization:\n      credentials: {METRICS_TOKEN}\n\
         \x20   static_configs:\n      - targets: ['{target}']\n"
    ))
    .await;
    // Wait for the first scrapes.
    let mut ok = false;
    for _ in 0..300 {
        let up = prom.query("count(DCGM_FI_DEV_GPU_TEMP)").await;
        if up.first().map(value_of) == Some(4.0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "Prometheus never saw 4 GPUs: {}", prom.log());
    let up = prom.query(r#"up{job="rackwatch"}"#).await;
    assert_eq!(value_of(&up[0]), 1.0);

    // The same values as Rackwatch's own API.
    let cookie = app.login("admin", "admin-password-1").await;
    let mut compared = 0;
    for host in ["gpu-a", "gpu-b"] {
        let data = app.json(&cookie, &format!("/api/v1/hosts/{host}")).await;
        for g in data["gpus"].as_array().unwrap() {
            let i = g["index"].as_i64().unwrap();
            for (family, field, scale) in [
                ("DCGM_FI_DEV_GPU_TEMP", "temp_celsius", 1.0),
                ("DCGM_FI_DEV_POWER_USAGE", "power_watts", 1.0),
                ("DCGM_FI_DEV_GPU_UTIL", "util_pct", 1.0),
                ("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", 1.0),
                ("DCGM_FI_DEV_FB_USED", "mem_used_bytes", 1.0 / 1_048_576.0),
            ] {
                let q = format!(r#"{family}{{Hostname="{host}",gpu="{i}"}}"#);
                let r = prom.query(&q).await;
                assert_eq!(r.len(), 1, "{q}");
                let want = g[field].as_f64().unwrap() * scale;
                assert_eq!(value_of(&r[0]), want, "{q} vs /api/v1/hosts/{host} {field}");
                assert_eq!(r[0]["metric"]["UUID"], g["uuid"], "{q}: UUID label");
                compared += 1;
            }
        }
        let q = format!(r#"rackwatch_host_cpu_util_percent{{Hostname="{host}"}}"#);
        let r = prom.query(&q).await;
        assert_eq!(
            value_of(&r[0]),
            data["host"]["cpu_util_pct"].as_f64().unwrap()
        );
        compared += 1;
    }
    assert_eq!(compared, 22);
    assert!(prom
        .query(r#"DCGM_FI_DEV_GPU_TEMP{Hostname="gpu-old"}"#)
        .await
        .is_empty());

    // NVIDIA's dashboard: its variables as Grafana resolves them, then every panel.
    let hosts = prom.label_values("Hostname", "DCGM_FI_DEV_FB_FREE").await;
    assert_eq!(hosts, ["gpu-a", "gpu-b"]);
    let host_re = format!("({})", hosts.join("|"));
    let gpus = prom
        .label_values(
            "gpu",
            &format!(r#"DCGM_FI_DEV_FB_FREE{{Hostname=~"{host_re}"}}"#),
        )
        .await;
    assert_eq!(gpus, ["0", "1"]);
    let gpu_re = format!("({})", gpus.join("|"));
    let subst = |q: &str| q.replace("$Hostname", &host_re).replace("$gpu", &gpu_re);
    for (title, q) in DASHBOARD_PANELS {
        let r = prom.query(&subst(q)).await;
        assert!(!r.is_empty(), "panel {title:?}: {q} returned no series");
    }
    let total = prom.query(&subst(DASHBOARD_PANELS[3].1)).await;
    // max by gpu over both hosts: GPU 0 612.3 (gpu-a), GPU 1 611.3.
    assert!((value_of(&total[0]) - (612.3 + 611.3)).abs() < 1e-3);
    for q in COMMON_QUERIES {
        let r = prom.query(&subst(q)).await;
        assert_eq!(r.len(), 4, "{q}");
    }
    let clocks = prom.query(&subst(COMMON_QUERIES[3])).await;
    assert!(clocks.iter().all(|s| value_of(s) == 2619.0e6));
    drop(prom);
    app.stop().await;
}
