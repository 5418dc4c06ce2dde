//! The standard HTTP layers around every route (`web::router_with`): a handler that runs
//! too long answers 408, a page or JSON answer is compressed when the client asks, a
//! panicking handler answers 500 with the error body and the server keeps serving, and
//! credentials are marked sensitive before any handler or trace sees them. (A body that
//! stalls is cut with 408 in `abuse::slow_and_idle_connections_are_closed_and_counted`.)

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use rackwatch::store::Store;
use rackwatch::web::AppState;
use tokio::sync::watch;

use crate::pages::seed;
use crate::support::{fresh_database, test_config, TestApp};

/// The real router and server loop, with `extra` routes behind the same layers.
struct Served {
    base: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve_with(extra: Router<AppState>, request_timeout_secs: u64) -> Served {
    let db_url = fresh_database().await;
    let mut cfg = test_config(&db_url);
    cfg.server.request_timeout_secs = request_timeout_secs;
    let store = Store::connect(&db_url, 4, 2).await.unwrap();
    let state = AppState::new(store, Arc::new(cfg));
    let stats = state.connections.clone();
    let app = rackwatch::web::router_with(state, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = rackwatch::web::serve::ServeLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(5),
        drain: Duration::from_secs(1),
        ..rackwatch::web::serve::ServeLimits::from_config(&Default::default())
    };
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(rackwatch::web::serve::serve(
        listener, app, limits, stats, None, rx,
    ));
    Served { base, stop, task }
}

impl Served {
    /// GET `path` with no credentials.
    async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn end(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_slow_handler_answers_408_at_the_request_timeout() {
    let extra = Router::new().route(
        "/api/v1/test/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let s = serve_with(extra, 1).await;
    let t = std::time::Instant::now();
    let r = s.get("/api/v1/test/slow").await;
    assert_eq!(r.status(), 408);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["error"],
        "the request took longer than 1 s (server.request_timeout_secs)"
    );
    crate::openapi::assert_matches(
        &crate::openapi::document(),
        "post",
        "/api/v1/ingest",
        408,
        &body,
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        t.elapsed()
    );
    // The server goes on answering.
    let r = s.get("/healthz").await;
    assert_eq!(r.status(), 200);
    s.end().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_lives() {
    let extra = Router::new()
        .route(
            "/api/v1/test/panic",
            get(|| async {
                if true {
                    panic!("index out of range in a test handler");
                }
                "never"
            }),
        )
        .route(
            "/test/panic",
            get(|| async {
                if true {
                    panic!("a page handler panicked");
                }
                "never"
            }),
        );
    let s = serve_with(extra, 10).await;
    for _ in 0..3 {
        let r = s.get("/api/v1/test/panic").await;
        assert_eq!(r.status(), 500);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/json",
            "the API's error body"
        );
        // The security headers are still set on the answer.
        assert!(r.headers().contains_key("content-security-policy"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"error": "internal error"}));
        crate::openapi::assert_matches(
            &crate::openapi::document(),
            "get",
            "/api/v1/fleet",
            500,
            &body,
        );
    }
    // A page answers with the error page, not JSON.
    let r = s.get("/test/panic").await;
    assert_eq!(r.status(), 500);
    let ct = r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/html"), "{ct}");
    let html = r.text().await.unwrap();
    assert!(html.contains("<html"), "{html}");
    assert!(
        !html.contains("a page handler panicked"),
        "the cause stays in the log"
    );
    let r = s.get("/healthz").await;
    assert_eq!(r.status(), 200);
    s.end().await;
}

#[tokio::test]
async fn credentials_are_sensitive_before_handlers_see_them() {
    let extra = Router::new().route(
        "/api/v1/test/headers",
        get(|h: HeaderMap| async move {
            let sensitive = |name| h.get(name).map(|v| v.is_sensitive());
            let shown = format!("{:?}", h.get(header::AUTHORIZATION).unwrap());
            (
                StatusCode::OK,
                format!(
                    "{:?} {:?} {shown}",
                    sensitive(header::AUTHORIZATION),
                    sensitive(header::COOKIE)
                ),
            )
        }),
    );
    let s = serve_with(extra, 10).await;
    let body = reqwest::Client::new()
        .get(format!("{}/api/v1/test/headers", s.base))
        .header("authorization", "Bearer secret-token")
        .header("cookie", "rw_session=secret-session")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "Some(true) Some(true) Sensitive");
    s.end().await;
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn unbrotli(b: &[u8]) -> String {
    let mut s = String::new();
    brotli_decompressor::Decompressor::new(b, 4096)
        .read_to_string(&mut s)
        .unwrap();
    s
}

/// The fleet page and its JSON twin come compressed when asked (gzip or br), plain when
/// not; small answers stay plain.
#[tokio::test]
async fn pages_and_json_are_compressed_when_asked() {
    let app = TestApp::spawn().await;
    seed(&app, "z-host").await;
    let cookie = app.login("ops", "correct horse").await;
    let fetch = |path: &'static str, enc: Option<&'static str>| {
        let req = app
            .http
            .get(format!("{}{path}", app.base))
            .header("cookie", &cookie);
        let req = match enc {
            Some(e) => req.header("accept-encoding", e),
            None => req,
        };
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let enc = r
                .headers()
                .get(header::CONTENT_ENCODING)
                .map(|v| v.to_str().unwrap().to_string());
            let vary = r
                .headers()
                .get(header::VARY)
                .map(|v| v.to_str().unwrap().to_string());
            (enc, vary, r.bytes().await.unwrap().to_vec())
        }
    };
    for path in ["/", "/api/v1/fleet"] {
        let (enc, _, plain) = fetch(path, None).await;
        assert_eq!(enc, None, "{path} uncompressed unless asked");
        let plain = String::from_utf8(plain).unwrap();
        assert!(plain.len() > 1024, "{path}: {} bytes", plain.len());
        let (enc, vary, gz) = fetch(path, Some("gzip")).await;
        assert_eq!(enc.as_deref(), Some("gzip"), "{path}");
        assert!(vary.unwrap_or_default().contains("accept-encoding"));
        assert!(
            gz.len() < plain.len() / 2,
            "{path}: {} of {}",
            gz.len(),
            plain.len()
        );
        let (enc, _, br) = fetch(path, Some("br;q=1.0, gzip;q=0.5")).await;
        assert_eq!(enc.as_deref(), Some("br"), "{path}");
        assert!(
            br.len() < plain.len() / 2,
            "{path}: {} of {}",
            br.len(),
            plain.len()
        );
        // The same document either way (the CSP nonce differs from page to page).
        if path.starts_with("/api/") {
            let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["gpus"].clone();
            assert_eq!(v(&gunzip(&gz)), v(&plain));
            assert_eq!(v(&unbrotli(&br)), v(&plain));
        } else {
            assert!(gunzip(&gz).contains("z-host"));
            assert!(unbrotli(&br).contains("z-host"));
        }
    }
    // Under 1 KiB a response is sent as is.
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get(header::CONTENT_ENCODING), None);
    app.stop().await;
}

/// An ingest body refused before it is read (unknown token) is read and dropped before
/// the answer, so a client still sending it gets the 401 rather than a broken pipe, and
/// its connection stays usable for the next request.
#[tokio::test]
async fn a_refused_body_gets_its_answer_and_the_connection_lives_on() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = crate::support::TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = vec![b' '; 400_000];
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer rwa_unknown\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..1000]).await.unwrap();
    // Long enough for the server to have refused the token.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&body[1000..]).await.unwrap();
    let next = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(next.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server answers both requests")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("token"), "the refusal says why: {text}");
    let second = text.match_indices("HTTP/1.1 ").map(|(i, _)| i).nth(1);
    let second = second.unwrap_or_else(|| panic!("a second answer on the same connection: {text}"));
    assert!(text[second..].starts_with("HTTP/1.1 200"), "{text}");
    app.stop().await;
}
