//! Request bodies: read after the caller is authorized, capped at `server.max_body_bytes`
//! (413), and for JSON routes checked for their content type (415), their top-level shape
//! and their fields (400, naming the field). And large answers, sent a few at a time.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::model::validate::quoted;

/// Read a request body up to `server.max_body_bytes`: over it is 413, a body that stops
/// arriving for `server.body_timeout_secs` is 408.
pub async fn read(st: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let max = st.cfg.server.max_body_bytes;
    axum::body::to_bytes(body, max).await.map_err(|e| {
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
    })
}

/// JSON bodies only; anything else is refused before the body is read.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
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
            quoted(ct)
        )))
    }
}

/// The JSON value a route takes at the top of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Array,
}

/// A JSON body of `shape` decoded into `T`. `expected` describes the body in the error
/// (`{"pending_gpus": N, …}`); a field that does not decode is named by its path
/// (`[3].energy_kwh`). Serde alone would also take a struct written as an array of its
/// fields, which the API documents nowhere, so the shape is checked first.
pub async fn json<T: DeserializeOwned>(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    shape: Shape,
    expected: &str,
) -> Result<T, ApiError> {
    require_json(headers)?;
    identity_only(headers)?;
    let bytes = read(st, body).await?;
    decode(&bytes, shape, expected)
}

/// These bodies are small and taken as sent: a compressed one would otherwise be judged
/// "not JSON" (agents' batches, which are large, take gzip at `/api/v1/ingest`).
fn identity_only(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim())
    {
        None => Ok(()),
        Some(e) if e.is_empty() || e.eq_ignore_ascii_case("identity") => Ok(()),
        Some(e) => Err(ApiError::UnsupportedMedia(format!(
            "Content-Encoding {} is not taken here: send the body uncompressed",
            quoted(e)
        ))),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], shape: Shape, expected: &str) -> Result<T, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("expected {expected}: {why}"));
    // The shape from the first character: parsing the whole body into a generic value
    // first would hold tens of bytes per element (an 8 MiB body of `[[0],[0],…]` took
    // 360 MB) before the route's own type refused it at its first field.
    let kind = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Shape::Object,
        Some(b'[') => Shape::Array,
        // A scalar (or not JSON): its value is as large as its text at most.
        _ => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
            return Err(bad(format!("the body is {}", json_kind(&value))));
        }
    };
    if kind != shape {
        let what = match kind {
            Shape::Object => "an object",
            Shape::Array => "an array",
        };
        return Err(bad(format!("the body is {what}")));
    }
    // Decoded from the text into the route's type: a field given twice is refused
    // ("duplicate field"), where a parsed value would keep the last one silently.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let not_json = |e: &serde_json::Error| {
        matches!(
            e.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        )
    };
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if not_json(e.inner()) {
            bad(format!("not JSON ({})", e.into_inner()))
        } else {
            bad(field_error(e))
        }
    })?;
    // Nothing may follow the value.
    de.end().map_err(|e| bad(format!("not JSON ({e})")))?;
    Ok(value)
}

/// A decoding error with the path of the field it is about (`[3].energy_kwh: invalid
/// type …`), or without one when it is about the whole value.
pub fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    // The path says where; the text position serde adds when decoding from text would
    // only repeat it.
    let why = crate::model::validate::json_reason(&e.into_inner());
    if path == "." {
        why
    } else {
        format!("{path}: {why}")
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Large JSON answers (a host's raw samples) built at once: at most this many, each held
/// from building until its last byte is sent (or the client stops reading and
/// `server.write_timeout_secs` closes the connection).
pub const BULK_ANSWERS: usize = 2;
/// How long a large answer waits for its turn before it is 503.
const BULK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A turn to build and send a large answer; 503 with Retry-After when none comes free in
/// [`BULK_WAIT`].
pub async fn bulk_turn(st: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    tokio::time::timeout(BULK_WAIT, st.bulk_answers.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::Busy(format!(
                "{BULK_ANSWERS} large answers are being sent; retry shortly"
            ))
        })
}

/// `value` as a JSON answer that keeps `turn` until its last byte is handed to the
/// connection. It goes out in 64 KiB pieces, and the connection takes the next one only
/// when it has sent the last (its write buffer is 64 KiB), so the turn is held while the
/// answer is in memory.
pub fn json_with_turn<T: serde::Serialize>(
    value: &T,
    turn: tokio::sync::OwnedSemaphorePermit,
) -> Result<axum::response::Response, ApiError> {
    let bytes = axum::body::Bytes::from(
        serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?,
    );
    let mut resp = axum::response::Response::new(Body::new(Pieces {
        rest: bytes,
        _turn: turn,
    }));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A response body sent in pieces that holds a permit until it is dropped.
struct Pieces {
    rest: axum::body::Bytes,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for Pieces {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.rest.len().min(64 * 1024);
        let piece = self.rest.split_to(n);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Report {
        n: f64,
        #[serde(default)]
        source: String,
    }

    #[test]
    fn compressed_small_bodies_are_refused_by_their_encoding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_ENCODING, v.parse().unwrap());
            m
        };
        assert!(identity_only(&HeaderMap::new()).is_ok());
        assert!(identity_only(&h("identity")).is_ok());
        let e = identity_only(&h("gzip")).unwrap_err();
        assert!(matches!(&e, ApiError::UnsupportedMedia(_)));
        assert_eq!(
            e.to_string(),
            "Content-Encoding \"gzip\" is not taken here: send the body uncompressed"
        );
    }

    #[test]
    fn a_body_gets_its_shape_then_its_fields_checked_and_the_error_names_the_field() {
        let ok: Report = decode(br#"{"n": 3}"#, Shape::Object, "{n}").unwrap();
        assert_eq!(
            ok,
            Report {
                n: 3.0,
                source: String::new()
            }
        );
        let list: Vec<Report> = decode(br#"[{"n": 1}]"#, Shape::Array, "[{n}]").unwrap();
        assert_eq!(list.len(), 1);

        let err = |b: &[u8], shape| decode::<Report>(b, shape, "{n}").unwrap_err().to_string();
        // Serde would read this array as the struct's fields in order.
        assert_eq!(
            err(br#"[3, "slurm"]"#, Shape::Object),
            "expected {n}: the body is an array"
        );
        assert_eq!(
            err(b"null", Shape::Object),
            "expected {n}: the body is null"
        );
        assert!(err(b"{", Shape::Object).starts_with("expected {n}: not JSON ("));
        assert!(err(b"nul", Shape::Object).starts_with("expected {n}: not JSON ("));
        assert!(err(br#"{"n": 3} x"#, Shape::Object).starts_with("expected {n}: not JSON ("));
        assert!(err(br#"{"n": 3, "#, Shape::Object).starts_with("expected {n}: not JSON ("));
        assert_eq!(
            err(br#"{"n": "3"}"#, Shape::Object),
            "expected {n}: n: invalid type: string \"3\", expected a number"
        );
        assert!(err(br#"{"n": 3, "x": 1}"#, Shape::Object).contains("unknown field `x`"));
        assert!(err(br#"{}"#, Shape::Object).ends_with("missing field `n`"));
        assert_eq!(
            err(br#"{"n": 1, "n": 2}"#, Shape::Object),
            "expected {n}: duplicate field `n`"
        );
        let e = decode::<Vec<Report>>(br#"[{"n": 1}, {"n": true}]"#, Shape::Array, "[{n}]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "expected [{n}]: [1].n: invalid type: boolean `true`, expected a number"
        );
    }
}
