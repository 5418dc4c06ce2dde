//! The HTTP server loop: accept, bound, serve, and stop gracefully.
//!
//! What an anonymous client can hold is bounded here, before any handler runs:
//! * at most `server.max_connections` connections at once, and at most
//!   `server.max_connections_per_client` from one client address (an IPv6 client's /64);
//!   one more is closed on accept, so one client cannot take the others' connections;
//! * a response the client stops reading for `server.write_timeout_secs` closes its
//!   connection, so a client that asks for a large answer and never reads it does not
//!   hold it in memory;
//! * request headers must arrive within `server.header_read_timeout_secs`, which also
//!   closes a keep-alive connection idle that long (half-sent headers, slowloris);
//! * every request (headers to the last body byte and the handler) gets
//!   `server.request_timeout_secs`, and a body that stops sending for
//!   `server.body_timeout_secs` is cut (see `router` in `web/mod.rs`);
//! * with `server.tls`, the TLS handshake must also finish within
//!   `server.header_read_timeout_secs`, and runs on the connection's own task, so a slow
//!   or silent client holds one connection slot and nothing else.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
#[derive(Debug, Clone)]
pub struct ServeLimits {
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 client's /64).
    pub max_per_client: usize,
    /// Addresses without the per-client cap (a reverse proxy or load balancer, whose
    /// connections carry many clients).
    pub per_client_exempt: Vec<crate::config::Cidr>,
    /// Reverse proxies whose `X-Forwarded-For` names the client ([`client`]).
    pub trusted_proxies: Arc<Vec<crate::config::Cidr>>,
    pub header_read_timeout: Duration,
    /// A response the client does not read for this long closes the connection.
    pub write_timeout: Duration,
    /// How long open requests may finish after shutdown began.
    pub drain: Duration,
}

impl ServeLimits {
    /// The limits `server.*` sets.
    pub fn from_config(s: &crate::config::ServerConfig) -> ServeLimits {
        ServeLimits {
            max_connections: s.max_connections,
            max_per_client: s.max_connections_per_client,
            per_client_exempt: s
                .per_client_exempt
                .iter()
                .filter_map(|c| crate::config::Cidr::parse(c).ok())
                .collect(),
            trusted_proxies: Arc::new(
                s.trusted_proxies
                    .iter()
                    .filter_map(|c| crate::config::Cidr::parse(c).ok())
                    .collect(),
            ),
            header_read_timeout: Duration::from_secs(s.header_read_timeout_secs),
            write_timeout: Duration::from_secs(s.write_timeout_secs),
            drain: Duration::from_secs(10),
        }
    }
}

/// The address a client's connections are counted under: an IPv4 address, or the /64
/// of an IPv6 one (one host has a whole /64 to pick addresses from).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// A connection's stream whose writes fail with `TimedOut` once one has waited `limit`
/// for the client to read (the socket's send buffer full all that time).
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write or flush returned `r`: progress clears the deadline, waiting starts
    /// or checks it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of the response for {} s (server.write_timeout_secs)",
                    limit.as_secs()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counters the loop keeps, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed at once because their client had `max_per_client` open.
    pub refused_per_client: AtomicU64,
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
    let per_client: Arc<super::limit::InFlight<IpAddr>> = Arc::default();
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
        let client = if limits
            .per_client_exempt
            .iter()
            .any(|c| c.contains(remote.ip()))
        {
            None
        } else {
            match per_client.take(client_key(remote.ip()), limits.max_per_client) {
                Some(c) => Some(c),
                None => {
                    stats.refused_per_client.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = WriteDeadline::new(stream, limits.write_timeout);
        let conn = Conn {
            app: app.clone(),
            http: http.clone(),
            watcher: graceful.watcher(),
            remote,
            trusted_proxies: limits.trusted_proxies.clone(),
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
            drop(client);
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
    trusted_proxies: Arc<Vec<crate::config::Cidr>>,
}

impl Conn {
    async fn run<S>(self, stream: S, cert: Option<super::tls::ClientCertificate>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let remote = self.remote;
        let proxies = self.trusted_proxies;
        let svc = self
            .app
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                if let Some(ip) = forwarded_client(remote.ip(), req.headers(), &proxies) {
                    req.extensions_mut().insert(ForwardedClient(ip));
                }
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

/// The address a client connected from, as the loop recorded it: for a request through a
/// reverse proxy, the proxy's. Trust decisions about the connection itself (proxy
/// sign-on's `trusted`) use this; everything about the person uses [`client`].
pub fn remote(ext: &axum::http::Extensions) -> Option<SocketAddr> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// The client a request came from through one of `server.trusted_proxies`.
#[derive(Debug, Clone, Copy)]
struct ForwardedClient(IpAddr);

/// The client's address: the one a trusted proxy's `X-Forwarded-For` names, else the
/// connection's.
pub fn client(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<ForwardedClient>()
        .map(|c| c.0)
        .or_else(|| remote(ext).map(|a| a.ip()))
}

/// The client named by `X-Forwarded-For` on a connection from a trusted proxy: the last
/// address that is not itself a trusted proxy (each proxy appends the address it was
/// connected from; what the client sent comes first and is not believed). `None` for a
/// connection from elsewhere, or without a usable header.
fn forwarded_client(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    proxies: &[crate::config::Cidr],
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| proxies.iter().any(|c| c.contains(ip));
    if !trusted(peer) {
        return None;
    }
    // The hops in order, every header line's; read from the right, and only as far as the
    // first that is not a trusted proxy: what the client wrote before it is never read, so
    // a client cannot spoil the header to be taken for the proxy.
    let lines: Vec<std::borrow::Cow<'_, str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    let hops: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    for hop in hops.iter().rev() {
        // "[v6]:port" and "v4:port" as some proxies write them.
        let ip = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
        match ip {
            Ok(ip) if trusted(ip) => continue,
            Ok(ip) => return Some(ip),
            // A hop a trusted proxy wrote that is no address: an unknown client, never
            // the proxy (whose address may be known to every user).
            Err(_) => return Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    #[test]
    fn only_a_trusted_proxy_names_the_client_and_only_its_own_hop_counts() {
        let proxies = vec![
            Cidr::parse("10.0.0.5").unwrap(),
            Cidr::parse("10.1.0.0/16").unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = |v: &[&str]| {
            let mut h = axum::http::HeaderMap::new();
            for x in v {
                h.append("x-forwarded-for", x.parse().unwrap());
            }
            h
        };
        // From the proxy: the address it appended.
        assert_eq!(
            forwarded_client(ip("10.0.0.5"), &xff(&["203.0.113.7"]), &proxies),
            Some(ip("203.0.113.7"))
        );
        // What the client wrote itself comes first and is not believed; a second proxy
        // in the chain is skipped; ports and several header lines are read.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.5"),
                &xff(&["1.2.3.4, 203.0.113.7:5123", "10.1.2.3"]),
                &proxies
            ),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.5"), &xff(&["[2001:db8::1]:443"]), &proxies),
            Some(ip("2001:db8::1"))
        );
        // From anyone else, or without a usable header: the connection's address.
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &xff(&["203.0.113.7"]), &proxies),
            None
        );
        assert_eq!(forwarded_client(ip("10.0.0.5"), &xff(&[]), &proxies), None);
        // A client's garbage before the hop the proxy appended is never read; garbage
        // where the proxy's hop should be is an unknown client, never the proxy.
        assert_eq!(
            forwarded_client(
                ip("10.0.0.5"),
                &xff(&["not-an-address, 203.0.113.7"]),
                &proxies
            ),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.5"), &xff(&["not-an-address"]), &proxies),
            Some(ip("0.0.0.0"))
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.5"), &xff(&["203.0.113.7"]), &[]),
            None
        );
    }
}
