//! Abuse: the attacks found when the server was probed, each run for a bounded time
//! against a real release server, measuring what they cost it.
//!
//! `tests/it/abuse.rs` replays each attack once and checks the answer; this runs them as
//! load, one after another (10 s each by default), against `rackwatch serve` started as a
//! separate process on a Postgres cluster of the benchmark's own, so the memory read from
//! `/proc/PID/status` (VmRSS, VmHWM) is the server's alone. Meanwhile a prober on a thread
//! of its own asks `/healthz` every 50 ms. Per attack it prints the requests made, the
//! answers by status, the server's peak RSS and /healthz p50/p99 during the attack; at the
//! end the peak RSS over the whole run, the RSS still held 5 s after the last attack,
//! /healthz p99 over all attacks and the server errors, against the goals (300 MB,
//! 100 ms, 0).
//!
//! A server error is a 5xx other than a 503 with `Retry-After` (the intended answer at a
//! limit), or a connection the server reset or closed without answering where the attack
//! does not expect that (only slowloris does); resets and closes are also shown on their own.
//!
//! Each attack sends from loopback addresses of its own (127.N.x.y), so the per-address
//! login bucket one attack empties does not decide the next; the prober uses 127.0.0.1.
//!
//! Run with `./scripts/bench abuse`. `BENCH_QUICK=1`: 3 s per attack; `BENCH_ATTACK_SECS=N`
//! sets it; `BENCH_ONLY=name,name` runs only those attacks; `BENCH_RACKWATCH_BIN=path`
//! measures that binary instead of the one cargo built for this benchmark.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine as _;
use rackwatch::store::auth::Role;
use rand::Rng as _;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The issue's goals, under every attack in turn.
const GOAL_PEAK_RSS_MB: f64 = 300.0;
const GOAL_HEALTHZ_P99_MS: f64 = 100.0;
/// How often the prober asks `/healthz`.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// The retained RSS is read this long after the last attack.
const SETTLE: Duration = Duration::from_secs(5);
/// The server's body cap (`server.max_body_bytes`, default).
const MAX_BODY: usize = 8 << 20;
/// The agent token's host.
const HOST: &str = "bench-agent";

fn main() {
    common::block_on(run());
}

// ---------------------------------------------------------------------------------------
// What an attempt came to, and the tally of one attack.

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// An answer with this status, and whether it carried `Retry-After`.
    Status(u16, bool),
    /// The expected status with the wrong content (what was wrong).
    Wrong(&'static str),
    /// The connection was reset (or the pipe broke) before an answer.
    Reset,
    /// The server closed the connection without an answer.
    Closed,
    /// No answer within the client's limit.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// Any other client-side failure (short description).
    Other(String),
}

impl Outcome {
    fn label(&self) -> String {
        match self {
            Outcome::Status(c @ (429 | 503), false) => format!("{c}(no Retry-After)"),
            Outcome::Status(c, _) => c.to_string(),
            Outcome::Wrong(w) => format!("wrong({w})"),
            Outcome::Reset => "reset".into(),
            Outcome::Closed => "closed".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Connect => "connect-failed".into(),
            Outcome::Other(e) => format!("error({e})"),
        }
    }

    /// A 5xx other than a 503 with `Retry-After`.
    fn is_server_error(&self) -> bool {
        matches!(self, Outcome::Status(c, ra) if *c >= 500 && !(*c == 503 && *ra))
    }
}

/// Everything one attack saw.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<Outcome, u64>>,
    /// Milliseconds from sending to the answer (or the close).
    answer_ms: Mutex<Vec<f64>>,
    notes: Mutex<Vec<String>>,
}

impl Tally {
    fn add(&self, o: Outcome, since: Instant) {
        let ms = since.elapsed().as_secs_f64() * 1e3;
        *self.counts.lock().unwrap().entry(o).or_default() += 1;
        self.answer_ms.lock().unwrap().push(ms);
    }

    fn note(&self, s: String) {
        self.notes.lock().unwrap().push(s);
    }

    fn total(&self) -> u64 {
        self.counts.lock().unwrap().values().sum()
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> u64 {
        let c = self.counts.lock().unwrap();
        c.iter().filter(|(o, _)| f(o)).map(|(_, n)| n).sum()
    }
}

// ---------------------------------------------------------------------------------------
// One attack's run: the shared setup, its tally, its deadline and its addresses.

/// What every attack may use.
struct Shared {
    server: SocketAddr,
    base: String,
    /// The agent token (host [`HOST`]).
    token: String,
    /// A second token of that host, for the bad agent alone: the other attacks that use
    /// `token` empty its rate bucket, and past its rate a 7 MB body is answered 429 unread.
    bad_agent_token: String,
    /// bob's device cookie (`rw_device=…`) from a login before the attacks.
    bob_device: String,
    /// The item bomb: gzip of 22 M empty samples.
    bomb: Bytes,
    /// Two bad agent sections: a NUL in `agent.version`, and a 7 MB version.
    bad_agent: [Bytes; 2],
    /// A scheduler's token for pool [`POOL`].
    pool_token: String,
    /// 8 MiB of `[[0],[0],…]`: a small JSON route's body at the size limit.
    nested: Bytes,
}

/// The pool the scheduler token reports.
const POOL: &str = "bench-pool";

#[derive(Clone)]
struct Run {
    s: Arc<Shared>,
    t: Arc<Tally>,
    until: Instant,
    /// Second octet of this attack's source addresses (127.net.x.y).
    net: u8,
}

impl Run {
    fn live(&self) -> bool {
        Instant::now() < self.until
    }

    /// The `i`th source address of this attack.
    fn src(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            127,
            self.net,
            (i / 250) as u8,
            (i % 250) as u8 + 1,
        ))
    }
}

type AttackFn = fn(Run) -> Pin<Box<dyn Future<Output = ()> + Send>>;

struct Attack {
    name: &'static str,
    /// Statuses that are the intended answer (a 503 only with Retry-After).
    expect: &'static [u16],
    /// Whether the server closing a connection unanswered is the intended outcome.
    closes_expected: bool,
    run: AttackFn,
}

fn attacks() -> Vec<Attack> {
    vec![
        Attack {
            name: "basic-flood",
            expect: &[401, 429, 503],
            closes_expected: false,
            run: |r| Box::pin(basic_flood(r, false)),
        },
        Attack {
            name: "basic-flood-48-addrs",
            expect: &[401, 429, 503],
            closes_expected: false,
            run: |r| Box::pin(basic_flood(r, true)),
        },
        Attack {
            name: "basic-guess",
            expect: &[401, 429],
            closes_expected: false,
            run: |r| Box::pin(basic_guess(r)),
        },
        Attack {
            name: "form-guess",
            expect: &[401, 429, 503],
            closes_expected: false,
            run: |r| Box::pin(form_guess(r)),
        },
        Attack {
            name: "open-redirect",
            expect: &[303],
            closes_expected: false,
            run: |r| Box::pin(open_redirect(r)),
        },
        Attack {
            name: "item-bomb",
            expect: &[413, 429, 503],
            closes_expected: false,
            run: |r| Box::pin(item_bomb(r)),
        },
        Attack {
            name: "anon-8mib-bodies",
            expect: &[401],
            closes_expected: false,
            run: |r| Box::pin(anon_bodies(r)),
        },
        Attack {
            name: "slow-bodies",
            expect: &[408, 429, 503],
            closes_expected: false,
            run: |r| Box::pin(slow_bodies(r)),
        },
        Attack {
            name: "slowloris",
            expect: &[408],
            closes_expected: true,
            run: |r| Box::pin(slowloris(r)),
        },
        Attack {
            name: "idle-flood",
            expect: &[],
            closes_expected: true,
            run: |r| Box::pin(idle_flood(r)),
        },
        Attack {
            name: "bad-agent",
            expect: &[200, 503],
            closes_expected: false,
            run: |r| Box::pin(bad_agent(r)),
        },
        Attack {
            name: "label-keys",
            // Past the token's rate (`ingest.token_rate_per_sec`), 429 with Retry-After.
            expect: &[400, 429],
            closes_expected: false,
            run: |r| Box::pin(label_keys(r)),
        },
        Attack {
            name: "nested-json",
            // The shape is refused at the body's first character; past the pool's queue
            // reports, 429.
            expect: &[400, 429, 503],
            closes_expected: false,
            run: |r| Box::pin(nested_json(r)),
        },
        Attack {
            name: "content-types",
            expect: &[401, 415, 429],
            closes_expected: false,
            run: |r| Box::pin(content_types(r)),
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The attacks. Each runs until its deadline (a few finish what they hold open after it).

/// 1. Unauthenticated HTTP Basic flood: 48 clients, a connection each, asking an API page
///    with a random user name and password as fast as answers come; from one address, or
///    (`spread`) each from its own. Before: every request ran argon2id (19 MiB) on a
///    thread of its own; 48 clients left 9.1 GB retained. Now: 401 for the few checks
///    that run (`server.password_checks` at once), 429 once the address's bucket is empty,
///    503 with Retry-After when the checks are busy.
async fn basic_flood(r: Run, spread: bool) {
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let http = client(Some(r.src(if spread { i } else { 0 })));
                let url = format!("{}/api/v1/hosts", r.s.base);
                while r.live() {
                    let (user, pw): (u64, u64) = {
                        let mut g = rand::thread_rng();
                        (g.gen(), g.gen())
                    };
                    let t0 = Instant::now();
                    let res = http
                        .get(&url)
                        .header(
                            "authorization",
                            basic(&format!("nobody-{user:x}"), &format!("{pw:x}")),
                        )
                        .send()
                        .await;
                    r.t.add(answer(res).await.outcome(), t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

/// 1b. Guessing one user's password over Basic, one guess after another (the probe made
///     200 guesses, none throttled). Now: 401 for the first few, then 429.
async fn basic_guess(r: Run) {
    let http = client(Some(r.src(0)));
    let url = format!("{}/api/v1/hosts", r.s.base);
    let mut first_429 = None;
    let mut n = 0u64;
    while r.live() {
        n += 1;
        let t0 = Instant::now();
        let res = http
            .get(&url)
            .header("authorization", basic("ann", &format!("guess-{n}")))
            .send()
            .await;
        let o = answer(res).await.outcome();
        if first_429.is_none() && o == Outcome::Status(429, true) {
            first_429 = Some(n);
        }
        r.t.add(o, t0);
    }
    r.t.note(format!(
        "first 429 at guess {}; password checks that ran (401): {}",
        first_429.map_or("-".into(), |n| n.to_string()),
        r.t.count(|o| *o == Outcome::Status(401, false))
    ));
}

/// 6. Form-login guessing at one user (bob), 4 clients from one address, each fetching
///    the form for its CSRF cookie and token first, as a browser would. Before: five bad
///    tries locked bob out for 300 s, and 20 from one address locked out everyone there.
///    Now: 401, then 429; afterwards bob, from a browser with his device cookie, gets in.
async fn form_guess(r: Run) {
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let http = client(Some(r.src(0)));
                let mut n = 0u64;
                while r.live() {
                    n += 1;
                    let t0 = Instant::now();
                    let o = match login_form(&http, &r.s.base).await {
                        Ok((cookie, csrf)) => {
                            let pw = format!("guess-{i}-{n}");
                            let res = http
                                .post(format!("{}/login", r.s.base))
                                .header("cookie", cookie)
                                .form(&[
                                    ("username", "bob"),
                                    ("password", pw.as_str()),
                                    ("csrf", csrf.as_str()),
                                ])
                                .send()
                                .await;
                            answer(res).await.outcome()
                        }
                        Err(o) => o,
                    };
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
    // The owner, from his usual browser (device cookie) and another address.
    let http = client(None);
    let t0 = Instant::now();
    let o = match login_form(&http, &r.s.base).await {
        Ok((cookie, csrf)) => {
            let res = http
                .post(format!("{}/login", r.s.base))
                .header("cookie", format!("{cookie}; {}", r.s.bob_device))
                .form(&[
                    ("username", "bob"),
                    ("password", "bob-password"),
                    ("csrf", csrf.as_str()),
                ])
                .send()
                .await;
            answer(res).await.outcome()
        }
        Err(o) => o,
    };
    r.t.note(format!(
        "after the attack, bob with his device cookie: {} in {:.0} ms (303 = logged in)",
        o.label(),
        t0.elapsed().as_secs_f64() * 1e3
    ));
}

/// `next` values a login may carry, and where the server must send the browser
/// (the cases of `tests/it/abuse.rs`).
const NEXTS: [(&str, &str); 7] = [
    ("/\t/evil.example/", "/"),
    ("/\n/x", "/"),
    ("//evil.example/", "/"),
    ("/\\evil.example", "/"),
    ("https://evil.example/", "/"),
    ("/%2F%2Fevil.example", "/%2F%2Fevil.example"),
    ("/hosts/gpu-1?range=6h", "/hosts/gpu-1?range=6h"),
];

/// 5. Open redirect after login: 4 clients logging carol in (good password) with crafted
///    `next` targets. Before: `next=/\t/evil.example/` was followed off-site and
///    `next=/\n/x` gave 500. Now: 303 to this site only (a different Location is counted
///    as wrong).
async fn open_redirect(r: Run) {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move {
                let http = client(Some(r.src(0)));
                let mut k = 0;
                while r.live() {
                    let (next, want) = NEXTS[k % NEXTS.len()];
                    k += 1;
                    let t0 = Instant::now();
                    let o = match login_form(&http, &r.s.base).await {
                        Ok((cookie, csrf)) => {
                            let res = http
                                .post(format!("{}/login", r.s.base))
                                .header("cookie", cookie)
                                .form(&[
                                    ("username", "carol"),
                                    ("password", "carol-password"),
                                    ("csrf", csrf.as_str()),
                                    ("next", next),
                                ])
                                .send()
                                .await;
                            let a = answer(res).await;
                            match &a {
                                Ok(a) if a.status == 303 && a.location.as_deref() != Some(want) => {
                                    Outcome::Wrong("redirect elsewhere")
                                }
                                _ => a.outcome(),
                            }
                        }
                        Err(o) => o,
                    };
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

/// 2. Item bomb: a valid agent token, 8 senders posting a 64 KiB gzip body that inflates
///    to `{"host":…,"host_samples":[{},{},…]}` with 22 M items (just under the 64 MiB
///    inflate cap). Before: every item became a rejection before the sample cap was
///    checked (21 s, 6.45 GB peak for one). Now: 413 at `ingest.max_samples_per_batch`,
///    and 429 once the token is over its rate (`ingest.token_rate_per_sec`).
async fn item_bomb(r: Run) {
    let (token, body) = (r.s.token.clone(), r.s.bomb.clone());
    json_posts(r, "/api/v1/ingest".into(), 1, token, Some("gzip"), body).await;
}

/// 8 senders from `addrs` addresses posting `body` as JSON to `path` with `token` as fast
/// as answers come, until the attack's deadline.
async fn json_posts(
    r: Run,
    path: String,
    addrs: usize,
    token: String,
    encoding: Option<&'static str>,
    body: Bytes,
) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (r, token, body) = (r.clone(), token.clone(), body.clone());
            let url = format!("{}{path}", r.s.base);
            tokio::spawn(async move {
                let http = client(Some(r.src(i % addrs)));
                while r.live() {
                    let t0 = Instant::now();
                    let mut req = http
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json");
                    if let Some(e) = encoding {
                        req = req.header("content-encoding", e);
                    }
                    let res = req.body(body.clone()).send().await;
                    r.t.add(answer(res).await.outcome(), t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

/// 3a. 100 anonymous connections, each posting an 8 MiB body to ingest with a wrong
///     (random) token, as fast as the server lets them, over raw TCP, from four addresses
///     (one address may hold `server.max_connections_per_client`, 64, and a closed
///     connection is counted off a moment after the client has opened the next). Before: the body
///     was read before the token was looked at, so anyone could make the server hold
///     8 MiB per connection. Now: 401 right after the headers.
async fn anon_bodies(r: Run) {
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let chunk = Trickle {
                    piece: vec![b' '; 64 * 1024],
                    every: Duration::ZERO,
                    count: MAX_BODY / (64 * 1024),
                };
                while r.live() {
                    let token: u128 = rand::thread_rng().gen();
                    let head = format!(
                        "POST /api/v1/ingest HTTP/1.1\r\nHost: bench\r\n\
                         Authorization: Bearer {token:032x}\r\nContent-Type: application/json\r\n\
                         Content-Length: {MAX_BODY}\r\n\r\n"
                    );
                    let t0 = Instant::now();
                    let o = raw_exchange(
                        r.src(i % 4),
                        r.s.server,
                        head.as_bytes(),
                        &chunk,
                        Duration::from_secs(30),
                    )
                    .await;
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

/// 3b. 100 token-holding slow bodies: each declares 8 MiB and trickles it in so that it
///     reaches 8 MiB − 16 KiB at the attack's deadline, then stops sending and holds the
///     connection, all with one agent's token, from two addresses. Now: the token has 2
///     uploads in flight and the rest get 429 at once (before that cap, all 8
///     `server.ingest_concurrency` slots were this agent's and other agents got 503); a
///     body that stops arriving gets 408 after `server.body_timeout_secs`. Memory stays
///     bounded by the slots.
async fn slow_bodies(r: Run) {
    let piece = 16 * 1024;
    let pieces = MAX_BODY / piece - 1;
    let left = r.until.saturating_duration_since(Instant::now());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let trickle = Trickle {
                    piece: vec![b' '; piece],
                    every: left / pieces as u32,
                    count: pieces,
                };
                let head = format!(
                    "POST /api/v1/ingest HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\n\
                     Content-Type: application/json\r\nContent-Length: {MAX_BODY}\r\n\r\n",
                    r.s.token
                );
                let t0 = Instant::now();
                let o = raw_exchange(
                    r.src(i % 2),
                    r.s.server,
                    head.as_bytes(),
                    &trickle,
                    left + Duration::from_secs(75),
                )
                .await;
                r.t.add(o, t0);
            })
        })
        .collect();
    join(tasks).await;
}

/// 3c. Slowloris: 500 connections each sending a request's headers one short line a
///     second, never finishing them, from 10 addresses (50 each, under
///     `server.max_connections_per_client`; one address's flood is `idle-flood`); a
///     connection the server closes is opened again until the deadline, and the last ones
///     are followed until the server closes them. Before: half-sent headers stayed open
///     45 s and more, and nothing bounded the connections. Now: closed after
///     `server.header_read_timeout_secs` (10 s).
async fn slowloris(r: Run) {
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let trickle = Trickle {
                    piece: b"X-Slow: a\r\n".to_vec(),
                    every: Duration::from_secs(1),
                    count: usize::MAX,
                };
                // Spread the connections over the first second.
                let jitter = rand::thread_rng().gen_range(0..1000);
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                while r.live() {
                    let t0 = Instant::now();
                    let o = raw_exchange(
                        r.src(i % 10),
                        r.s.server,
                        b"GET /healthz HTTP/1.1\r\nHost: bench\r\n",
                        &trickle,
                        Duration::from_secs(30),
                    )
                    .await;
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
    let mut ms = r.t.answer_ms.lock().unwrap().clone();
    ms.sort_by(f64::total_cmp);
    r.t.note(format!(
        "connections closed by the server after p50 {:.1} s, max {:.1} s",
        pct(&ms, 0.5) / 1e3,
        ms.last().copied().unwrap_or(0.0) / 1e3
    ));
}

/// 3d. Idle flood: 1,100 connections from one address that send nothing, each opened
///     again as soon as the server closes it. Before: they held all 1,024 connection
///     slots (an idle connection is closed after `server.header_read_timeout_secs`, and
///     was opened again at once), and every other client, the prober included, was
///     refused. Now: the address holds `server.max_connections_per_client` (64), every
///     other connection is closed at once, and other clients are served.
async fn idle_flood(r: Run) {
    let nothing = Trickle {
        piece: Vec::new(),
        every: Duration::ZERO,
        count: 0,
    };
    let tasks: Vec<_> = (0..1100)
        .map(|_| {
            let r = r.clone();
            let nothing = Trickle {
                piece: Vec::new(),
                ..nothing
            };
            tokio::spawn(async move {
                while r.live() {
                    let t0 = Instant::now();
                    // Held ones are followed past the deadline until the server closes
                    // them (header_read_timeout_secs).
                    let left = r.until.saturating_duration_since(Instant::now());
                    let o = raw_exchange(
                        r.src(0),
                        r.s.server,
                        b"",
                        &nothing,
                        left + Duration::from_secs(15),
                    )
                    .await;
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

/// 4. Bad agent sections from a valid agent: a NUL in `agent.version` (was a 500, and the
///    agent retried that batch forever) and a 7 MB `agent.version` (was stored and shown),
///    2 senders (a token's uploads in flight), each two requests a second: 4 a second in
///    all, under the token's rate (`ingest.token_rate_per_sec`, 5). Past either, a 7 MB
///    body is answered 429 unread and its connection closed. Now: 200 with the sample
///    stored and the section rejected with a reason.
async fn bad_agent(r: Run) {
    let tasks: Vec<_> = (0..2)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let http = client(Some(r.src(0)));
                let url = format!("{}/api/v1/ingest", r.s.base);
                let mut k = i;
                while r.live() {
                    let body = r.s.bad_agent[k % 2].clone();
                    k += 1;
                    let t0 = Instant::now();
                    let next = t0 + Duration::from_millis(500);
                    let res = http
                        .post(&url)
                        .bearer_auth(&r.s.bad_agent_token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let a = answer(res).await;
                    let o = match &a {
                        Ok(a) if a.status == 200 => agent_rejected(&a.body),
                        _ => a.outcome(),
                    };
                    r.t.add(o, t0);
                    tokio::time::sleep_until(next.into()).await;
                }
            })
        })
        .collect();
    join(tasks).await;
}

fn agent_rejected(body: &str) -> Outcome {
    if body.len() > 64 * 1024 {
        return Outcome::Wrong("answer echoes the input");
    }
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let rejected = v["errors"].as_array().is_some_and(|e| {
        e.iter()
            .any(|e| e["section"] == "agent" && e["field"] == "version")
    });
    match (rejected, v["accepted"].as_u64()) {
        (true, Some(1)) => Outcome::Status(200, false),
        (false, _) => Outcome::Wrong("no agent.version rejection"),
        _ => Outcome::Wrong("sample not accepted"),
    }
}

/// 8a. Oversized label keys (1 KiB and 100 KiB, with a character not allowed in a key),
///     4 senders. Before: the rejected key was echoed back in full. Now: 400 with the key
///     quoted briefly (an answer over 600 bytes is counted as wrong).
async fn label_keys(r: Run) {
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let http = client(Some(r.src(0)));
                let url = format!("{}/api/v1/ingest", r.s.base);
                let bodies: Vec<Bytes> = [1024, 100 * 1024]
                    .iter()
                    .map(|n| {
                        let key = "k".repeat(*n) + "!";
                        Bytes::from(
                            json!({"host": {"name": HOST, "labels": {key: "v"}}}).to_string(),
                        )
                    })
                    .collect();
                let mut k = i;
                while r.live() {
                    let body = bodies[k % 2].clone();
                    k += 1;
                    let t0 = Instant::now();
                    let res = http
                        .post(&url)
                        .bearer_auth(&r.s.token)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let a = answer(res).await;
                    let o = match &a {
                        Ok(a) if a.status == 400 && a.body.len() >= 600 => {
                            Outcome::Wrong("rejected key echoed back")
                        }
                        _ => a.outcome(),
                    };
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

/// 8a. A pool's scheduler token, 8 senders posting 8 MiB of `[[0],[0],…]` as a queue
///     report (the small JSON routes take bodies up to `server.max_body_bytes`). Before:
///     the body was parsed into a generic JSON value before its shape was checked, 45
///     bytes a byte (+363 MB for one request, +717 MB for two). Now: refused as "an
///     array" at its first character; the route's own type parses the rest.
async fn nested_json(r: Run) {
    let (token, body) = (r.s.pool_token.clone(), r.s.nested.clone());
    let path = format!("/api/v1/pools/{POOL}/demand");
    json_posts(r, path, 2, token, None, body).await;
}

/// 8b. Wrong content types on ingest (415 before the body is read) and `/metrics` without
///     or with wrong credentials (401; it was open and named every host), 4 clients.
async fn content_types(r: Run) {
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let http = client(Some(r.src(0)));
                let ingest = format!("{}/api/v1/ingest", r.s.base);
                let metrics = format!("{}/metrics", r.s.base);
                let body = json!({"host": {"name": HOST}}).to_string();
                let mut k = i;
                while r.live() {
                    let case = k % 5;
                    k += 1;
                    let (req, want) = match case {
                        0..=2 => {
                            let mut req = http
                                .post(&ingest)
                                .bearer_auth(&r.s.token)
                                .body(body.clone());
                            let ct = ["text/plain", "application/x-www-form-urlencoded", ""][case];
                            if !ct.is_empty() {
                                req = req.header("content-type", ct);
                            }
                            (req, 415)
                        }
                        3 => (http.get(&metrics), 401),
                        _ => (http.get(&metrics).bearer_auth("not-the-token"), 401),
                    };
                    let t0 = Instant::now();
                    let a = answer(req.send().await).await;
                    let o = match &a {
                        Ok(a) if a.status != want && [401, 415].contains(&a.status) => {
                            Outcome::Wrong("401/415 swapped")
                        }
                        Ok(a) if a.status == 200 => Outcome::Wrong("served without credentials"),
                        _ => a.outcome(),
                    };
                    r.t.add(o, t0);
                }
            })
        })
        .collect();
    join(tasks).await;
}

// ---------------------------------------------------------------------------------------
// HTTP helpers.

fn client(local: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .local_address(local)
        .build()
        .unwrap()
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

async fn join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

/// An answer, read to its end.
struct Answer {
    status: u16,
    retry_after: bool,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

trait AnswerExt {
    fn outcome(&self) -> Outcome;
}

impl AnswerExt for Result<Answer, Outcome> {
    fn outcome(&self) -> Outcome {
        match self {
            Ok(a) => Outcome::Status(a.status, a.retry_after),
            Err(o) => o.clone(),
        }
    }
}

async fn answer(res: Result<reqwest::Response, reqwest::Error>) -> Result<Answer, Outcome> {
    let r = res.map_err(|e| classify(&e))?;
    let h = r.headers();
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = r.status().as_u16();
    let retry_after = h.contains_key("retry-after");
    let location = header("location");
    let set_cookies = h
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|c| c.split(';').next().unwrap_or("").to_string())
        .collect();
    let body = r.text().await.map_err(|e| classify(&e))?;
    Ok(Answer {
        status,
        retry_after,
        location,
        set_cookies,
        body,
    })
}

/// What a client error says about the server: reset, closed unanswered, or slow.
fn classify(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        return Outcome::Timeout;
    }
    if e.is_connect() {
        return Outcome::Connect;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(o) = io_outcome(io) {
                return o;
            }
        }
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return Outcome::Closed;
            }
        }
        cause = c.source();
    }
    let mut s = e.to_string();
    s.truncate(60);
    Outcome::Other(s)
}

fn io_outcome(e: &std::io::Error) -> Option<Outcome> {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | ConnectionAborted | BrokenPipe => Some(Outcome::Reset),
        UnexpectedEof => Some(Outcome::Closed),
        TimedOut => Some(Outcome::Timeout),
        _ => None,
    }
}

/// GET the login form: its CSRF cookie (`name=value`) and the form's token.
async fn login_form(http: &reqwest::Client, base: &str) -> Result<(String, String), Outcome> {
    let a = answer(http.get(format!("{base}/login")).send().await).await?;
    if a.status != 200 {
        return Err(Outcome::Status(a.status, a.retry_after));
    }
    let cookie = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("rw_login_csrf="))
        .cloned()
        .ok_or(Outcome::Wrong("login form without a CSRF cookie"))?;
    let csrf = a
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or(Outcome::Wrong("login form without a CSRF field"))?
        .to_string();
    Ok((cookie, csrf))
}

/// What a raw connection sends after its first bytes: `count` pieces, one every `every`.
struct Trickle {
    piece: Vec<u8>,
    every: Duration,
    count: usize,
}

/// Connect from `src`, send `first`, then the trickle, then hold the connection open
/// without sending, until the server answers (the status line and headers) or closes it,
/// or `limit` passes. The reading goes on while sending, so an answer that comes before
/// the body (401, 415, 503) is seen even when the server then stops reading.
async fn raw_exchange(
    src: IpAddr,
    server: SocketAddr,
    first: &[u8],
    trickle: &Trickle,
    limit: Duration,
) -> Outcome {
    let exchange = async {
        let sock = TcpSocket::new_v4().map_err(|_| Outcome::Connect)?;
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|_| Outcome::Connect)?;
        let stream = sock.connect(server).await.map_err(|_| Outcome::Connect)?;
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(first)
            .await
            .map_err(|e| io_outcome(&e).unwrap_or(Outcome::Reset))?;
        let writer = async {
            for _ in 0..trickle.count {
                if !trickle.every.is_zero() {
                    tokio::time::sleep(trickle.every).await;
                }
                if wr.write_all(&trickle.piece).await.is_err() {
                    // The server stopped reading; its answer (or close) tells why.
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            head = read_status(&mut rd) => head,
            _ = writer => unreachable!("the writer ends pending"),
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(o)) | Ok(Err(o)) => o,
        Err(_) => Outcome::Timeout,
    }
}

/// Read an answer's status line and headers.
async fn read_status<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Outcome, Outcome> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = rd
            .read(&mut chunk)
            .await
            .map_err(|e| io_outcome(&e).unwrap_or(Outcome::Reset))?;
        if n == 0 {
            return Err(Outcome::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or(Outcome::Wrong("unreadable status line"))?;
            let retry_after = head.lines().any(|l| l.starts_with("retry-after:"));
            return Ok(Outcome::Status(status, retry_after));
        }
        if buf.len() > 64 * 1024 {
            return Err(Outcome::Wrong("headers over 64 KiB"));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server process, its memory, and the prober.

/// `rackwatch serve` as a child process; killed if the benchmark ends early.
struct ServerProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl ServerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then up to 15 s to drain and stop; SIGKILL after that.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset a process's VmHWM to its current RSS (Linux ≥ 4.0), so VmHWM after an attack is
/// that attack's peak. False where that is not allowed; the sampled peak is used then.
fn reset_peak(pid: u32) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))
        .and_then(|mut f| f.write_all(b"5"))
        .is_ok()
}

/// Samples the server's VmRSS every 10 ms and keeps the largest since the last `take`
/// (a second view of the peak, for kernels where VmHWM cannot be reset).
struct RssSampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(rss_kib(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssSampler { max, stop }
    }

    /// The largest VmRSS sampled since the last call.
    fn take(&self) -> u64 {
        self.max.swap(0, Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One `/healthz` request of the prober.
struct Probe {
    at: Instant,
    ms: f64,
    outcome: Outcome,
}

/// Ask `/healthz` every [`PROBE_EVERY`] from a thread and runtime of its own (so attack
/// tasks never delay a probe inside this process), each probe on its own task (a slow
/// answer does not hold back the next probe); a probe that gets no answer in 5 s counts
/// as 5 s.
fn start_prober(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Probe>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let out = Arc::new(Mutex::new(Vec::new()));
            let mut tick = tokio::time::interval(PROBE_EVERY);
            let mut inflight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (http, url, out) = (http.clone(), url.clone(), out.clone());
                inflight.push(tokio::spawn(async move {
                    let at = Instant::now();
                    let outcome = answer(http.get(&url).send().await).await.outcome();
                    let ms = at.elapsed().as_secs_f64() * 1e3;
                    out.lock().unwrap().push(Probe { at, ms, outcome });
                }));
                inflight.retain(|h| !h.is_finished());
            }
            for h in inflight {
                let _ = h.await;
            }
            let probes = std::mem::take(&mut *out.lock().unwrap());
            probes
        })
    })
}

// ---------------------------------------------------------------------------------------
// Setup and the report.

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The item bomb: `{"host":{"name":HOST},"host_samples":[{},{},…]}` with 22 M items
/// (66 MB, under the 64 MiB inflate cap), gzip at the best level.
fn make_bomb() -> (Bytes, usize) {
    let items = 22_000_000usize;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let head = format!(r#"{{"host":{{"name":"{HOST}"}},"host_samples":[{{}}"#);
    gz.write_all(head.as_bytes()).unwrap();
    let block = ",{}".repeat(1_000_000);
    let mut left = items - 1;
    while left > 0 {
        let n = left.min(1_000_000);
        gz.write_all(&block.as_bytes()[..n * 3]).unwrap();
        left -= n;
    }
    gz.write_all(b"]}").unwrap();
    let inflated = head.len() + (items - 1) * 3 + 2;
    (Bytes::from(gz.finish().unwrap()), inflated)
}

/// Bad agent sections: a NUL in the version, and a 7 MB version (under the 8 MiB cap).
fn make_bad_agent() -> [Bytes; 2] {
    let ts = chrono::Utc::now() - chrono::Duration::seconds(30);
    let body = |version: String| {
        Bytes::from(
            json!({"host": {"name": HOST}, "agent": {"version": version},
                   "host_samples": [{"ts": ts, "cpu_util_pct": 12.0}]})
            .to_string(),
        )
    };
    [body("1.0\u{0}evil".into()), body("v".repeat(7_000_000))]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_binary() -> PathBuf {
    std::env::var_os("BENCH_RACKWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rackwatch")))
}

/// Write the server's config (its database and listen address; defaults otherwise) and
/// start `rackwatch serve`; wait for `/healthz`.
async fn start_server(root: &Path, db_url: &str, port: u16) -> ServerProcess {
    let s = |v: &str| toml::Value::String(v.to_string()).to_string();
    let cfg = root.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {}\n\n[server]\nlisten = {}\n\n[database]\nurl = {}\n",
            s(&root.join("server").display().to_string()),
            s(&format!("127.0.0.1:{port}")),
            s(db_url)
        ),
    )
    .unwrap();
    let log = root.join("server.log");
    let out = std::fs::File::create(&log).unwrap();
    let bin = server_binary();
    let child = std::process::Command::new(&bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env(
            "RACKWATCH_LOG",
            std::env::var("RACKWATCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut server = ServerProcess { child, log };
    let http = client(None);
    let url = format!("http://127.0.0.1:{port}/healthz");
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http.get(&url).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if let Ok(Some(st)) = server.child.try_wait() {
            panic!(
                "the server exited ({st}):\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the server did not answer /healthz in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "server: {} serve (pid {}), config {}",
        bin.display(),
        server.pid(),
        cfg.display()
    );
    server
}

/// Log a user in through the form from 127.0.0.1; its cookies (`name=value`).
async fn form_login(base: &str, user: &str, pw: &str) -> Vec<String> {
    let http = client(None);
    let (cookie, csrf) = login_form(&http, base).await.expect("login form");
    let a = answer(
        http.post(format!("{base}/login"))
            .header("cookie", cookie)
            .form(&[
                ("username", user),
                ("password", pw),
                ("csrf", csrf.as_str()),
            ])
            .send()
            .await,
    )
    .await
    .unwrap_or_else(|o| panic!("login as {user}: {}", o.label()));
    assert_eq!(a.status, 303, "login as {user}: {}", a.body);
    a.set_cookies
}

/// What was measured during one attack.
struct Window {
    name: &'static str,
    start: Instant,
    end: Instant,
    tally: Arc<Tally>,
    peak_kib: u64,
    closes_expected: bool,
    expect: &'static [u16],
}

impl Window {
    /// 5xx other than a 503 with Retry-After.
    fn bad_5xx(&self) -> u64 {
        self.tally.count(Outcome::is_server_error)
    }

    /// Connections the server reset, or closed unanswered where that is not the intent.
    fn resets(&self) -> u64 {
        let closes = !self.closes_expected;
        self.tally
            .count(|o| *o == Outcome::Reset || (closes && *o == Outcome::Closed))
    }

    /// Answers that are not the attack's intended ones (server errors included).
    fn unexpected(&self) -> u64 {
        self.tally.count(|o| match o {
            Outcome::Status(c, ra) => !self.expect.contains(c) || (*c == 503 && !ra),
            Outcome::Closed => !self.closes_expected,
            _ => true,
        })
    }
}

async fn run() {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let secs = common::env("BENCH_ATTACK_SECS", if quick { 3 } else { 10 }) as u64;
    let only: Vec<String> = std::env::var("BENCH_ONLY")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let load_before = load_average();
    println!(
        "abuse: each attack {secs} s, /healthz probed every {} ms; {} cores, load average {load_before}",
        PROBE_EVERY.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let root = std::env::temp_dir().join(format!("rackwatch-bench-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let common::BenchDb { mut pg, store, url } = common::start_db(root.join("pg"), &[], 4).await;
    let admin_pw: String = format!("admin-{:x}", rand::thread_rng().gen::<u64>());
    store
        .upsert_user("admin", Role::Admin, &admin_pw)
        .await
        .unwrap();
    for u in ["ann", "bob", "carol"] {
        store
            .upsert_user(u, Role::Viewer, &format!("{u}-password"))
            .await
            .unwrap();
    }
    let token = store.create_agent_token(HOST, "abuse bench").await.unwrap();
    let bad_agent_token = store.create_agent_token(HOST, "abuse bench").await.unwrap();
    let pool_token = store.create_pool_token(POOL, "abuse bench").await.unwrap();
    let nested = Bytes::from(format!("[{}[0]]", "[0],".repeat((MAX_BODY - 8) / 4 - 1)));
    assert!(nested.len() <= MAX_BODY);
    let ((bomb, inflated), bad_agent) =
        tokio::task::spawn_blocking(|| (make_bomb(), make_bad_agent()))
            .await
            .unwrap();
    println!(
        "item bomb: {:.1} KiB gzip inflating to {:.1} MB (22 M items)",
        bomb.len() as f64 / 1024.0,
        inflated as f64 / 1e6
    );

    let port = free_port();
    let mut server = start_server(&root, &url, port).await;
    let pid = server.pid();
    let base = format!("http://127.0.0.1:{port}");
    // Before the attacks: admin reads an API page (one argon2 check, then answered from
    // memory), bob logs in from his browser (the device cookie), carol once.
    let admin = client(None);
    let r = admin
        .get(format!("{base}/api/v1/hosts"))
        .header("authorization", basic("admin", &admin_pw))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bob_device = form_login(&base, "bob", "bob-password")
        .await
        .into_iter()
        .find(|c| c.starts_with("rw_device="))
        .expect("a device cookie for bob");
    form_login(&base, "carol", "carol-password").await;

    let shared = Arc::new(Shared {
        server: SocketAddr::from(([127, 0, 0, 1], port)),
        base: base.clone(),
        token,
        bad_agent_token,
        bob_device,
        bomb,
        bad_agent,
        pool_token,
        nested,
    });
    let sampler = RssSampler::start(pid);
    let stop_probes = Arc::new(AtomicBool::new(false));
    let prober = start_prober(format!("{base}/healthz"), stop_probes.clone());

    // A quiet window first: what /healthz costs with no attack (the measurement's floor).
    let (rss0, hwm0) = rss_kib(pid);
    let quiet_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet_end = Instant::now();
    println!(
        "server RSS before the attacks: {:.1} MB (VmHWM since start {:.1} MB)",
        mb(rss0),
        mb(hwm0)
    );

    let mut peak_kib = hwm0;
    let can_reset = reset_peak(pid);
    if !can_reset {
        println!("(VmHWM cannot be reset here: per-attack peaks are VmRSS sampled every 10 ms)");
    }
    let mut windows = Vec::new();
    for (i, a) in attacks().into_iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| o == a.name) {
            continue;
        }
        peak_kib = peak_kib.max(rss_kib(pid).1);
        reset_peak(pid);
        sampler.take();
        let tally = Arc::new(Tally::default());
        let start = Instant::now();
        let run = Run {
            s: shared.clone(),
            t: tally.clone(),
            until: start + Duration::from_secs(secs),
            net: 20 + i as u8,
        };
        (a.run)(run).await;
        let end = Instant::now();
        let sampled = sampler.take();
        let hwm = rss_kib(pid).1;
        let peak = if can_reset { hwm.max(sampled) } else { sampled };
        peak_kib = peak_kib.max(peak);
        windows.push(Window {
            name: a.name,
            start,
            end,
            tally,
            peak_kib: peak,
            closes_expected: a.closes_expected,
            expect: a.expect,
        });
        // Let the server finish what the attack left behind before the next one.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let last_end = windows.last().map_or_else(Instant::now, |w| w.end);
    tokio::time::sleep(SETTLE.saturating_sub(last_end.elapsed())).await;
    let (retained_kib, hwm_end) = rss_kib(pid);
    peak_kib = peak_kib.max(hwm_end).max(sampler.take());
    stop_probes.store(true, Ordering::Relaxed);
    let probes = prober.join().unwrap();
    let load_after = load_average();
    let alive = matches!(server.child.try_wait(), Ok(None));

    // --- report ---------------------------------------------------------------------
    let lat = |from: Instant, to: Instant| {
        let mut v: Vec<f64> = probes
            .iter()
            .filter(|p| p.at >= from && p.at < to)
            .map(|p| p.ms)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let quiet = lat(quiet_start, quiet_end);
    println!(
        "quiet (no attack, 3 s): /healthz p50 {:.1} ms, p99 {:.1} ms over {} probes",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        quiet.len()
    );
    println!();
    println!(
        "{:<21}{:>6}{:>10}{:>11}{:>16}{:>18}  answers",
        "attack", "s", "requests", "peak RSS", "healthz p50/p99", "answer p50/p99"
    );
    let mut all = Vec::new();
    let (mut bad_5xx, mut resets, mut probe_fail) = (0, 0, 0);
    for w in &windows {
        let h = lat(w.start, w.end);
        all.extend_from_slice(&h);
        let mut ans = w.tally.answer_ms.lock().unwrap().clone();
        ans.sort_by(f64::total_cmp);
        let hist = w
            .tally
            .counts
            .lock()
            .unwrap()
            .iter()
            .map(|(o, n)| format!("{}×{n}", o.label()))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "{:<21}{:>6.1}{:>10}{:>8.1} MB{:>10.1}/{:<5.1}ms{:>10.0}/{:<6.0}ms  {hist}",
            w.name,
            (w.end - w.start).as_secs_f64(),
            w.tally.total(),
            mb(w.peak_kib),
            pct(&h, 0.5),
            pct(&h, 0.99),
            pct(&ans, 0.5),
            pct(&ans, 0.99),
        );
        let failed: Vec<_> = probes
            .iter()
            .filter(|p| p.at >= w.start && p.at < w.end && p.outcome != Outcome::Status(200, false))
            .map(|p| p.outcome.label())
            .collect();
        if !failed.is_empty() {
            println!(
                "    /healthz not 200: {} ({})",
                failed.len(),
                failed.join(" ")
            );
        }
        probe_fail += failed.len();
        bad_5xx += w.bad_5xx();
        resets += w.resets();
        let unexpected = w.unexpected();
        if unexpected > 0 {
            println!("    not the intended answer: {unexpected}");
        }
        for n in w.tally.notes.lock().unwrap().iter() {
            println!("    {n}");
        }
    }
    all.sort_by(f64::total_cmp);
    let probe_5xx = probes
        .iter()
        .filter(|p| windows.iter().any(|w| p.at >= w.start && p.at < w.end))
        .filter(|p| p.outcome.is_server_error())
        .count() as u64;
    let server_errors = bad_5xx + resets + probe_5xx;
    let p99 = pct(&all, 0.99);
    let peak_mb = mb(peak_kib);
    let retained_mb = mb(retained_kib);

    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let log_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .collect();
    println!();
    println!(
        "server: peak RSS (VmHWM over the run) {peak_mb:.1} MB; retained {:.0} s after the last attack {retained_mb:.1} MB; {}",
        SETTLE.as_secs_f64(),
        if alive { "still running" } else { "EXITED during the run" }
    );
    println!(
        "/healthz over all attacks: p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms over {} probes; {probe_fail} not 200",
        pct(&all, 0.5),
        all.last().copied().unwrap_or(0.0),
        all.len()
    );
    println!(
        "server errors: {server_errors} = {bad_5xx} answers 5xx other than 503 with Retry-After + {resets} connections reset or closed unanswered + {probe_5xx} /healthz 5xx"
    );
    println!(
        "server log: {} ERROR or panic lines{}",
        log_errors.len(),
        log_errors
            .iter()
            .take(5)
            .map(|l| format!("\n    {l}"))
            .collect::<String>()
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "goals: peak RSS {peak_mb:.1} MB / {GOAL_PEAK_RSS_MB:.0} MB = {:.2} ({}); /healthz p99 {p99:.1} ms / {GOAL_HEALTHZ_P99_MS:.0} ms = {:.2} ({}); server errors {server_errors} (goal 0, {})",
        peak_mb / GOAL_PEAK_RSS_MB,
        verdict(peak_mb <= GOAL_PEAK_RSS_MB),
        p99 / GOAL_HEALTHZ_P99_MS,
        verdict(p99 <= GOAL_HEALTHZ_P99_MS),
        verdict(server_errors == 0 && alive),
    );
    println!("load average: {load_before} before, {load_after} after (shared machine: /healthz latency includes waiting for a core)");

    drop(sampler);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    store.pool.close().await;
    tokio::task::spawn_blocking(move || pg.stop().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "BENCH abuse peak_rss_mb={peak_mb:.1} retained_rss_mb={retained_mb:.1} healthz_p99_ms={p99:.1} server_errors={server_errors}"
    );
}
