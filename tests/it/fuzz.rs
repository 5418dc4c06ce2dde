//! Structured fuzzing of everything a client or an operator hands the server.
//!
//! A seeded generator (input `i` is made from `seed ^ i` alone, so any finding is
//! replayed by its number) mutates valid ingest batches structure-aware (wrong types,
//! bounds, NaN and huge numbers, unicode and control characters, HTML/JS in names and
//! labels, duplicate keys, nesting up to 100,000 deep, timestamps far off), truncates and corrupts
//! them, gzips them (and sends gzip bombs and broken gzip), sends wrong content types and
//! oversized bodies, fills the query and path parameters of every GET route of the
//! OpenAPI document, posts login forms, pool demand and facility readings, and parses the
//! files an operator hands in (rules TOML, config TOML, carbon CSV) in-process.
//!
//! HTTP inputs go to a real `rackwatch serve` process. A finding is a panic (the process
//! exits, a connection is dropped without an answer, or a parser panics), a 5xx other
//! than 503, or a 4xx without a reason in its body. The same generator serves the
//! security review (hostile input at every boundary) and `./scripts/bench fuzz`.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::free_port;

/// One generated input.
#[derive(Debug, Clone)]
pub enum Input {
    /// An HTTP request.
    Http {
        method: &'static str,
        path: String,
        /// Send the agent token (`Bearer`) or the session cookie.
        auth: Auth,
        content_type: Option<String>,
        encoding: Option<String>,
        body: Vec<u8>,
    },
    /// A file an operator hands in, parsed in-process.
    File { kind: FileKind, text: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Agent,
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Rules,
    Config,
    CarbonCsv,
}

/// Values that break careless code.
fn nasty(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..30) {
        0 => json!(f64::MAX),
        1 => json!(-1),
        2 => json!(1e308),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!("NaN"),
        6 => json!("Infinity"),
        7 => json!(-0.0),
        8 => Value::Null,
        9 => json!(true),
        10 => json!(""),
        11 => json!("\u{0}\u{7}\u{1b}[2J\r\n"),
        12 => json!("<script>alert(1)</script>"),
        13 => json!("\"><img src=x onerror=alert(1)>"),
        14 => json!("ÿ\u{202e}ﬁ🙂\u{fffd}\u{200b}"),
        15 => json!("x".repeat(rng.gen_range(256..20_000))),
        16 => json!([]),
        17 => json!({}),
        18 => {
            // Kept under serde_json's recursion limit here (the generator's own walks
            // recurse); deeper nesting is sent as raw text by `damage`.
            let depth = rng.gen_range(16..120);
            let mut v = json!(1);
            for _ in 0..depth {
                v = json!([v]);
            }
            v
        }
        19 => json!("9999-12-31T23:59:59Z"),
        20 => json!("0001-01-01T00:00:00Z"),
        21 => json!("2026-13-45T99:99:99Z"),
        22 => json!(1e20),
        23 => json!("1970-01-01T00:00:00Z"),
        24 => json!((chrono::Utc::now() + chrono::Duration::days(3650)).to_rfc3339()),
        25 => json!((chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339()),
        26 => json!(rng.gen::<i64>()),
        27 => json!(rng.gen::<f64>() * 1e12 - 5e11),
        28 => json!("../../etc/passwd"),
        _ => json!("'; DROP TABLE hosts; --"),
    }
}

/// A valid batch for `host`, as an agent sends it.
fn valid_batch(rng: &mut StdRng, host: &str) -> Value {
    let now = chrono::Utc::now();
    let n = rng.gen_range(1..6);
    let ts: Vec<String> = (0..n)
        .map(|i| {
            (now - chrono::Duration::seconds(rng.gen_range(1..3600) + i))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .collect();
    json!({
        "host": {"name": host, "site": "fz", "rack": "r1", "pool": "train", "labels": {"team": "ml"}},
        "gpus": [{"index": 0, "model": "H100", "uuid": "GPU-0"}, {"index": 1, "model": "H100"}],
        "host_samples": ts.iter().map(|t| json!({"ts": t, "cpu_util_pct": 10.0, "load1": 1.5, "mem_used_bytes": 1u64 << 30, "mem_total_bytes": 1u64 << 34})).collect::<Vec<_>>(),
        "gpu_samples": ts.iter().flat_map(|t| (0..2).map(move |i| json!({"ts": t, "index": i, "util_pct": 90.0, "power_watts": 600.0, "temp_celsius": 60.0, "mem_used_bytes": 1u64 << 33}))).collect::<Vec<_>>(),
        "events": [{"ts": ts[0], "index": 1, "kind": "xid", "code": 79, "message": "fell off the bus"}],
        "agent": {"version": "1.0", "spooled_batches": 0},
    })
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    if out.len() > 400 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

/// Structure-aware mutations of a JSON document.
fn mutate(rng: &mut StdRng, mut v: Value) -> Value {
    for _ in 0..rng.gen_range(1..4) {
        let mut ps = Vec::new();
        pointers(&v, String::new(), &mut ps);
        if ps.is_empty() {
            return nasty(rng);
        }
        let p = ps[rng.gen_range(0..ps.len())].clone();
        let (parent, last) = p.rsplit_once('/').unwrap();
        match rng.gen_range(0..6) {
            0..=2 => {
                if let Some(x) = v.pointer_mut(&p) {
                    *x = nasty(rng);
                }
            }
            3 => {
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    m.remove(last);
                }
            }
            4 => {
                // Repeat an element (many samples in one batch, up to past the cap).
                if let Some(Value::Array(a)) = v.pointer_mut(parent) {
                    if let Some(x) = a.first().cloned() {
                        let n = if rng.gen_bool(0.01) {
                            rng.gen_range(1000..60_000)
                        } else {
                            rng.gen_range(1..50)
                        };
                        a.extend(std::iter::repeat_n(x, n));
                    }
                }
            }
            _ => {
                if let Some(Value::Object(m)) = v.pointer_mut(parent) {
                    let key = match nasty(rng) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    m.insert(key, nasty(rng));
                }
            }
        }
    }
    v
}

/// Byte-level damage: truncation, a flipped byte, a raw control character, a duplicated key.
fn damage(rng: &mut StdRng, mut b: Vec<u8>) -> Vec<u8> {
    match rng.gen_range(0..5) {
        0 => {
            let n = rng.gen_range(0..=b.len());
            b.truncate(n);
        }
        4 => {
            // Nesting far past any parser's recursion limit, as raw text.
            let n = rng.gen_range(200..100_000);
            let mut deep = br#"{"host":{"name":"fz-host"},"host_samples":"#.to_vec();
            deep.extend(std::iter::repeat_n(b'[', n));
            deep.extend(std::iter::repeat_n(b']', n));
            deep.push(b'}');
            b = deep;
        }
        1 if !b.is_empty() => {
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
        }
        2 if !b.is_empty() => {
            let i = rng.gen_range(0..b.len());
            b.insert(i, rng.gen_range(0..32));
        }
        _ => {
            // A second "host" key: serde takes one of them; it must still be checked.
            if b.first() == Some(&b'{') {
                let dup = br#"{"host":{"name":"someone-else"},"#;
                b.splice(0..1, dup.iter().copied());
            }
        }
    }
    b
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

/// A gzip body that inflates to 128 MiB of zeros, twice the default inflation cap (about 130 kB on the wire).
fn gzip_bomb() -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..128 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap()
}

/// Text of `s` with random damage, for query strings and files.
fn text_variant(rng: &mut StdRng, s: &str) -> String {
    match nasty(rng) {
        Value::String(n) => {
            let mut t = s.to_string();
            let i = rng.gen_range(0..=t.len());
            let i = (0..=i).rev().find(|&j| t.is_char_boundary(j)).unwrap_or(0);
            t.insert_str(i, &n);
            t
        }
        other => other.to_string(),
    }
}

/// What the generator needs to know about the server: its GET routes with their
/// parameters (from the OpenAPI document), a host and a pool it may write for.
pub struct Target {
    pub gets: Vec<(String, Vec<(String, String)>)>,
    pub host: String,
    pub bomb: Arc<Vec<u8>>,
}

impl Target {
    pub fn from_openapi(doc: &Value, host: &str) -> Target {
        let mut gets = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            let Some(get) = item.get("get") else { continue };
            let params = get["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(item["parameters"].as_array().into_iter().flatten())
                .filter_map(|p| {
                    Some((
                        p["name"].as_str()?.to_string(),
                        p["in"].as_str()?.to_string(),
                    ))
                })
                .collect();
            gets.push((path.clone(), params));
        }
        gets.sort();
        Target {
            gets,
            host: host.to_string(),
            bomb: Arc::new(gzip_bomb()),
        }
    }
}

const RULES: &str = r#"[[rule]]
name = "gpu hot"
kind = "threshold"
metric = "gpu.temp_celsius"
op = ">"
value = 85.0
for_secs = 120
severity = "critical"
"#;
const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = 8388608\n[agent]\ninterval_secs = 5\n[retention]\nraw_days = 7\n";
const CARBON: &str = "start,end,g_co2_per_kwh\n2026-11-23T00:00:00Z,2026-11-23T01:00:00Z,310.5\n2026-11-23T01:00:00Z,2026-11-23T02:00:00Z,295\n";

fn query_value(rng: &mut StdRng) -> String {
    match nasty(rng) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Input number `i` of the run seeded `seed`.
pub fn input(t: &Target, seed: u64, i: u64) -> Input {
    let rng = &mut StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let roll = rng.gen_range(0..1000);
    if roll < 550 {
        // Ingest.
        let valid = valid_batch(rng, &t.host);
        let batch = mutate(rng, valid);
        let mut body = serde_json::to_vec(&batch).unwrap();
        if rng.gen_bool(0.15) {
            body = damage(rng, body);
        }
        let mut content_type = Some("application/json".to_string());
        let mut encoding = None;
        match rng.gen_range(0..100) {
            0..=14 => {
                body = gzip(&body);
                encoding = Some("gzip".into());
            }
            15..=17 => {
                // Broken gzip.
                body = gzip(&body);
                let n = rng.gen_range(0..body.len());
                body.truncate(n);
                encoding = Some("gzip".into());
            }
            18 => encoding = Some("gzip".into()), // says gzip, is not
            19 => {
                encoding =
                    Some(["br", "deflate", "zstd", "gzip, gzip", ""][rng.gen_range(0..5)].into())
            }
            20..=22 => {
                content_type = [
                    None,
                    Some("text/plain".into()),
                    Some("application/x-www-form-urlencoded".into()),
                    Some("application/json; charset=utf-16".into()),
                    Some("multipart/form-data; boundary=x".into()),
                ][rng.gen_range(0..5)]
                .clone();
            }
            23 if rng.gen_bool(0.05) => {
                body = (*t.bomb).clone();
                encoding = Some("gzip".into());
            }
            24 if rng.gen_bool(0.02) => {
                // Over server.max_body_bytes on the wire.
                body = vec![b' '; 9 << 20];
            }
            _ => {}
        }
        let auth = if rng.gen_bool(0.03) {
            Auth::None
        } else {
            Auth::Agent
        };
        return Input::Http {
            method: "POST",
            path: "/api/v1/ingest".into(),
            auth,
            content_type,
            encoding,
            body,
        };
    }
    if roll < 800 {
        // A GET route with fuzzed path and query parameters.
        let (path, params) = &t.gets[rng.gen_range(0..t.gets.len())];
        let mut p = path.clone();
        let mut query = Vec::new();
        for (name, place) in params {
            let v = match rng.gen_range(0..4) {
                0 => continue,
                1 => [
                    "fz-host",
                    "0",
                    "1h",
                    "7d",
                    "2026-11-24T00:00:00Z",
                    "gpu.util_pct",
                ][rng.gen_range(0..6)]
                .to_string(),
                _ => query_value(rng),
            };
            if place == "path" {
                p = p.replace(&format!("{{{name}}}"), &enc(&v));
            } else {
                query.push(format!("{}={}", enc(name), enc(&v)));
            }
        }
        // Path parameters not filled: a plausible value.
        while let Some(a) = p.find('{') {
            let b = p[a..].find('}').map_or(p.len(), |b| a + b + 1);
            p.replace_range(a..b, "fz-host");
        }
        if rng.gen_bool(0.2) {
            query.push(format!(
                "{}={}",
                enc(&query_value(rng)),
                enc(&query_value(rng))
            ));
        }
        if !query.is_empty() {
            p = format!("{p}?{}", query.join("&"));
        }
        let auth = if rng.gen_bool(0.05) {
            Auth::None
        } else {
            Auth::Session
        };
        return Input::Http {
            method: "GET",
            path: p,
            auth,
            content_type: None,
            encoding: None,
            body: Vec::new(),
        };
    }
    if roll < 900 {
        // Forms and the other JSON posts.
        let (path, ct, body, auth) = match rng.gen_range(0..3) {
            0 => {
                let fields = [
                    ("username", query_value(rng)),
                    ("password", query_value(rng)),
                    ("next", query_value(rng)),
                    ("csrf", query_value(rng)),
                ];
                let body = fields
                    .iter()
                    .filter(|_| rng.gen_bool(0.8))
                    .map(|(k, v)| format!("{k}={}", enc(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                (
                    "/login".to_string(),
                    "application/x-www-form-urlencoded",
                    body.into_bytes(),
                    Auth::None,
                )
            }
            1 => {
                let v = mutate(
                    rng,
                    json!({"pending_gpus": 64, "running_gpus": 128, "ts": chrono::Utc::now().to_rfc3339()}),
                );
                (
                    format!("/api/v1/pools/{}/demand", enc(&query_value(rng))),
                    "application/json",
                    serde_json::to_vec(&v).unwrap(),
                    Auth::Session,
                )
            }
            _ => {
                let v = mutate(
                    rng,
                    json!([{"site": "fz", "start": "2026-11-23T00:00:00Z", "end": "2026-11-23T01:00:00Z", "energy_kwh": 420.5}]),
                );
                (
                    "/api/v1/facility/readings".to_string(),
                    "application/json",
                    serde_json::to_vec(&v).unwrap(),
                    Auth::Session,
                )
            }
        };
        return Input::Http {
            method: "POST",
            path,
            auth,
            content_type: Some(ct.into()),
            encoding: None,
            body,
        };
    }
    // Files an operator hands in.
    let (kind, base) = match rng.gen_range(0..3) {
        0 => (FileKind::Rules, RULES),
        1 => (FileKind::Config, CONFIG),
        _ => (FileKind::CarbonCsv, CARBON),
    };
    let mut text = base.to_string();
    for _ in 0..rng.gen_range(1..4) {
        text = match rng.gen_range(0..3) {
            0 => text_variant(rng, &text),
            1 => {
                let lines: Vec<&str> = text.lines().collect();
                if lines.is_empty() {
                    continue;
                }
                let i = rng.gen_range(0..lines.len());
                let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                l[i] = text_variant(rng, lines[i]);
                l.join("\n")
            }
            _ => {
                let n = rng.gen_range(0..=text.len());
                let n = (0..=n)
                    .rev()
                    .find(|&j| text.is_char_boundary(j))
                    .unwrap_or(0);
                text[..n].to_string()
            }
        };
    }
    Input::File { kind, text }
}

/// Parse an operator's file; true when the parser panicked.
fn parse_file(kind: FileKind, text: &str) -> bool {
    let text = text.to_string();
    std::panic::catch_unwind(move || match kind {
        FileKind::Rules => {
            let _ = rackwatch::alert::rules::RuleSet::parse(&text);
        }
        FileKind::Config => {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("rackwatch.toml");
            std::fs::write(&p, &text).unwrap();
            let _ = rackwatch::config::Config::load_with_env(Some(&p), Vec::new());
        }
        FileKind::CarbonCsv => {
            let _ = rackwatch::report::inputs::parse_carbon_csv(&text);
        }
    })
    .is_err()
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Findings {
    pub inputs: usize,
    pub crashes: usize,
    /// Requests the server answered with a closed connection instead of a status.
    pub dropped: usize,
    /// Bodies over the linger limit (1 MiB) refused before they were read (a missing
    /// token, a failed CSRF check, over `server.max_body_bytes`): the server closes the
    /// connection rather than read them, so the client may see it close before the answer.
    pub refused_unread: usize,
    pub server_errors: usize,
    pub unexplained_rejections: usize,
    pub unavailable: usize,
    pub by_status: std::collections::BTreeMap<u16, usize>,
    /// (input number, what happened), the first few.
    pub examples: Vec<(u64, String)>,
}

/// A `rackwatch serve` process for the run.
pub struct Server {
    pub base: String,
    child: std::process::Child,
    pub token: String,
    pub cookie: String,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        let db = crate::support::fresh_database().await;
        let store = rackwatch::store::Store::connect(&db, 2, 10).await.unwrap();
        let host = "fz-host";
        let token = store.create_agent_token(host, "fuzz").await.unwrap();
        store
            .upsert_user(
                "fuzzer",
                rackwatch::store::auth::Role::Admin,
                "fuzzing password 1",
            )
            .await
            .unwrap();
        store.pool.close().await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rackwatch"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RACKWATCH_DATABASE__URL", &db)
            .env("RACKWATCH_LOG", "error")
            // Every ingest input reaches the parser, however fast they come.
            .env("RACKWATCH_INGEST__TOKEN_RATE_PER_SEC", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cookie = crate::support::form_login(&http, &base, "fuzzer", "fuzzing password 1").await;
        Server {
            base,
            child,
            token,
            cookie,
            _dir: dir,
        }
    }

    /// Resident memory of the server process, in MB.
    pub fn rss_mb(&self) -> f64 {
        rss_mb_of(self.child.id())
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send inputs `0..n` of `seed` with `workers` concurrent clients.
pub async fn run(server: &mut Server, seed: u64, n: u64, workers: usize) -> Findings {
    let doc: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/openapi.json", server.base))
        .header("cookie", &server.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let target = Arc::new(Target::from_openapi(&doc, "fz-host"));
    assert!(
        target.gets.len() >= 10,
        "GET routes in the OpenAPI document"
    );
    let next = Arc::new(AtomicUsize::new(0));
    let found = Arc::new(Mutex::new(Findings::default()));
    // Idle connections are let go before the server's keep-alive limit
    // (`server.header_read_timeout_secs`, 10 s), as the agent does: a request sent on a
    // connection the server is closing at that moment would otherwise be lost in the race.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, found, http, target) =
            (next.clone(), found.clone(), http.clone(), target.clone());
        let (base, token, cookie) = (
            server.base.clone(),
            server.token.clone(),
            server.cookie.clone(),
        );
        let csrf = rackwatch::web::access::csrf_for_cookie(&cookie);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                if i >= n {
                    return;
                }
                let t = target.clone();
                let input = tokio::task::spawn_blocking(move || input(&t, seed, i))
                    .await
                    .unwrap();
                let finding = match input {
                    Input::File { kind, text } => {
                        let panicked = tokio::task::spawn_blocking(move || parse_file(kind, &text))
                            .await
                            .unwrap();
                        panicked.then(|| (0u16, format!("{kind:?} parser panicked")))
                    }
                    Input::Http {
                        method,
                        path,
                        auth,
                        content_type,
                        encoding,
                        body,
                    } => {
                        let url = format!("{base}{path}");
                        // A refused body over the linger limit is left unread and its
                        // connection closed (src/web/linger.rs), by design.
                        let oversized = body.len() as u64 > rackwatch::web::linger::LINGER_BYTES;
                        let mut req = if method == "GET" {
                            http.get(&url)
                        } else {
                            http.post(&url).body(body)
                        };
                        match auth {
                            Auth::Agent => req = req.bearer_auth(&token),
                            // With the session's CSRF token, as the pages send it: the
                            // posts reach their validators (the CSRF refusal itself is
                            // checked by the authorization matrix).
                            Auth::Session => {
                                req = req
                                    .header("cookie", &cookie)
                                    .header(rackwatch::web::access::CSRF_HEADER, &csrf)
                            }
                            Auth::None => {}
                        }
                        if let Some(ct) = content_type {
                            req = req.header("content-type", ct);
                        }
                        if let Some(e) = encoding {
                            req = req.header("content-encoding", e);
                        }
                        match req.send().await {
                            // The server refused a connection or closed it early (an
                            // oversized body is answered before it is read): counted, not
                            // a crash unless the process is gone (checked at the end).
                            Err(_) if oversized => Some((2, String::new())),
                            Err(e) => {
                                let mut why = e.to_string();
                                let mut src = std::error::Error::source(&e);
                                while let Some(s) = src {
                                    why.push_str(&format!(": {s}"));
                                    src = s.source();
                                }
                                Some((1, format!("{method} {path}: no answer: {why}")))
                            }
                            Ok(r) => {
                                let s = r.status().as_u16();
                                let text = r.text().await.unwrap_or_default();
                                found.lock().unwrap().count(s);
                                if s >= 500 && s != 503 {
                                    Some((s, format!("{method} {path}: {s} {text:.200}")))
                                } else if (400..500).contains(&s) && text.trim().is_empty() {
                                    Some((s, format!("{method} {path}: {s} without a reason")))
                                } else {
                                    None
                                }
                            }
                        }
                    }
                };
                let mut f = found.lock().unwrap();
                f.inputs += 1;
                if let Some((s, what)) = finding {
                    match s {
                        0 => f.crashes += 1,
                        1 => f.dropped += 1,
                        2 => {
                            f.refused_unread += 1;
                            continue;
                        }
                        400..=499 => f.unexplained_rejections += 1,
                        _ => f.server_errors += 1,
                    }
                    if f.examples.len() < 20 {
                        f.examples.push((i, what));
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut f = std::mem::take(&mut *found.lock().unwrap());
    if !server.alive() {
        f.crashes += 1;
        f.examples.push((n, "the server process exited".into()));
    }
    f
}

impl Findings {
    fn count(&mut self, status: u16) {
        *self.by_status.entry(status).or_default() += 1;
        if status == 503 {
            self.unavailable += 1;
        }
    }
}

/// Run `n` inputs and report; used by the test (a seeded slice) and the benchmark.
/// Resident memory of process `pid` in MB (0 when it is gone).
fn rss_mb_of(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A fuzz campaign against a fresh server: the findings, the server's RSS growth (MB)
/// after the run once freed memory was handed back, the seconds it took, and the RSS
/// above the start every `every` during the run (a leak climbs to the end; memory the
/// allocator keeps levels off).
pub async fn campaign(
    seed: u64,
    n: u64,
    workers: usize,
    every: Duration,
    idle: Duration,
) -> (Findings, f64, f64, Vec<(f64, f64)>) {
    let mut server = Server::start().await;
    let rss_start = server.rss_mb();
    let pid = server.child.id();
    let started = Instant::now();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let curve = tokio::spawn(async move {
        let mut v = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped.changed() => return v,
            }
            v.push((started.elapsed().as_secs_f64(), rss_mb_of(pid) - rss_start));
        }
    });
    let f = run(&mut server, seed, n, workers).await;
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let curve = curve.await.unwrap();
    // The server hands freed memory back every `alloc::TRIM_EVERY`; wait one period.
    tokio::time::sleep(rackwatch::alloc::TRIM_EVERY + Duration::from_secs(2)).await;
    let growth = server.rss_mb() - rss_start;
    // Optionally keep the idle server a while longer and watch what it hands back (the
    // database pool retires idle connections, and their buffers, after 10 minutes).
    let mut curve = curve;
    let idle_from = Instant::now();
    while idle_from.elapsed() < idle {
        tokio::time::sleep(Duration::from_secs(60)).await;
        curve.push((started.elapsed().as_secs_f64(), server.rss_mb() - rss_start));
    }
    (f, growth, secs, curve)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_hostile_inputs_find_no_crash_no_server_error_and_no_silent_rejection() {
    // The suite's slice; `./scripts/bench fuzz` runs a million.
    let (f, growth, secs, _) =
        campaign(17, 20_000, 8, Duration::from_secs(60), Duration::ZERO).await;
    eprintln!(
        "{} inputs in {secs:.1} s, statuses {:?}, RSS growth {growth:.1} MB, findings {:#?}",
        f.inputs, f.by_status, f.examples
    );
    assert_eq!(f.inputs, 20_000);
    assert_eq!(f.crashes, 0, "{:#?}", f.examples);
    assert_eq!(f.server_errors, 0, "{:#?}", f.examples);
    assert_eq!(f.unexplained_rejections, 0, "{:#?}", f.examples);
    // What the bursts took is handed back, within the benchmark's goal. The slice keeps
    // 10-17 MB; this catches a leak or a burst kept whole (a thread arena's top kept
    // 53 MB before `alloc::TRIM_THRESHOLD` was lowered), not a few MB: the benchmark's
    // million inputs measure that.
    assert!(
        growth < 50.0,
        "the server kept {growth:.1} MB above its start after the run (goal < 50 MB)"
    );
    // The inputs reached the parsers: most ingest bodies were answered 200 or 400-422.
    assert!(
        f.by_status.get(&200).copied().unwrap_or(0) > 2_000,
        "{:?}",
        f.by_status
    );
    assert!(
        f.by_status.get(&400).copied().unwrap_or(0) > 1_000,
        "{:?}",
        f.by_status
    );
}

/// `./scripts/bench fuzz`: `BENCH_FUZZ_INPUTS` (default 1,000,000) from seed
/// `BENCH_FUZZ_SEED` (default 17).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: ./scripts/bench fuzz"]
async fn fuzz_benchmark() {
    let knob = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = knob("BENCH_FUZZ_INPUTS", 1_000_000);
    let seed = knob("BENCH_FUZZ_SEED", 17);
    // BENCH_FUZZ_IDLE_S: seconds to keep watching the server's RSS after the run.
    let idle = Duration::from_secs(knob("BENCH_FUZZ_IDLE_S", 0));
    let (f, growth, secs, curve) = campaign(seed, n, 16, Duration::from_secs(120), idle).await;
    println!(
        "seed {seed}: {} inputs in {secs:.0} s ({:.0}/s); answers by status {:?}",
        f.inputs,
        f.inputs as f64 / secs,
        f.by_status
    );
    for (i, what) in &f.examples {
        println!("finding at input {i}: {what}");
    }
    let points: Vec<String> = curve
        .iter()
        .map(|(t, mb)| format!("{:.0} min {mb:+.0}", t / 60.0))
        .collect();
    println!(
        "server RSS above its start during the run and any idle time after it (MB): {}",
        points.join(", ")
    );
    println!(
        "bodies over 1 MiB refused before they were read, the connection closed before the client read the answer: {}",
        f.refused_unread
    );
    println!(
        "BENCH fuzz inputs={} crashes={} server_errors={} unexplained_rejections={} dropped_connections={} rss_growth_mb={growth:.1}",
        f.inputs, f.crashes, f.server_errors, f.unexplained_rejections, f.dropped
    );
}
