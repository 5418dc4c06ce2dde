//! Query strings and form bodies, read with an error a person can act on: a malformed value
//! or an unknown parameter is a 400 that names the parameter and says what was expected,
//! as the API's JSON error ([`ApiQuery`]) or as an HTML page ([`PageQuery`], [`PageForm`]).
//!
//! Every query and form struct is `#[serde(deny_unknown_fields)]`: `?host=gpu-17` on an
//! endpoint that filters by `key` is refused with the list of parameters it takes, instead
//! of silently answering for the whole fleet. An endpoint that takes no parameters reads
//! [`NoParams`], so `?state=firing` there is refused too.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use super::error::{ApiError, PageError};

/// Reads `text` (`a=1&b=x`) into `T`; `what` names it in the error ("query string").
pub fn parse<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(text.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // serde says "field"; a URL has parameters.
        let inner = e
            .into_inner()
            .to_string()
            .replacen("unknown field", "unknown parameter", 1)
            .replacen(", there are no fields", ": this takes no parameters", 1);
        // The standard library's words for a number it could not read.
        let inner = match inner.as_str() {
            "invalid digit found in string" => "not a whole number".to_string(),
            "cannot parse integer from empty string" | "cannot parse float from empty string" => {
                "empty: give a value or leave the parameter out".to_string()
            }
            "number too large to fit in target type" => "too large".to_string(),
            "number too small to fit in target type" => "too small".to_string(),
            "invalid float literal" => "not a number".to_string(),
            "provided string was not `true` or `false`" => "must be true or false".to_string(),
            _ => inner,
        };
        // An unknown parameter's message names it already.
        if path == "." || path.is_empty() || inner.contains(&format!("`{path}`")) {
            ApiError::BadRequest(format!("{what}: {inner}"))
        } else {
            ApiError::BadRequest(format!("{what}: parameter `{path}`: {inner}"))
        }
    })
}

/// The query string of an endpoint that takes no parameters. Any parameter is refused:
/// `/api/v1/alerts?state=firing` must not answer every alert as if it had filtered them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A `limit` parameter: at least 1 (0 or less is an error that says the range), values
/// above `max` are capped, `default` when absent.
pub fn limit(value: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if n < 1 => Err(ApiError::BadRequest(format!(
            "`limit` = {n}: use 1 to {max} (larger values are capped)"
        ))),
        Some(n) => Ok(n.min(max)),
    }
}

/// The query string of an API request; a bad one answers 400 with a JSON error.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse("query string", parts.uri.query().unwrap_or_default()).map(ApiQuery)
    }
}

/// The query string of a page; a bad one answers 400 with an error page.
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(PageQuery(parse(
            "query string",
            parts.uri.query().unwrap_or_default(),
        )?))
    }
}

/// A page's form post (`application/x-www-form-urlencoded`); a bad one answers with an
/// error page (400, or 415 for another content type). The body size is bounded by the
/// router's body limit.
pub struct PageForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_form(req.headers()) {
            return Err(ApiError::UnsupportedMedia(
                "send the form as application/x-www-form-urlencoded".into(),
            )
            .into());
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            let why = format!("form: the body could not be read: {}", e.body_text());
            PageError(if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(why)
            } else {
                ApiError::BadRequest(why)
            })
        })?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::BadRequest("form: the body is not UTF-8".into()))?;
        Ok(PageForm(parse("form", text)?))
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// A page cursor: the key of the last item of an answer, as URL-safe text (base64 of its
/// JSON). Clients pass it back as it is, in the `after` parameter of the next-page link.
pub fn cursor_text<T: serde::Serialize>(key: &T) -> String {
    use base64::Engine as _;
    let json = serde_json::to_vec(key).expect("a cursor key serializes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// Reads the `after` cursor of a next-page link.
pub fn cursor<T: DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "`after` is not a cursor of this endpoint: follow the next-page link of the answer before (its `Link: <…>; rel=\"next\"` header), as it is".into(),
            )
        })
}

/// The request's own path and query with `after` set to the cursor of `last`: the next
/// page of a list answer. `pinned` are parameters set to the values this answer resolved
/// (a default window "the last 24 h" as its two times), so the pages that follow read the
/// same window however long the client takes. (The API routes are not nested, so a
/// handler's `Uri` is the whole path.)
pub fn next_page<T: serde::Serialize>(
    uri: &axum::http::Uri,
    last: &T,
    pinned: &[(&str, String)],
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if k != "after" && !pinned.iter().any(|(p, _)| *p == k) {
            q.append_pair(&k, &v);
        }
    }
    for (k, v) in pinned {
        q.append_pair(k, v);
    }
    q.append_pair("after", &cursor_text(last));
    format!("{}?{}", uri.path(), q.finish())
}

/// A time as a next-page link pins it: RFC 3339 in UTC, to the nanosecond it was read.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Adds `Link: <next>; rel="next"` to an answer that has a next page.
pub fn with_next(
    mut res: axum::response::Response,
    next: Option<&str>,
) -> axum::response::Response {
    if let Some(v) =
        next.and_then(|n| axum::http::HeaderValue::from_str(&format!("<{n}>; rel=\"next\"")).ok())
    {
        res.headers_mut().insert(axum::http::header::LINK, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Q {
        limit: Option<i64>,
        host: Option<String>,
    }

    fn err(text: &str) -> String {
        parse::<Q>("query string", text).unwrap_err().to_string()
    }

    #[test]
    fn names_the_parameter_and_what_it_takes() {
        let q: Q = parse("query string", "limit=5&host=a%20b").unwrap();
        assert_eq!((q.limit, q.host.as_deref()), (Some(5), Some("a b")));
        assert_eq!(
            err("limit=abc"),
            "query string: parameter `limit`: not a whole number"
        );
        assert_eq!(
            err("limit=1.5"),
            "query string: parameter `limit`: not a whole number"
        );
        assert_eq!(
            err("limit="),
            "query string: parameter `limit`: empty: give a value or leave the parameter out"
        );
        assert_eq!(
            err("limit=99999999999999999999"),
            "query string: parameter `limit`: too large"
        );
        assert_eq!(
            err("key=gpu-17"),
            "query string: unknown parameter `key`, expected `limit` or `host`"
        );
        assert!(parse::<Q>("query string", "").is_ok());
    }

    #[test]
    fn an_endpoint_without_parameters_refuses_any() {
        assert!(parse::<NoParams>("query string", "").is_ok());
        assert_eq!(
            parse::<NoParams>("query string", "state=firing")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("query string: unknown parameter `state`: this takes no parameters")
        );
    }

    #[test]
    fn a_limit_below_one_is_refused_and_a_large_one_capped() {
        assert_eq!(limit(None, 1000, 10_000).ok(), Some(1000));
        assert_eq!(limit(Some(5), 1000, 10_000).ok(), Some(5));
        assert_eq!(limit(Some(99_999_999), 1000, 10_000).ok(), Some(10_000));
        assert_eq!(
            limit(Some(0), 1000, 10_000)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("`limit` = 0: use 1 to 10000 (larger values are capped)")
        );
        assert!(limit(Some(-1), 1000, 10_000).is_err());
    }
}
