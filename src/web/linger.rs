//! Lingering on refused bodies: the server answers many requests without reading their
//! body (a missing or revoked token, a wrong content type, a rate limit), by design, so
//! an unauthenticated client cannot make it buffer anything. If the connection were then
//! closed with the body still arriving, the client would see a broken pipe or a reset
//! instead of the answer, and an agent whose token was revoked would log a network error
//! and retry forever instead of saying why. So a small unread body (at most
//! [`LINGER_BYTES`], within [`LINGER_TIME`]) is read and discarded before the answer
//! goes out, as nginx's lingering close does; nothing is kept, and the connection stays
//! usable for the next request. A larger one is left unread and its connection closes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};

/// The most of an unread body discarded before answering.
pub const LINGER_BYTES: u64 = 1 << 20;
/// The longest the answer waits for that.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// A request body that, when dropped unfinished, leaves what is left of it in `rest`.
struct Tracked {
    inner: Option<Body>,
    finished: bool,
    rest: Arc<Mutex<Option<Body>>>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(b) = self.inner.take() {
            if !b.is_end_stream() {
                if let Ok(mut rest) = self.rest.lock() {
                    *rest = Some(b);
                }
            }
        }
    }
}

/// Middleware: see the module's documentation.
pub async fn linger(req: Request, next: Next) -> Response {
    let small = req.body().size_hint().upper().unwrap_or(0) <= LINGER_BYTES
        || req.body().size_hint().upper().is_none();
    // A client that waits for `100 Continue` has not sent its body; reading it would ask
    // for it.
    let waits = req.headers().contains_key(header::EXPECT);
    if req.body().is_end_stream() || !small || waits {
        return next.run(req).await;
    }
    let rest = Arc::new(Mutex::new(None));
    let req = req.map(|b| {
        Body::new(Tracked {
            inner: Some(b),
            finished: false,
            rest: rest.clone(),
        })
    });
    let response = next.run(req).await;
    let unread = rest.lock().ok().and_then(|mut r| r.take());
    if let Some(body) = unread {
        let _ = tokio::time::timeout(LINGER_TIME, discard(body, LINGER_BYTES)).await;
    }
    response
}

/// Read and drop up to `limit` bytes of `body`.
async fn discard(body: Body, limit: u64) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(d) = frame.data_ref() {
            seen += d.len() as u64;
            if seen > limit {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn an_unread_body_is_read_before_the_answer_and_a_read_one_is_left_alone() {
        let app = axum::Router::new()
            .route("/refuse", post(|| async { "no" }))
            .route("/read", post(|b: Bytes| async move { b.len().to_string() }))
            .layer(axum::middleware::from_fn(linger));
        // The refusing handler never touches the body; the layer drains it, and the
        // channel body reports each chunk taken.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let feeder = {
            let taken = taken.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    if tx.send(Ok(Bytes::from(vec![b'x'; 1000]))).await.is_err() {
                        return;
                    }
                    taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let body = Body::new(Channel(rx));
        let r = app
            .clone()
            .oneshot(Request::post("/refuse").body(body).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        feeder.await.unwrap();
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 8);

        let r = app
            .oneshot(
                Request::post("/read")
                    .body(Body::from(vec![b'y'; 5000]))
                    .unwrap(),
            )
            .await
            .unwrap();
        let text = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&text[..], b"5000");
    }

    /// A body fed chunk by chunk through a channel.
    struct Channel(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

    impl http_body::Body for Channel {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
        }
    }
}
