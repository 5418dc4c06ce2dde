//! `POST /api/v1/ingest`: the HTTP face of the ingest pipeline (`crate::ingest`). It reads
//! the token and the encoding from the headers, runs the pipeline, counts what happened
//! for `/metrics` and wakes the alert evaluator when hardware events arrived.

use std::time::Instant;

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use chrono::Utc;
use utoipa_axum::routes;

use super::access::Routes;
use super::error::{ApiError, ErrorBody};
use super::tls::ClientCertificate;
use super::AppState;
use crate::ingest::{self, IngestError};
use crate::model::telemetry::IngestOutcome;
use crate::model::{Batch, IngestResponse};

/// The ingest route. Its body is read by the handler, after the token is checked, with
/// the `server.max_body_bytes` cap.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(handle))
}

/// How long a request waits for an ingest slot before it is answered 503: half the
/// agent's default request timeout (10 s), so an agent hears "busy, retry after" rather
/// than timing out.
const SLOT_WAIT: Duration = Duration::from_secs(5);

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Unauthorized(m) => ApiError::Unauthorized(m),
            IngestError::Forbidden(m) => ApiError::Forbidden(m),
            IngestError::BadRequest(m) => ApiError::BadRequest(m),
            IngestError::TooLarge(m) => ApiError::TooLarge(m),
            IngestError::UnsupportedEncoding(m) => ApiError::UnsupportedMedia(m),
            IngestError::Busy(m) => ApiError::Busy(m),
            IngestError::Store(e) => e.into(),
        }
    }
}

/// An agent's batch of samples, hardware events and inventory.
///
/// Every sample is validated on its own: a bad one is listed in `errors` and the rest
/// are stored (200). Samples already stored (a replay after an outage) count as
/// accepted, not stored. The body may be sent with `Content-Encoding: gzip`; it is
/// limited to `server.max_body_bytes` (and `server.max_decompressed_bytes` inflated).
/// Retry 503 and 429 answers after their Retry-After seconds; other 4xx answers mean the
/// batch will not be accepted as it is. Over HTTPS with `server.tls.client_ca_file`, an
/// agent certificate may stand in for the token: it writes the host it names.
#[utoipa::path(
    post,
    path = "/api/v1/ingest",
    operation_id = "ingest",
    tag = "ingest",
    request_body = Batch,
    params(("Content-Encoding" = Option<String>, Header, description = "`gzip` for a compressed body; none for plain JSON.")),
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Accepted, stored and rejected counts, and why each rejected item was refused.", body = IngestResponse),
        (status = 400, description = "Not a batch: bad JSON, or a body that could not be read or inflated.", body = ErrorBody),
        (status = 401, description = "No token, or an unknown or revoked one.", body = ErrorBody),
        (status = 403, description = "The token (or the client certificate) belongs to another host than the batch names.", body = ErrorBody),
        (status = 408, description = "The body stopped arriving (`server.body_timeout_secs`).", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`, inflates past `server.max_decompressed_bytes`, or holds more items than `ingest.max_samples_per_batch`.", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`, or an unknown `Content-Encoding`.", body = ErrorBody),
        (status = 429, description = "This agent's token (or certificate) is over its rate (`ingest.token_rate_per_sec`, `ingest.token_burst`); retry after Retry-After.", body = ErrorBody),
        (status = 503, description = "The database cannot be reached, or the server is at its ingest concurrency limit; retry after Retry-After.", body = ErrorBody),
    )
)]
async fn handle(
    State(st): State<AppState>,
    headers: HeaderMap,
    cert: Option<axum::Extension<ClientCertificate>>,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let started = Instant::now();
    let m = &st.metrics.ingest;
    m.requests.inc();
    let result = run(&st, &headers, cert.map(|c| c.0), body).await;
    let outcome = match &result {
        Ok(r) => {
            m.samples_accepted.inc_by(r.response.accepted as u64);
            m.samples_stored.inc_by(r.response.stored as u64);
            m.samples_rejected.inc_by(r.response.rejected as u64);
            if r.events > 0 {
                m.events_received.inc_by(r.events as u64);
                // The fast lane: evaluate hardware rules now, not at the next poll.
                st.alert_wakeup.notify_one();
            }
            IngestOutcome::Ok
        }
        Err(e) => IngestOutcome::Refused(super::metrics::refusal(e)),
    };
    st.metrics
        .ingest_answered(outcome, started.elapsed().as_secs_f64());
    result.map(|r| Json(r.response))
}

async fn run(
    st: &AppState,
    headers: &HeaderMap,
    cert: Option<ClientCertificate>,
    body: Body,
) -> Result<ingest::Ingested, ApiError> {
    // A token when there is one; otherwise the certificate the TLS handshake verified.
    let (agent, key) = match (bearer(headers), cert) {
        (None, Some(c)) => {
            let key = limit_key(b"certificate", &c.0);
            (ingest::Agent::Certificate(c.0), key)
        }
        (token, _) => {
            let agent = ingest::authenticate(&st.store, token).await?;
            let key = limit_key(b"token", token.unwrap_or("").as_bytes());
            (agent, key)
        }
    };
    if let Some(wait) = st.ingest_limiter.as_ref().and_then(|l| l.take(key)) {
        return Err(ApiError::TooMany {
            message: format!(
                "this agent is over its ingest rate ({} requests/s, ingest.token_rate_per_sec); retry in {wait} s",
                st.cfg.ingest.token_rate_per_sec
            ),
            retry_after: wait,
        });
    }
    super::body::require_json(headers)?;
    let _upload = st
        .uploads
        .take(key, AGENT_UPLOADS)
        .ok_or_else(|| ApiError::TooMany {
            message: format!(
                "this agent already has {AGENT_UPLOADS} uploads in flight; send the next when one is answered"
            ),
            retry_after: 1,
        })?;
    let _slot = slot(st).await?;
    let bytes = super::body::read(st, body).await?;
    st.metrics.ingest.bytes.inc_by(bytes.len() as u64);
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cfg = st.cfg.clone();
    let budget = st.inflate_budget.clone();
    let now = Utc::now();
    let checked = tokio::task::spawn_blocking(move || {
        let raw = ingest::decode(
            encoding.as_deref(),
            &bytes,
            cfg.server.max_decompressed_bytes,
            &budget,
        )?;
        ingest::check(&cfg, &agent, &raw, now)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("ingest parsing: {e}")))??;
    if let Some(wait) = st
        .ingest_volume
        .as_ref()
        .and_then(|v| v.take_n(key, checked.items() as f64))
    {
        return Err(ApiError::TooMany {
            message: format!(
                "this agent is over its sample volume ({} samples/s after a burst of {}, ingest.token_samples_per_sec); nothing of this batch was stored; retry in {wait} s",
                st.cfg.ingest.token_samples_per_sec, st.cfg.ingest.token_samples_burst
            ),
            retry_after: wait,
        });
    }
    Ok(ingest::write(&st.store, &st.cfg, checked, now).await?)
}

/// The key of an agent's rate-limit bucket: a hash of its token or certificate, so the
/// limiter holds no credential.
pub(super) fn limit_key(kind: &[u8], secret: &[u8]) -> [u8; 16] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(kind);
    h.update([0]);
    h.update(secret);
    h.finalize()[..16].try_into().expect("16 bytes")
}

/// Uploads one agent may have in flight: it sends one batch at a time (and a retry may
/// overlap one the server is still finishing). Ingest slots are shared by every agent:
/// without this cap, one agent sending slow bodies could hold them all.
const AGENT_UPLOADS: usize = 2;

/// Wait for an ingest slot (`server.ingest_concurrency`); 503 after [`SLOT_WAIT`].
pub(super) async fn slot(st: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    tokio::time::timeout(SLOT_WAIT, st.ingest_slots.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::Busy("the server is at its ingest concurrency limit; retry shortly".into())
        })
}

/// The bearer token of a request (the scheme's name in any case, as HTTP has it).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    auth_param(headers, "Bearer")
}

/// The credentials of `Authorization: <scheme> <credentials>`, the scheme matched
/// without regard to case (RFC 9110 §11.1).
pub fn auth_param<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, rest) = v.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_of_authorization_is_matched_in_any_case() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("BEARER abc")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearer ")), None);
        assert_eq!(bearer(&h("Bearerabc")), None);
        assert_eq!(
            auth_param(&h("basic dXNlcjpwdw=="), "Basic"),
            Some("dXNlcjpwdw==")
        );
    }
}
