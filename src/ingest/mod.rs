//! The ingest pipeline: an agent's batch from token to stored rows, in four stages with
//! no HTTP in them (the handler is `web::ingest`):
//!
//! 1. [`authenticate`]: the agent token names the one host it may write for (an agent
//!    certificate verified by the TLS handshake does the same: [`Agent`]);
//! 2. [`decode`]: undo the content encoding, refusing to inflate past the limit;
//! 3. [`accept`]: parse and validate every sample on its own (one bad sample never sinks
//!    the good ones), check the batch against the token's host and the size cap, and write
//!    the valid part idempotently;
//! 4. the answer ([`IngestResponse`]) says what was accepted, stored and refused, and why.

pub mod remote_write;

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;

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
    /// The server is at a limit that clears by itself; retry after a while.
    #[error("{0}")]
    Busy(String),
    /// The database refused or is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who sends a batch, and so which host it may write.
#[derive(Debug, Clone)]
pub enum Agent {
    /// An agent token: it names one host, and was issued at `issued` (a token issued
    /// before its host was taken out does not bring it back).
    Token { host: String, issued: DateTime<Utc> },
    /// A client certificate the TLS handshake verified against `server.tls.client_ca_file`:
    /// it may write the host its DNS names (or, without any, its common name) name.
    Certificate(Arc<rustls::pki_types::CertificateDer<'static>>),
}

impl Agent {
    /// Refuse a batch for `host` that this agent may not write (403).
    pub fn may_write(&self, host: &str) -> Result<(), IngestError> {
        match self {
            Agent::Token { host: own, .. } if own == host => Ok(()),
            Agent::Token { host: own, .. } => Err(IngestError::Forbidden(format!(
                "this token belongs to host {}; the batch names host {}",
                quoted(own),
                quoted(host)
            ))),
            Agent::Certificate(der) => {
                // Exactly, as a token's host: host names are case-sensitive, and a
                // certificate for gpu-07 must not write (or create) GPU-07.
                let names = certificate_names(der);
                if names.iter().any(|n| n == host) {
                    Ok(())
                } else {
                    Err(IngestError::Forbidden(format!(
                        "this client certificate names {}; the batch names host {}",
                        if names.is_empty() {
                            "no host".to_string()
                        } else {
                            names
                                .iter()
                                .map(|n| quoted(n))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                        quoted(host)
                    )))
                }
            }
        }
    }
}

/// The host names a client certificate is for: its DNS subject alternative names
/// (wildcards excluded: one certificate, named hosts), or, when it has no DNS name at
/// all, its subject's common name. A certificate with only wildcard names names no host.
pub fn certificate_names(der: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
        return Vec::new();
    };
    let all: Vec<&str> = cert.valid_dns_names().collect();
    if !all.is_empty() {
        return all
            .into_iter()
            .filter(|n| !n.contains('*'))
            .map(str::to_string)
            .collect();
    }
    common_name(cert.subject()).into_iter().collect()
}

/// One DER element: tag, content, and what follows it.
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The first common name (OID 2.5.4.3) of a DER subject (the contents of its SEQUENCE).
fn common_name(subject: &[u8]) -> Option<String> {
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const CN: [u8; 3] = [0x55, 0x04, 0x03];
    let mut rdns = subject;
    while let Some((tag, set, rest)) = der_element(rdns) {
        rdns = rest;
        if tag != SET {
            continue;
        }
        let mut atvs = set;
        while let Some((tag, atv, rest)) = der_element(atvs) {
            atvs = rest;
            let Some((OID, oid, value)) = der_element(atv).filter(|_| tag == SEQUENCE) else {
                continue;
            };
            if oid != CN {
                continue;
            }
            // UTF8String, PrintableString or IA5String.
            let (vt, v, _) = der_element(value)?;
            if !matches!(vt, 0x0c | 0x13 | 0x16) {
                return None;
            }
            return String::from_utf8(v.to_vec()).ok();
        }
    }
    None
}

/// Stage 1: the host an agent token may write for.
pub async fn authenticate(store: &Store, token: Option<&str>) -> Result<Agent, IngestError> {
    let token = token.ok_or_else(|| {
        IngestError::Unauthorized("missing `Authorization: Bearer <agent token>` header".into())
    })?;
    store
        .token_host(token)
        .await
        .map_err(StoreError::from)?
        .map(|h| Agent::Token {
            host: h.name,
            issued: h.issued,
        })
        .ok_or_else(|| IngestError::Unauthorized("unknown or revoked agent token".into()))
}

/// Memory for inflated bodies, shared by all requests: a gzip body of 64 KiB can inflate
/// to 64 MiB, so eight of them at once would hold half a gigabyte. Inflating reserves its
/// output here 1 MiB at a time; a body that cannot get more is refused with
/// [`IngestError::Busy`] (503 with Retry-After), and the reservation is returned when the
/// decoded body is dropped.
#[derive(Debug, Clone)]
pub struct InflateBudget {
    mib: std::sync::Arc<tokio::sync::Semaphore>,
}

impl InflateBudget {
    /// A budget of `bytes`, rounded up to whole MiB, plus 1 MiB so that one body of
    /// exactly `bytes` fits (the buffer holds one byte more to detect the limit).
    pub fn new(bytes: usize) -> InflateBudget {
        InflateBudget {
            mib: std::sync::Arc::new(tokio::sync::Semaphore::new(bytes.div_ceil(MIB) + 1)),
        }
    }

    /// MiB not reserved right now.
    pub fn available_mib(&self) -> usize {
        self.mib.available_permits()
    }

    /// Reserves `mib` MiB, returned when the permit is dropped; [`IngestError::Busy`] when
    /// the budget has not that much left.
    pub fn reserve_mib(
        &self,
        mib: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, IngestError> {
        let mib = u32::try_from(mib).unwrap_or(u32::MAX);
        self.mib.clone().try_acquire_many_owned(mib).map_err(|_| {
            IngestError::Busy(
                "the server is inflating as many bodies as its memory budget allows \
                 (server.inflate_budget_bytes); retry shortly"
                    .into(),
            )
        })
    }

    /// Reserves room for `bytes`, rounded up to whole MiB.
    pub fn reserve(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, IngestError> {
        self.reserve_mib(bytes.div_ceil(MIB))
    }
}

const MIB: usize = 1 << 20;

/// A decoded body, holding its share of the [`InflateBudget`] while it lives.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub bytes: Cow<'a, [u8]>,
    _reserved: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl std::ops::Deref for Decoded<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Stage 2: undo `Content-Encoding` (none or gzip), refusing to inflate past `max` bytes
/// (a small body can expand to gigabytes) or past what `budget` has left.
pub fn decode<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    max: usize,
    budget: &InflateBudget,
) -> Result<Decoded<'a>, IngestError> {
    let enc = encoding.unwrap_or("identity").trim().to_ascii_lowercase();
    match enc.as_str() {
        "identity" | "" => Ok(Decoded {
            bytes: Cow::Borrowed(body),
            _reserved: None,
        }),
        "gzip" | "x-gzip" => {
            let mut reserved: Option<tokio::sync::OwnedSemaphorePermit> = None;
            let mut reserve = |mib: usize| -> Result<(), IngestError> {
                let more = budget.reserve_mib(mib)?;
                match &mut reserved {
                    Some(r) => r.merge(more),
                    None => reserved = Some(more),
                }
                Ok(())
            };
            // The gzip trailer's last four bytes give the inflated size (mod 2^32, and a
            // client can lie): a hint for the first reservation and the buffer, capped by
            // the limit, so the buffer is not regrown and copied several times.
            let hint = body
                .len()
                .checked_sub(4)
                .and_then(|i| body[i..].try_into().ok())
                .map(|b: [u8; 4]| u32::from_le_bytes(b) as usize)
                .unwrap_or(0)
                .max(body.len() * 4)
                .min(max)
                + 1;
            let mut held = hint.div_ceil(MIB);
            reserve(held)?;
            let mut out = Vec::with_capacity(hint);
            let mut dec = flate2::read::GzDecoder::new(body).take(max as u64 + 1);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = dec
                    .read(&mut chunk)
                    .map_err(|e| IngestError::BadRequest(format!("body is not valid gzip: {e}")))?;
                if n == 0 {
                    break;
                }
                if out.len() + n > max {
                    return Err(IngestError::TooLarge(format!(
                        "body inflates past {max} bytes (server.max_decompressed_bytes); send smaller batches"
                    )));
                }
                // Grow by doubling, up to the limit, and reserve before growing.
                if out.len() + n > out.capacity() {
                    let cap = (out.capacity() * 2).max(out.len() + n).min(max + 1);
                    let need = cap.div_ceil(MIB);
                    if need > held {
                        reserve(need - held)?;
                        held = need;
                    }
                    out.reserve_exact(cap - out.len());
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Ok(Decoded {
                bytes: Cow::Owned(out),
                _reserved: reserved,
            })
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
    /// When the sender's agent token was issued (none for a certificate).
    token_issued: Option<DateTime<Utc>>,
}

/// Stage 3a (CPU only, no I/O; run it off the async workers): parse and validate a
/// decoded batch for `host` (the token's). Work is bounded by
/// `ingest.max_samples_per_batch`: parsing stops at the first item past it.
pub fn check(
    cfg: &Config,
    agent: &Agent,
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
    agent.may_write(&valid.batch.host.name)?;
    let token_issued = match agent {
        Agent::Token { issued, .. } => Some(*issued),
        Agent::Certificate(_) => None,
    };
    Ok(Checked {
        valid,
        token_issued,
    })
}

impl Checked {
    /// Items the batch sent (samples, events and GPUs; valid or not): what the volume
    /// limit charges, since checking a rejected item is work too.
    pub fn items(&self) -> usize {
        self.valid.batch.len() + self.valid.batch.gpus.len() + self.valid.rejected
    }
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
    let issued = checked.token_issued;
    // A batch whose every item was refused adds no host to the fleet (a token being tried
    // out with bad samples would leave a host that never reported); a known host's is
    // stored as any other, as a sign of life.
    if accepted == 0
        && valid.rejected > 0
        && valid.batch.gpus.is_empty()
        && store
            .host_latest(&valid.batch.host.name)
            .await
            .map_err(StoreError::from)?
            .is_none()
    {
        return Ok(Ingested {
            events: 0,
            response: IngestResponse {
                accepted: 0,
                stored: 0,
                rejected: valid.rejected,
                errors: valid.rejections,
            },
        });
    }
    let outcome = match store.write_agent_batch(&valid.batch, now, issued).await {
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
            store.write_agent_batch(&valid.batch, now, issued).await?
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
    agent: &Agent,
    raw: &[u8],
    now: DateTime<Utc>,
) -> Result<Ingested, IngestError> {
    let checked = check(cfg, agent, raw, now)?;
    write(store, cfg, checked, now).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn inflating_holds_its_share_of_the_budget_until_dropped() {
        let budget = InflateBudget::new(8 << 20);
        assert_eq!(budget.available_mib(), 9);
        let body = gzip(&vec![b' '; 3 << 20]);
        let a = decode(Some("gzip"), &body, 8 << 20, &budget).unwrap();
        assert_eq!(a.len(), 3 << 20);
        let held = 9 - budget.available_mib();
        assert!((3..=5).contains(&held), "holds {held} MiB for 3 MiB");
        let b = decode(Some("gzip"), &body, 8 << 20, &budget).unwrap();
        // A third body finds the budget spent and is told to come back.
        let third = decode(Some("gzip"), &body, 8 << 20, &budget);
        assert!(
            matches!(&third, Err(IngestError::Busy(m)) if m.contains("inflate_budget_bytes")),
            "{third:?}"
        );
        drop((a, b));
        assert_eq!(budget.available_mib(), 9);
        assert!(decode(Some("gzip"), &body, 8 << 20, &budget).is_ok());
    }

    #[test]
    fn a_lying_size_trailer_does_not_reserve_or_allocate_past_the_limit() {
        let budget = InflateBudget::new(4 << 20);
        let mut body = gzip(&vec![b'x'; 5 << 20]);
        let n = body.len();
        body[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(Some("gzip"), &body, 4 << 20, &budget).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err:?}");
        assert_eq!(budget.available_mib(), 5);
        let plain = decode(None, b"{}", 4 << 20, &budget).unwrap();
        assert_eq!(&*plain, b"{}");
        assert_eq!(budget.available_mib(), 5);
    }
}
