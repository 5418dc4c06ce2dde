//! `POST /api/v1/write`: Prometheus remote write (protocol 1.0) into the ingest pipeline
//! (`crate::ingest::remote_write`). Answers follow Prometheus's retry logic: 2xx stored,
//! 4xx never retried (a bad or refused request stays refused), 5xx retried with backoff
//! (the database is down, or the server is at its ingest concurrency limit).

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::Utc;
use utoipa_axum::routes;

use super::access::Routes;
use super::body;
use super::error::{ApiError, ErrorBody};
use super::ingest::{bearer, slot};
use super::AppState;
use crate::ingest::remote_write::{self, Dropped, Written};
use crate::model::telemetry::{DropLabel, ReasonLabel};
use crate::store::StoreError;

pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(handle))
}

/// Samples scraped by Prometheus (dcgm-exporter, node_exporter), remote-written.
///
/// The request body of remote write as the OpenAPI document describes it: bytes, not
/// a list of numbers.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct SnappyProtobuf(Vec<u8>);

/// The body is a snappy-compressed protobuf `WriteRequest` (remote write 1.0), limited to
/// `server.max_body_bytes` and `server.max_decompressed_bytes` inflated. dcgm-exporter
/// series are read by their `Hostname` and `gpu` labels, node_exporter series by
/// `instance` (without the port); other series are counted and dropped. Each host's
/// samples are validated as an agent's; a sample already stored gains the metrics it
/// lacked. The token is a remote-write token, scoped to a site or a list of hosts.
#[utoipa::path(
    post,
    path = "/api/v1/write",
    operation_id = "remote_write",
    tag = "ingest",
    request_body(content = SnappyProtobuf, content_type = "application/x-protobuf", description = "A snappy-compressed `prometheus.WriteRequest`."),
    params(("Content-Encoding" = Option<String>, Header, description = "`snappy` (remote write 1.0 always sends it).")),
    security(("remote_write_token" = [])),
    responses(
        (status = 204, description = "Stored (samples that failed validation are counted on /metrics and logged)."),
        (status = 400, description = "Not a snappy-compressed WriteRequest.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown or revoked remote-write token.", body = ErrorBody),
        (status = 403, description = "The request names no host the token may write.", body = ErrorBody),
        (status = 408, description = "The body stopped arriving (`server.body_timeout_secs`).", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`, inflates past `server.max_decompressed_bytes`, or holds more samples than `ingest.max_samples_per_batch`.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/x-protobuf` (remote write 1.0), or not snappy.", body = ErrorBody),
        (status = 503, description = "The database cannot be reached, the server is at its ingest concurrency limit, or the token has 4 writes in flight or is over its sample volume (`ingest.remote_write_samples_per_sec`; nothing of the request is stored). With `Retry-After`; Prometheus retries.", body = ErrorBody),
    )
)]
async fn handle(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let started = Instant::now();
    let w = &st.metrics.remote_write;
    w.requests.inc();
    let result = run(&st, &headers, body).await;
    match &result {
        Ok(r) => {
            let m = &st.metrics.ingest;
            m.samples_accepted.inc_by(r.response.accepted as u64);
            m.samples_stored.inc_by(r.response.stored as u64);
            m.samples_rejected.inc_by(r.response.rejected as u64);
            w.samples.inc_by(r.samples as u64);
            for why in Dropped::ALL {
                let n = r.dropped.get(&why).copied().unwrap_or(0);
                if n > 0 {
                    let reason = why.as_str();
                    w.series_dropped
                        .get_or_create(&DropLabel { reason })
                        .inc_by(n);
                }
            }
            if let Some(first) = r.response.errors.first() {
                // Prometheus reads no answer body of a 204: the log says what was refused
                // (with the counter rackwatch_samples_rejected_total), once a minute.
                use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
                static LAST_WARNED: AtomicI64 = AtomicI64::new(0);
                let now = chrono::Utc::now().timestamp();
                if now - LAST_WARNED.load(Relaxed) >= 60 {
                    LAST_WARNED.store(now, Relaxed);
                    tracing::warn!(
                        rejected = r.response.rejected,
                        "remote write: samples rejected (logged once a minute), the first: {} #{} {}: {}",
                        first.section,
                        first.index,
                        first.field.as_deref().unwrap_or(""),
                        first.reason
                    );
                }
            }
            if r.events > 0 {
                m.events_received.inc_by(r.events as u64);
                // The fast lane: evaluate hardware rules now, not at the next poll.
                st.alert_wakeup.notify_one();
            }
        }
        Err(e) => {
            let reason = super::metrics::refusal(e);
            w.errors.get_or_create(&ReasonLabel { reason }).inc();
        }
    }
    st.metrics
        .ingest
        .seconds
        .inc_by(started.elapsed().as_secs_f64());
    result.map(|_| StatusCode::NO_CONTENT)
}

/// Writes one remote-write token may have in flight: Prometheus's shards share them, and
/// the other half of the default ingest slots stays free for agents.
const REMOTE_WRITE_UPLOADS: usize = 4;

async fn run(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Written, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized(
            "missing `Authorization: Bearer <remote-write token>` header (remote_write.authorization.credentials)".into(),
        )
    })?;
    let scope = st
        .store
        .token_write_scope(token)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked remote-write token".into()))?;
    protobuf_body(headers)?;
    // Prometheus sends from several shards at once. Past the cap it is answered 503,
    // which it retries (a 429 it may drop).
    let key = super::ingest::limit_key(b"remote-write", token.as_bytes());
    let _upload = st
        .uploads
        .take(key, REMOTE_WRITE_UPLOADS)
        .ok_or_else(|| {
            ApiError::Busy(format!(
                "this token already has {REMOTE_WRITE_UPLOADS} writes in flight (half the ingest slots); retry shortly"
            ))
        })?;
    let _slot = slot(st).await?;
    let bytes = body::read(st, body).await?;
    st.metrics.remote_write.bytes.inc_by(bytes.len() as u64);
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cfg = st.cfg.clone();
    let budget = st.inflate_budget.clone();
    let mapped = tokio::task::spawn_blocking(move || {
        // The inflated body's share of the budget is held until it is mapped.
        let (req, _reserved) = remote_write::decode(
            encoding.as_deref(),
            &bytes,
            cfg.server.max_decompressed_bytes,
            &budget,
        )?;
        remote_write::map(req, cfg.ingest.max_samples_per_batch)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("remote-write decoding: {e}")))??;
    // Every sample sent counts, kept or not: the work was done either way.
    if let Some(wait) = st
        .remote_write_volume
        .as_ref()
        .and_then(|v| v.take_n(key, mapped.samples() as f64))
    {
        return Err(ApiError::BusyFor {
            message: format!(
                "this remote-write token is over its sample volume ({} samples/s after a burst of {}, ingest.remote_write_samples_per_sec); nothing of this request was stored; retry in {wait} s",
                st.cfg.ingest.remote_write_samples_per_sec,
                st.cfg.ingest.remote_write_samples_burst
            ),
            retry_after: wait,
        });
    }
    let now = Utc::now();
    Ok(remote_write::accept(&st.store, &st.cfg, &st.remote_write, &scope, mapped, now).await?)
}

/// Remote write 1.0 sends `application/x-protobuf`; 2.0 adds
/// `proto=io.prometheus.write.v2.Request`, which is refused (Prometheus then knows the
/// receiver speaks 1.0 only).
fn protobuf_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = ct.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("");
    let v1 = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("proto") => {
            v.trim() == "prometheus.WriteRequest"
        }
        _ => true,
    });
    if mime.eq_ignore_ascii_case("application/x-protobuf") && v1 {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMedia(format!(
            "Content-Type must be application/x-protobuf (remote write 1.0, protobuf_message: prometheus.WriteRequest), not {}",
            crate::model::validate::quoted(ct)
        )))
    }
}
