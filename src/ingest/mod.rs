//! The ingest pipeline: an agent's batch from token to stored rows, in four stages with
//! no HTTP in them (the handler is `web::ingest`):
//!
//! 1. [`authenticate`]: the agent token names the one host it may write for;
//! 2. [`decode`]: undo the content encoding, refusing to inflate past the limit;
//! 3. [`accept`]: parse and validate every sample on its own (one bad sample never sinks
//!    the good ones), check the batch against the token's host and the size cap, and write
//!    the valid part idempotently;
//! 4. the answer ([`IngestResponse`]) says what was accepted, stored and refused, and why.

pub mod remote_write;

use std::borrow::Cow;
use std::io::Read;

use chrono::{DateTime, Duration, Utc};

use crate::config::Config;
use crate::model::validate::{parse_batch, quoted, BatchError, Limits, ValidBatch};
use crate::model::IngestResponse;
use crate::store::{Store, StoreError};

/// Why a whole batch was refused. Each variant says what the agent should change.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No token, or one the server does not know (or revoked).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token of another host.
    #[error("{0}")]
    Forbidden(String),
    /// The body is not an ingest batch (not JSON, wrong shape, bad gzip).
    #[error("{0}")]
    BadRequest(String),
    /// The body or the batch is over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// A content encoding the server does not speak.
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// The database refused or is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stage 1: the host an agent token may write for.
pub async fn authenticate(store: &Store, token: Option<&str>) -> Result<String, IngestError> {
    let token = token.ok_or_else(|| {
        IngestError::Unauthorized("missing `Authorization: Bearer <agent token>` header".into())
    })?;
    store
        .token_host(token)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| IngestError::Unauthorized("unknown or revoked agent token".into()))
}

/// Stage 2: undo `Content-Encoding` (none or gzip), refusing to inflate past `max` bytes
/// (a small body can expand to gigabytes).
pub fn decode<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    max: usize,
) -> Result<Cow<'a, [u8]>, IngestError> {
    let enc = encoding.unwrap_or("identity").trim().to_ascii_lowercase();
    match enc.as_str() {
        "identity" | "" => Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => {
            // The gzip trailer's last four bytes give the inflated size (mod 2^32, and a
            // client can lie): a hint, capped by the limit, so the buffer is not regrown
            // and copied several times.
            let hint = body
                .len()
                .checked_sub(4)
                .and_then(|i| body[i..].try_into().ok())
                .map(|b: [u8; 4]| u32::from_le_bytes(b) as usize)
                .unwrap_or(0);
            let mut out = Vec::with_capacity(hint.max(body.len() * 4).min(max) + 1);
            let mut dec = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| IngestError::BadRequest(format!("body is not valid gzip: {e}")))?;
            if out.len() > max {
                return Err(IngestError::TooLarge(format!(
                    "body inflates past {max} bytes (server.max_decompressed_bytes); send smaller batches"
                )));
            }
            Ok(Cow::Owned(out))
        }
        other => Err(IngestError::UnsupportedEncoding(format!(
            "Content-Encoding {other:?} is not supported; use gzip or none"
        ))),
    }
}

/// What [`accept`] did: the answer for the agent, and the hardware events it stored
/// (they wake the alert evaluator).
#[derive(Debug)]
pub struct Ingested {
    pub response: IngestResponse,
    pub events: usize,
}

/// A batch that passed stage 3's checks, ready to write.
#[derive(Debug)]
pub struct Checked {
    valid: ValidBatch,
}

/// Stage 3a (CPU only, no I/O; run it off the async workers): parse and validate a
/// decoded batch for `host` (the token's). Work is bounded by
/// `ingest.max_samples_per_batch`: parsing stops at the first item past it.
pub fn check(
    cfg: &Config,
    host: &str,
    raw: &[u8],
    now: DateTime<Utc>,
) -> Result<Checked, IngestError> {
    let limits = Limits {
        now,
        max_age: Duration::days(i64::from(cfg.retention.raw_days)),
        max_future: Duration::seconds(cfg.ingest.max_future_secs),
        max_items: cfg.ingest.max_samples_per_batch,
    };
    let valid = parse_batch(raw, &limits).map_err(|e| match e {
        BatchError::Json(m) | BatchError::Shape(m) => IngestError::BadRequest(m),
        e @ BatchError::TooLarge { .. } => IngestError::TooLarge(e.to_string()),
    })?;
    if valid.batch.host.name != host {
        return Err(IngestError::Forbidden(format!(
            "this token belongs to host {}; the batch names host {}",
            quoted(host),
            quoted(&valid.batch.host.name)
        )));
    }
    Ok(Checked { valid })
}

/// Stage 3b: store a checked batch's valid part, idempotently.
pub async fn write(
    store: &Store,
    cfg: &Config,
    checked: Checked,
    now: DateTime<Utc>,
) -> Result<Ingested, IngestError> {
    let valid = checked.valid;
    let accepted = valid.batch.len();
    let outcome = match store.write_batch(&valid.batch, now).await {
        Ok(o) => o,
        Err(StoreError::MissingPartition) => {
            // A clock jump past the partitions made ahead: create them and retry once.
            store
                .ensure_partitions(
                    now,
                    cfg.retention.raw_days,
                    cfg.retention.partitions_ahead_days,
                )
                .await?;
            store.write_batch(&valid.batch, now).await?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Ingested {
        events: valid.batch.events.len(),
        response: IngestResponse {
            accepted,
            stored: outcome.stored,
            rejected: valid.rejected,
            errors: valid.rejections,
        },
    })
}

/// Stages 3a and 3b in one call (for callers already off the async workers' hot path).
pub async fn accept(
    store: &Store,
    cfg: &Config,
    host: &str,
    raw: &[u8],
    now: DateTime<Utc>,
) -> Result<Ingested, IngestError> {
    let checked = check(cfg, host, raw, now)?;
    write(store, cfg, checked, now).await
}
