//! `POST /api/v1/ingest`: token auth, size limits, gzip, per-sample validation and an
//! idempotent write. The answer says how many samples were accepted and why the others
//! were not.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use chrono::{Duration, Utc};

use crate::model::validate::{parse_batch, BatchError, Limits};
use crate::model::IngestResponse;
use crate::web::error::ApiError;
use crate::web::AppState;

/// The handler. The body arrives as bytes (the router caps its size) so that gzip and
/// JSON errors can be reported precisely.
pub async fn ingest(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IngestResponse>, ApiError> {
    let started = Instant::now();
    let m = &st.metrics;
    m.ingest_requests.fetch_add(1, Ordering::Relaxed);
    m.ingest_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let result = ingest_inner(&st, &headers, body).await;
    m.ingest_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    match &result {
        Ok(r) => {
            m.samples_accepted
                .fetch_add(r.accepted as u64, Ordering::Relaxed);
            m.samples_stored
                .fetch_add(r.stored as u64, Ordering::Relaxed);
            m.samples_rejected
                .fetch_add(r.rejected as u64, Ordering::Relaxed);
        }
        Err(e) => m.count_ingest_error(e),
    }
    result.map(Json)
}

async fn ingest_inner(
    st: &AppState,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<IngestResponse, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::Unauthorized("missing `Authorization: Bearer <agent token>` header".into())
    })?;
    let scoped_host = st
        .store
        .token_host(token)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked agent token".into()))?;

    let raw = decode_body(headers, &body, st.cfg.server.max_decompressed_bytes)?;
    let now = Utc::now();
    let limits = Limits {
        now,
        max_age: Duration::days(i64::from(st.cfg.retention.raw_days)),
        max_future: Duration::seconds(st.cfg.ingest.max_future_secs),
    };
    let valid = parse_batch(&raw, &limits).map_err(|e| match e {
        BatchError::Json(m) | BatchError::Shape(m) => ApiError::BadRequest(m),
    })?;
    if valid.batch.host.name != scoped_host {
        return Err(ApiError::Forbidden(format!(
            "this token belongs to host {scoped_host:?}; the batch names host {:?}",
            valid.batch.host.name
        )));
    }
    let total = valid.batch.len() + valid.rejections.len();
    if total > st.cfg.ingest.max_samples_per_batch {
        return Err(ApiError::TooLarge(format!(
            "batch holds {total} samples; at most {} (ingest.max_samples_per_batch) are accepted, split it",
            st.cfg.ingest.max_samples_per_batch
        )));
    }
    let accepted = valid.batch.len();
    let outcome = match st.store.write_batch(&valid.batch, now).await {
        Ok(o) => o,
        Err(e) if is_missing_partition(&e) => {
            // A clock jump past the partitions made ahead: create them and retry once.
            st.store
                .ensure_partitions(
                    now,
                    st.cfg.retention.raw_days,
                    st.cfg.retention.partitions_ahead_days,
                )
                .await
                .map_err(ApiError::Internal)?;
            st.store.write_batch(&valid.batch, now).await?
        }
        Err(e) => return Err(e.into()),
    };
    if !valid.batch.events.is_empty() {
        st.metrics
            .events_received
            .fetch_add(valid.batch.events.len() as u64, Ordering::Relaxed);
    }
    Ok(IngestResponse {
        accepted,
        stored: outcome.stored,
        rejected: valid.rejections.len(),
        errors: valid.rejections,
    })
}

fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23514") && db.message().contains("no partition"))
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

/// Undo `Content-Encoding: gzip`, refusing to inflate past `max` bytes (a small body
/// can expand to gigabytes).
pub fn decode_body(headers: &HeaderMap, body: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    let enc = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match enc.as_str() {
        "identity" | "" => Ok(body.to_vec()),
        "gzip" | "x-gzip" => {
            // The gzip trailer's last four bytes give the inflated size (mod 2^32, and a
            // client can lie): a hint, capped by the limit, so the buffer is not regrown
            // and copied several times.
            let hint = body
                .len()
                .checked_sub(4)
                .map(|i| u32::from_le_bytes(body[i..].try_into().expect("4 bytes")) as usize)
                .unwrap_or(0);
            let mut out = Vec::with_capacity(hint.max(body.len() * 4).min(max) + 1);
            let mut dec = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| ApiError::BadRequest(format!("body is not valid gzip: {e}")))?;
            if out.len() > max {
                return Err(ApiError::TooLarge(format!(
                    "body inflates past {max} bytes (server.max_decompressed_bytes); send smaller batches"
                )));
            }
            Ok(out)
        }
        other => Err(ApiError::UnsupportedMedia(format!(
            "Content-Encoding {other:?} is not supported; use gzip or none"
        ))),
    }
}
