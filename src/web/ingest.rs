//! `POST /api/v1/ingest`: the HTTP face of the ingest pipeline (`crate::ingest`). It reads
//! the token and the encoding from the headers, runs the pipeline, counts what happened
//! for `/metrics` and wakes the alert evaluator when hardware events arrived.

use std::sync::atomic::Ordering;
use std::time::Instant;

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;

use super::error::ApiError;
use super::AppState;
use crate::ingest::{self, IngestError};
use crate::model::IngestResponse;

/// The ingest route. Its body is read by the handler, after the token is checked, with
/// the `server.max_body_bytes` cap.
pub fn api() -> Router<AppState> {
    Router::new().route("/api/v1/ingest", post(handle))
}

/// How long a request waits for an ingest slot before it is answered 503.
const SLOT_WAIT: Duration = Duration::from_secs(10);

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Unauthorized(m) => ApiError::Unauthorized(m),
            IngestError::Forbidden(m) => ApiError::Forbidden(m),
            IngestError::BadRequest(m) => ApiError::BadRequest(m),
            IngestError::TooLarge(m) => ApiError::TooLarge(m),
            IngestError::UnsupportedEncoding(m) => ApiError::UnsupportedMedia(m),
            IngestError::Store(e) => e.into(),
        }
    }
}

/// The handler: token, content type and a free slot first, then the body (capped),
/// then parsing and validation on the blocking pool (a batch takes milliseconds of CPU,
/// which on an async worker would stall every other connection), then the write.
async fn handle(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let started = Instant::now();
    let m = &st.metrics;
    m.ingest_requests.fetch_add(1, Ordering::Relaxed);
    let result = run(&st, &headers, body).await;
    m.ingest_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    match &result {
        Ok(r) => {
            m.samples_accepted
                .fetch_add(r.response.accepted as u64, Ordering::Relaxed);
            m.samples_stored
                .fetch_add(r.response.stored as u64, Ordering::Relaxed);
            m.samples_rejected
                .fetch_add(r.response.rejected as u64, Ordering::Relaxed);
            if r.events > 0 {
                m.events_received
                    .fetch_add(r.events as u64, Ordering::Relaxed);
                // The fast lane: evaluate hardware rules now, not at the next poll.
                st.alert_wakeup.notify_one();
            }
        }
        Err(e) => m.count_ingest_error(e),
    }
    result.map(|r| Json(r.response))
}

async fn run(st: &AppState, headers: &HeaderMap, body: Body) -> Result<ingest::Ingested, ApiError> {
    let host = ingest::authenticate(&st.store, bearer(headers)).await?;
    json_body(headers)?;
    let _slot = tokio::time::timeout(SLOT_WAIT, st.ingest_slots.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::Busy("the server is at its ingest concurrency limit; retry shortly".into())
        })?;
    let max = st.cfg.server.max_body_bytes;
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut chain: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = chain {
            if c.is::<http_body_util::LengthLimitError>() {
                return ApiError::TooLarge(format!(
                    "body is over {max} bytes (server.max_body_bytes); send smaller batches"
                ));
            }
            if c.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::RequestTimeout(format!(
                    "the body stopped arriving for {} s (server.body_timeout_secs)",
                    st.cfg.server.body_timeout_secs
                ));
            }
            chain = c.source();
        }
        ApiError::BadRequest(format!("the body could not be read: {e}"))
    })?;
    st.metrics
        .ingest_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cfg = st.cfg.clone();
    let now = Utc::now();
    let checked = tokio::task::spawn_blocking(move || {
        let raw = ingest::decode(
            encoding.as_deref(),
            &bytes,
            cfg.server.max_decompressed_bytes,
        )?;
        ingest::check(&cfg, &host, &raw, now)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("ingest parsing: {e}")))??;
    Ok(ingest::write(&st.store, &st.cfg, checked, now).await?)
}

/// Ingest bodies are JSON; anything else is refused before it is read.
fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMedia(format!(
            "Content-Type must be application/json, not {}",
            crate::model::validate::quoted(ct)
        )))
    }
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
