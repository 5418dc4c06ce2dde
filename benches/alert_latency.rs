//! Fault → mail latency: a hardware fault seen by a real agent pipeline (collector
//! thread, shipper, HTTP ingest) travels through the alert evaluator, the outbox and
//! lettre to a real SMTP server (aiosmtpd) on loopback. Measured per fault from the
//! moment the agent's source reports it to the moment the mail file appears.
//!
//! The same kind of fault then goes through the peer operators run today, in the same
//! run and to the same SMTP server: Prometheus scrapes a dcgm-exporter-format endpoint
//! served here (one target per host) whose `DCGM_FI_DEV_XID_ERRORS` flips, the rule
//! `DCGM_FI_DEV_XID_ERRORS > 0` (`for: 0s`) fires, and Alertmanager mails. Each fault
//! lands on its own host at a random point in the scrape interval; latency runs from the
//! flip to the mail. Two configurations (Debian's `prometheus` and
//! `prometheus-alertmanager`): tuned (scrape and evaluation every 15 s, as NVIDIA's
//! Helm chart scrapes, `group_wait: 10s`) and Prometheus's built-in defaults (1 m, 1 m,
//! Alertmanager's 30 s), which takes minutes and is skipped with BENCH_QUICK=1.
//!
//! Run with `./scripts/bench alert-latency` (needs BENCH_PYTHON with aiosmtpd; the
//! script sets it up). BENCH_FAULTS changes the number of faults (default 50),
//! BENCH_PROM_FAULTS the faults per Prometheus configuration (default 20).

mod common;

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rackwatch::collect::agent::{self, Timing};
use rackwatch::collect::{Collected, Source};
use rackwatch::config::{Config, Secret};
use rackwatch::model::{HardwareEvent, HostInfo};
use tokio::sync::watch;

/// XID codes used to tell the faults apart (each (GPU, code) is its own alert).
const CODES: [i64; 7] = [13, 31, 43, 48, 63, 79, 94];

/// A source that reports the faults it is told to, and when it reported them.
struct FaultSource {
    rx: mpsc::Receiver<(u8, i64)>,
    seen: Arc<Mutex<HashMap<(u8, i64), Instant>>>,
}

impl Source for FaultSource {
    fn name(&self) -> &'static str {
        "fault-injector"
    }
    fn collect(&mut self, now: DateTime<Utc>, out: &mut Collected) {
        while let Ok((gpu, code)) = self.rx.try_recv() {
            self.seen
                .lock()
                .unwrap()
                .insert((gpu, code), Instant::now());
            out.events.push(HardwareEvent {
                ts: now,
                index: Some(gpu),
                kind: "xid".into(),
                code: Some(code),
                message: format!(
                    "NVRM: Xid (PCI:0000:{:02x}:00): {code}, pid=4242",
                    0x18 + gpu
                ),
                count: None,
            });
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    common::block_on(run());
}

async fn run() {
    let faults = std::env::var("BENCH_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize);
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let work = std::env::temp_dir().join(format!("rackwatch-bench-alert-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    // A real SMTP server.
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maildir = work.join("mail");
    let mut smtp = std::process::Command::new(&python)
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{smtp_port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir)
        .spawn()
        .expect("starting aiosmtpd (set BENCH_PYTHON to a python with aiosmtpd)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Postgres, server, alerting.
    let pg_root = work.join("pg");
    let common::BenchDb { mut pg, store, url } = common::start_db(pg_root, &[], 8).await;
    store.ensure_partitions(Utc::now(), 7, 3).await.unwrap();
    let rules = work.join("alerts.toml");
    std::fs::write(
        &rules,
        // `per_code`: each fault (a GPU and a code not seen before) is its own alert and
        // mail, as each is its own alert in the Prometheus rule below.
        "[[rule]]\nname = \"gpu-xid\"\nkind = \"hardware\"\nevents = [\"xid\"]\nseverity = \"critical\"\nper_code = true\n\
         summary = \"GPU reported an XID error\"\n[[route]]\nto = [\"oncall@example.com\"]\n",
    )
    .unwrap();
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".into();
    cfg.database.url = Secret::new(url.clone());
    cfg.alerting.rules_file = rules.to_string_lossy().into_owned();
    // Shipped defaults except group_interval: every fault here is a new incident and
    // must be mailed on its own (Alertmanager's 60 s figure is for a new group, too).
    cfg.alerting.group_interval_secs = 0;
    cfg.alerting.smtp.host = "127.0.0.1".into();
    cfg.alerting.smtp.port = smtp_port;
    cfg.alerting.smtp.security = "plain".into();
    let group_wait = cfg.alerting.group_wait_secs;
    let cfg = Arc::new(cfg);
    let (stop, stop_rx) = watch::channel(false);
    let bg = rackwatch::app::start_background(cfg.clone(), store.clone(), stop_rx.clone()).unwrap();
    let server = rackwatch::app::start_server_with(
        cfg.clone(),
        store.clone(),
        bg.shared.clone(),
        stop_rx.clone(),
    )
    .await
    .unwrap();
    // Wait until this server leads (the alert loop only acts on the leader).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A real agent pipeline with a fault-injecting source, sampling every second.
    let token = store
        .create_agent_token("bench-gpu-node", "bench")
        .await
        .unwrap();
    let spool = work.join("spool");
    let shipper =
        rackwatch::app::shipper(&cfg, &format!("http://{}", server.addr), &token, &spool).unwrap();
    let (tx, rx) = mpsc::channel();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let source = FaultSource {
        rx,
        seen: seen.clone(),
    };
    let identity = HostInfo {
        name: "bench-gpu-node".into(),
        site: "fra1".into(),
        rack: "r01".into(),
        ..Default::default()
    };
    let timing = Timing {
        interval: Duration::from_secs(1),
        ship_interval: Duration::from_secs(10),
    };
    let agent_task = tokio::spawn(agent::run(
        identity,
        vec![Box::new(source)],
        shipper,
        timing,
        stop_rx.clone(),
    ));

    let mut detect_to_mail = Vec::new();
    let mut inject_to_mail = Vec::new();
    let mut known: std::collections::HashSet<std::path::PathBuf> = std::collections::HashSet::new();
    for i in 0..faults {
        let gpu = (i % 8) as u8;
        let code = CODES[(i / 8) % CODES.len()];
        let injected = Instant::now();
        tx.send((gpu, code)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let needle = format!("GPU {gpu}");
        let xid = format!("XID {code}:");
        let arrived = loop {
            let mut found = None;
            for e in std::fs::read_dir(maildir.join("new"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = e.path();
                if known.contains(&p) {
                    continue;
                }
                let text = std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .replace("=\n", "")
                    .replace("=\r\n", "");
                if text.contains(&needle) && text.contains(&xid) {
                    found = Some(p);
                    break;
                }
            }
            if let Some(p) = found {
                known.insert(p);
                break Some(Instant::now());
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let Some(arrived) = arrived else {
            panic!("fault {i} (GPU {gpu}, XID {code}) produced no mail within 30 s");
        };
        let detected = seen.lock().unwrap()[&(gpu, code)];
        detect_to_mail.push((arrived - detected).as_secs_f64());
        inject_to_mail.push((arrived - injected).as_secs_f64());
    }
    let prom_faults = common::env("BENCH_PROM_FAULTS", 20);
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let mut tuned = prom_am::run(&work, smtp_port, &maildir, prom_am::TUNED, prom_faults).await;
    let mut default = if quick {
        Vec::new()
    } else {
        prom_am::run(&work, smtp_port, &maildir, prom_am::DEFAULTS, prom_faults).await
    };

    let _ = stop.send(true);
    let _ = agent_task.await;
    let _ = server.task.await;
    let _ = bg.jobs.await;
    let _ = bg.alerts.await;
    store.pool.close().await;
    let _ = smtp.kill();
    let _ = smtp.wait();
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&work);

    detect_to_mail.sort_by(f64::total_cmp);
    inject_to_mail.sort_by(f64::total_cmp);
    let (p50, p95) = (
        percentile(&detect_to_mail, 0.5),
        percentile(&detect_to_mail, 0.95),
    );
    println!("{faults} XID faults, one mail each, group_wait = {group_wait} s (shipped default)");
    println!("fault reported by the agent's source → mail in the SMTP server's Maildir:");
    println!(
        "  p50 {p50:.2} s, p95 {p95:.2} s, max {:.2} s",
        detect_to_mail[detect_to_mail.len() - 1]
    );
    println!(
        "including the wait for the agent's next 1 s sampling tick: p50 {:.2} s, p95 {:.2} s",
        percentile(&inject_to_mail, 0.5),
        percentile(&inject_to_mail, 0.95)
    );
    tuned.sort_by(f64::total_cmp);
    default.sort_by(f64::total_cmp);
    let tuned_p95 = percentile(&tuned, 0.95);
    println!(
        "Prometheus + Alertmanager, tuned (15 s scrape and evaluation, group_wait 10 s), {} faults, XID flip → mail: p50 {:.1} s, p95 {tuned_p95:.1} s, max {:.1} s",
        tuned.len(),
        percentile(&tuned, 0.5),
        tuned[tuned.len() - 1]
    );
    let mut line = format!(
        "BENCH alert-latency faults={faults} p50_s={p50:.2} p95_s={p95:.2} prom_am_tuned_p95_s={tuned_p95:.1}"
    );
    if default.is_empty() {
        println!(
            "Prometheus + Alertmanager with the defaults (1 m, 1 m, 30 s): skipped (BENCH_QUICK=1)"
        );
    } else {
        let default_p95 = percentile(&default, 0.95);
        println!(
            "Prometheus + Alertmanager, defaults (1 m scrape and evaluation, group_wait 30 s), {} faults: p50 {:.1} s, p95 {default_p95:.1} s, max {:.1} s",
            default.len(),
            percentile(&default, 0.5),
            default[default.len() - 1]
        );
        line.push_str(&format!(" prom_am_default_p95_s={default_p95:.1}"));
    }
    let ratio = tuned_p95 / p95;
    println!("Rackwatch is {ratio:.0}× faster at p95 than tuned Prometheus + Alertmanager (goal p95 ≤ 2 s)");
    println!("{line} ratio_tuned={ratio:.1}");
}

/// The peer: Prometheus scraping a dcgm-exporter-format endpoint and Alertmanager
/// mailing, both real processes from Debian's packages.
mod prom_am {
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rand::Rng;

    /// One configuration: scrape and evaluation interval (None: Prometheus's default,
    /// 1 m) and Alertmanager's group_wait (None: its default, 30 s).
    pub struct Setup {
        pub name: &'static str,
        pub interval_s: Option<u64>,
        pub group_wait_s: Option<u64>,
    }

    pub const TUNED: Setup = Setup {
        name: "tuned",
        interval_s: Some(15),
        group_wait_s: Some(10),
    };
    pub const DEFAULTS: Setup = Setup {
        name: "defaults",
        interval_s: None,
        group_wait_s: None,
    };

    struct Proc(Child);

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn spawn(bin: &str, args: &[String], log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        Proc(
            Command::new(bin)
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("{bin} (Debian packages prometheus, prometheus-alertmanager): {e}")
                }),
        )
    }

    async fn ready(url: &str, what: &str, log: &Path) {
        for _ in 0..600 {
            if let Ok(r) = reqwest::get(url).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{what} did not become ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// One host's dcgm-exporter page: GPU 0 with its last XID code.
    fn page(host: usize, xid: u64) -> String {
        let labels = format!(
            "gpu=\"0\",UUID=\"GPU-pam-{host:03}\",device=\"nvidia0\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"prom-host-{host:03}\""
        );
        format!(
            "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
             DCGM_FI_DEV_GPU_UTIL{{{labels}}} 97\n\
             # HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.\n# TYPE DCGM_FI_DEV_XID_ERRORS gauge\n\
             DCGM_FI_DEV_XID_ERRORS{{{labels}}} {xid}\n"
        )
    }

    /// Run `faults` faults through Prometheus and Alertmanager set up as `setup`; the
    /// seconds from each XID flip to its mail.
    pub async fn run(
        work: &Path,
        smtp_port: u16,
        maildir: &Path,
        setup: Setup,
        faults: usize,
    ) -> Vec<f64> {
        let dir = work.join(format!("prom-am-{}", setup.name));
        std::fs::create_dir_all(&dir).unwrap();
        let codes: Arc<Vec<AtomicU64>> = Arc::new((0..faults).map(|_| AtomicU64::new(0)).collect());
        let served = codes.clone();
        let app = axum::Router::new().route(
            "/h/{host}/metrics",
            axum::routing::get(
                move |axum::extract::Path(host): axum::extract::Path<usize>| {
                    let xid = served.get(host).map_or(0, |c| c.load(Ordering::SeqCst));
                    async move { page(host, xid) }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let exporter = listener.local_addr().unwrap();
        let endpoint = tokio::spawn(async move { axum::serve(listener, app).await });

        let am_port = port();
        let mut route = String::from("  receiver: mail\n  group_by: [Hostname]\n");
        if let Some(w) = setup.group_wait_s {
            route.push_str(&format!("  group_wait: {w}s\n"));
        }
        std::fs::write(
            dir.join("alertmanager.yml"),
            format!(
                "global:\n  smtp_smarthost: 127.0.0.1:{smtp_port}\n  smtp_from: alertmanager@example.com\n  smtp_require_tls: false\n\
                 route:\n{route}receivers:\n  - name: mail\n    email_configs:\n      - to: oncall@example.com\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("rules.yml"),
            "groups:\n  - name: gpu\n    rules:\n      - alert: GpuXidError\n        expr: DCGM_FI_DEV_XID_ERRORS > 0\n        for: 0s\n        labels: {severity: critical}\n",
        )
        .unwrap();
        let mut global = String::new();
        if let Some(i) = setup.interval_s {
            global = format!("global:\n  scrape_interval: {i}s\n  evaluation_interval: {i}s\n");
        }
        let targets: String = (0..faults)
            .map(|h| {
                format!(
                    "      - targets: [\"{exporter}\"]\n        labels: {{__metrics_path__: /h/{h}/metrics}}\n"
                )
            })
            .collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "{global}rule_files: [{rules}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n\
                 scrape_configs:\n  - job_name: dcgm\n    static_configs:\n{targets}",
                rules = dir.join("rules.yml").display()
            ),
        )
        .unwrap();
        let am_log = dir.join("alertmanager.log");
        let _am = spawn(
            "prometheus-alertmanager",
            &[
                format!("--config.file={}", dir.join("alertmanager.yml").display()),
                format!("--storage.path={}", dir.join("am-data").display()),
                format!("--web.listen-address=127.0.0.1:{am_port}"),
                "--cluster.listen-address=".into(),
            ],
            &am_log,
        );
        ready(
            &format!("http://127.0.0.1:{am_port}/-/ready"),
            "alertmanager",
            &am_log,
        )
        .await;
        let prom_port = port();
        let prom_log = dir.join("prometheus.log");
        let _prom = spawn(
            "prometheus",
            &[
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ],
            &prom_log,
        );
        let base = format!("http://127.0.0.1:{prom_port}");
        ready(&format!("{base}/-/ready"), "prometheus", &prom_log).await;
        // Every target scraped once, with XID 0, before the first fault.
        let interval = Duration::from_secs(setup.interval_s.unwrap_or(60));
        let up_by = Instant::now() + interval * 3;
        loop {
            let r: serde_json::Value = reqwest::Client::new()
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", "count(DCGM_FI_DEV_XID_ERRORS == 0)")])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let n = r["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if n == faults {
                break;
            }
            assert!(Instant::now() < up_by, "not every target was scraped");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // Each host's XID flips at its own random moment within two scrape intervals.
        let t0 = Instant::now();
        let mut at: Vec<Duration> = (0..faults)
            .map(|_| interval.mul_f64(rand::thread_rng().gen_range(0.0..2.0)))
            .collect();
        at.sort();
        let mut flipped: HashMap<usize, Instant> = HashMap::new();
        let mut mailed: HashMap<usize, Instant> = HashMap::new();
        // Mails of earlier phases are not this one's.
        let mut seen: std::collections::HashSet<std::path::PathBuf> =
            std::fs::read_dir(maildir.join("new"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
        let give_up = t0 + interval * 4 + Duration::from_secs(120);
        while mailed.len() < faults {
            let now = Instant::now();
            for (h, when) in at.iter().enumerate() {
                if t0 + *when <= now && !flipped.contains_key(&h) {
                    codes[h].store(79, Ordering::SeqCst);
                    flipped.insert(h, Instant::now());
                }
            }
            for e in std::fs::read_dir(maildir.join("new"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = e.path();
                if seen.contains(&p) {
                    continue;
                }
                let text = std::fs::read_to_string(&p)
                    .unwrap_or_default()
                    .replace("=\r\n", "")
                    .replace("=\n", "");
                // A Maildir delivers into new/ complete: each file is read once.
                seen.insert(p);
                for h in 0..faults {
                    if !mailed.contains_key(&h) && text.contains(&format!("prom-host-{h:03}")) {
                        mailed.insert(h, Instant::now());
                    }
                }
            }
            assert!(
                Instant::now() < give_up,
                "{} of {faults} Alertmanager mails ({}); alertmanager log:\n{}",
                mailed.len(),
                setup.name,
                std::fs::read_to_string(&am_log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        endpoint.abort();
        (0..faults)
            .map(|h| (mailed[&h] - flipped[&h]).as_secs_f64())
            .collect()
    }
}
