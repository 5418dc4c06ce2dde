//! The HTTP server loop: accept, bound, serve, and stop gracefully.
//!
//! What an anonymous client can hold is bounded here, before any handler runs:
//! * at most `server.max_connections` connections at once; one more is closed on accept;
//! * request headers must arrive within `server.header_read_timeout_secs`, which also
//!   closes a keep-alive connection idle that long (half-sent headers, slowloris);
//! * every request (headers to the last body byte and the handler) gets
//!   `server.request_timeout_secs`, and a body that stops sending for
//!   `server.body_timeout_secs` is cut (see `router` in `web/mod.rs`);
//! * with `server.tls`, the TLS handshake must also finish within
//!   `server.header_read_timeout_secs`, and runs on the connection's own task, so a slow
//!   or silent client holds one connection slot and nothing else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Connection limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long open requests may finish after shutdown began.
    pub drain: Duration,
}

/// Counters the loop keeps, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    pub open: AtomicU64,
    /// TLS handshakes that failed or timed out (wrong CA, expired or missing
    /// certificate, plain HTTP sent to the TLS port).
    pub tls_handshake_failures: AtomicU64,
}

/// Serve `app` on `listener` until `shutdown` turns true, then let open requests finish
/// (up to `limits.drain`). With `tls`, every connection speaks TLS, and the certificate
/// files are checked for a change every `reload`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    stats: Arc<ConnStats>,
    tls: Option<(Arc<super::tls::Tls>, Duration)>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // Headers beyond 64 KiB are refused (431), not buffered.
        .max_buf_size(64 * 1024);
    if let Some((tls, every)) = &tls {
        tokio::spawn(reload_certificates(
            tls.certs.clone(),
            *every,
            shutdown.clone(),
        ));
    }
    let acceptor = tls.map(|(t, _)| t.acceptor.clone());
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            app: app.clone(),
            http: http.clone(),
            watcher: graceful.watcher(),
            remote,
        };
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        let acceptor = acceptor.clone();
        let handshake = limits.header_read_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => conn.run(stream, None).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| super::tls::ClientCertificate(Arc::new(c.clone())));
                            conn.run(tls, cert).await
                        }
                        Ok(Err(e)) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, "TLS handshake: {e}");
                        }
                        Err(_) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.drain) => {
            tracing::warn!("connections still open after {:?}; closing them", limits.drain);
        }
    }
    Ok(())
}

/// One accepted connection, ready to serve HTTP on its stream (plain or TLS).
struct Conn {
    app: Router,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    remote: SocketAddr,
}

impl Conn {
    async fn run<S>(self, stream: S, cert: Option<super::tls::ClientCertificate>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let remote = self.remote;
        let svc = self
            .app
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                if let Some(c) = &cert {
                    req.extensions_mut().insert(c.clone());
                }
                req
            });
        let conn = self
            .http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(%remote, "connection: {e}");
        }
    }
}

/// Check the certificate files every `every` and serve a changed pair to new
/// connections (a pair that fails to load leaves the old one in service).
async fn reload_certificates(
    certs: Arc<super::tls::CertReloader>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
        }
        let c = certs.clone();
        match tokio::task::spawn_blocking(move || c.reload_if_changed()).await {
            Ok(Ok(true)) => tracing::info!("server.tls: certificate files changed; serving the new certificate"),
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => tracing::error!("server.tls: the changed certificate files do not load ({e}); still serving the previous certificate"),
        }
    }
}

/// The address a client connected from, as the loop recorded it.
pub fn remote(ext: &axum::http::Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}
