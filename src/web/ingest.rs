//! `POST /api/v1/ingest`: the HTTP face of the ingest pipeline (`crate::ingest`). It reads
//! the token and the encoding from the headers, runs the pipeline, counts what happened
//! for `/metrics` and wakes the alert evaluator when hardware events arrived.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;

use super::error::ApiError;
use super::AppState;
use crate::ingest::{self, IngestError};
use crate::model::IngestResponse;

/// The ingest route, with the body capped at `max_body_bytes` on the wire.
pub fn api(max_body_bytes: usize) -> Router<AppState> {
    Router::new().route(
        "/api/v1/ingest",
        post(handle).layer(DefaultBodyLimit::max(max_body_bytes)),
    )
}

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

/// The handler. The body arrives as bytes (the router caps its size) so that gzip and
/// JSON errors can be reported precisely.
async fn handle(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngestResponse>, ApiError> {
    let started = Instant::now();
    let m = &st.metrics;
    m.ingest_requests.fetch_add(1, Ordering::Relaxed);
    m.ingest_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let result = run(&st, &headers, &body).await.map_err(ApiError::from);
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

async fn run(
    st: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ingest::Ingested, IngestError> {
    let host = ingest::authenticate(&st.store, bearer(headers)).await?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let raw = ingest::decode(encoding, body, st.cfg.server.max_decompressed_bytes)?;
    ingest::accept(&st.store, &st.cfg, &host, &raw, Utc::now()).await
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
