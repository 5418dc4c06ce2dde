//! One error type for every handler: each variant maps to a status code and a message a
//! client can act on; internals are logged, never sent. API handlers answer it as JSON
//! ([`ApiError`]), page handlers as an HTML page ([`PageError`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (an alert someone already took).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The client stopped sending its request.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The path exists, the method does not (the answer keeps the router's `Allow`).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The database cannot be reached: the client should retry later.
    #[error("database unavailable")]
    Unavailable,
    /// The server is at a limit it keeps on purpose (concurrent ingest or password
    /// checks): the client should retry later.
    #[error("{0}")]
    Busy(String),
    /// As [`ApiError::Busy`], with the wait the server knows: a remote-write token over
    /// its sample volume (Prometheus retries a 503, and drops a 429 unless told not to).
    #[error("{message}")]
    BusyFor { message: String, retry_after: u64 },
    /// The client is over a rate limit: retry after this many seconds.
    #[error("{message}")]
    TooMany { message: String, retry_after: u64 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The body of every error answer of the API.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = Error, example = json!({"error": "no host named \"gpu-17\""}))]
pub struct ErrorBody {
    /// What went wrong and what to do about it.
    pub error: String,
}

/// Characters of an error message sent back: a message that quotes what the client sent
/// (a 60,000-character host name in a path) does not send it all back.
const MESSAGE_MAX: usize = 2000;

fn capped(message: String) -> String {
    match crate::model::format::longer_than(&message, MESSAGE_MAX) {
        Some(head) => format!("{head}… ({} characters in all)", message.chars().count()),
        None => message,
    }
}

/// Seconds a client is asked to wait when the database is down.
pub const RETRY_AFTER_SECS: u32 = 5;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable | ApiError::Busy(_) | ApiError::BusyFor { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Text Postgres cannot store (a NUL character, SQLSTATE 22021/22P05): the client's
/// input, not a fault of the server.
fn unstorable_text(e: &sqlx::Error) -> Option<ApiError> {
    let db = e.as_database_error()?;
    matches!(db.code().as_deref(), Some("22021" | "22P05")).then(|| {
        ApiError::BadRequest(
            "a text field contains a character that cannot be stored (NUL, \\u0000); remove it"
                .into(),
        )
    })
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Unavailable(e) => {
                tracing::warn!("database unavailable: {e}");
                ApiError::Unavailable
            }
            StoreError::Database(e) => {
                unstorable_text(&e).unwrap_or_else(|| ApiError::Internal(e.into()))
            }
            e => ApiError::Internal(e.into()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::store::is_unavailable(&e) {
            tracing::warn!("database unavailable: {e}");
            ApiError::Unavailable
        } else if let Some(bad) = unstorable_text(&e) {
            bad
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            tracing::error!("internal error: {e:#}");
        }
        let mut resp = (
            status,
            Json(ErrorBody {
                error: capped(self.to_string()),
            }),
        )
            .into_response();
        match self {
            ApiError::Unavailable | ApiError::Busy(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            ApiError::TooMany { retry_after, .. } | ApiError::BusyFor { retry_after, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"rackwatch\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// An error on a page a person is looking at: the status and message of the
/// [`ApiError`] it wraps, as an HTML page with a way back.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

#[derive(askama::Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    /// The signed-in header, when the user is known: an error page keeps Admin and Log
    /// out.
    nav: Option<super::page::Nav>,
}

/// What an error page showed, kept on its response so that a layer that knows the user
/// can show it again with the signed-in header ([`with_nav`]).
#[derive(Debug, Clone)]
pub struct ErrorShown {
    title: &'static str,
    message: String,
}

/// An error page (a response of [`error_page`]) again, with `user`'s header; any other
/// response as it is.
pub fn with_nav(
    resp: Response,
    user: &crate::store::auth::User,
    headers: &axum::http::HeaderMap,
) -> Response {
    let Some(shown) = resp.extensions().get::<ErrorShown>().cloned() else {
        return resp;
    };
    let nav = super::page::Nav::new(
        user,
        super::auth::Csrf(super::auth::csrf_token(headers)),
        "",
    );
    let page = ErrorPage {
        title: shown.title,
        message: &shown.message,
        nav: Some(nav),
    };
    let mut again = super::page::render(&page);
    *again.status_mut() = resp.status();
    for name in [header::RETRY_AFTER, header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(v) = resp.headers().get(&name) {
            again.headers_mut().insert(name, v.clone());
        }
    }
    again.extensions_mut().insert(shown);
    again
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self.0 {
            tracing::error!("internal error: {err:#}");
        }
        error_page(self.0)
    }
}

/// The HTML page of an error (the caller logs what needs logging).
pub fn error_page(e: ApiError) -> Response {
    let status = e.status();
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::BAD_REQUEST => "Bad request",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::UNAUTHORIZED => "Log in needed",
        StatusCode::SERVICE_UNAVAILABLE => "Try again shortly",
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported content type",
        StatusCode::PAYLOAD_TOO_LARGE => "Too large",
        StatusCode::REQUEST_TIMEOUT => "Request timed out",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::UNPROCESSABLE_ENTITY => "Not accepted",
        _ => "Something went wrong",
    };
    let message = match &e {
        ApiError::Unavailable => {
            "The database cannot be reached right now; try again in a few seconds.".to_string()
        }
        other => capped(other.to_string()),
    };
    let page = ErrorPage {
        title,
        message: &message,
        nav: None,
    };
    let mut resp = super::page::render(&page);
    *resp.status_mut() = status;
    resp.extensions_mut().insert(ErrorShown { title, message });
    match e {
        ApiError::Unavailable | ApiError::Busy(_) => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        ApiError::TooMany { retry_after, .. } | ApiError::BusyFor { retry_after, .. } => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        _ => {}
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_and_says_how_long_it_was() {
        let long = format!("no host named {:?}", "h".repeat(65_000));
        let cut = capped(long.clone());
        assert_eq!(
            cut.chars().count(),
            MESSAGE_MAX + " (65016 characters in all)".len() + 1
        );
        assert!(
            cut.ends_with("… (65016 characters in all)"),
            "{}",
            &cut[1990..]
        );
        assert!(long.starts_with(cut.split('…').next().unwrap()));
        assert_eq!(capped("short".into()), "short");
    }
}
