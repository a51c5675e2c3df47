//! Our own accept loop (hyper 1, HTTP/1.1) in place of `axum::serve`, for the limits it lacks:
//! a cap on connections, a deadline for a request's headers and one for its body, a bounded
//! graceful shutdown, and the peer address on every request.
//!
//! ```text
//! TcpListener --[slot: at most max_connections]--> accept --> hyper http1 (header deadline)
//!     --> request + ConnectInfo(peer), body with a deadline --> Router (lib.rs)
//! ```

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{BoxError, Router};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

/// Limits of the HTTP layer, below the routes.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once; the next ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time a client has to send a request's headers; an idle keep-alive connection is closed
    /// after it too.
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body, from its headers on.
    pub body_timeout: Duration,
    /// Requests per second one client address may make without a valid token, on average.
    pub peer_rate_per_sec: f64,
    /// The burst above `peer_rate_per_sec`.
    pub peer_burst: f64,
    /// How long a shutdown waits for the connections in flight before it drops them.
    pub shutdown_grace: Duration,
}

impl HttpLimits {
    /// The burst allowed above the per-peer rate, in seconds of that rate.
    pub const PEER_BURST_SECONDS: f64 = 5.0;
}

impl Default for HttpLimits {
    fn default() -> Self {
        let peer_rate_per_sec = 20.0;
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            peer_rate_per_sec,
            peer_burst: peer_rate_per_sec * Self::PEER_BURST_SECONDS,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the connections in flight
/// finish for up to `limits.shutdown_grace`.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A slot is taken before accepting, so past the cap connections queue in the kernel
    // instead of each costing a task and buffers here.
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let app = TowerToHyperService::new(app);
    let body_timeout = limits.body_timeout;
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                // Only closing the semaphore fails an acquire, and nothing closes it.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(|body| TimedBody::new(body, body_timeout));
            req.extensions_mut().insert(ConnectInfo(peer));
            app.call(req)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Header timeouts, resets and clients that hang up mid-request end here.
                debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    info!(
        connections = graceful.count(),
        "shutting down: finishing the requests in flight"
    );
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_secs = limits.shutdown_grace.as_secs(),
            "connections still open after the shutdown grace period; dropping them"
        );
    }
    Ok(())
}

/// A failed accept: a client that gave up before we took its connection costs nothing; anything
/// else (out of file descriptors, most likely) gets a pause, so that the loop does not spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "accepting a connection failed; pausing");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A request body that must have arrived in full by a deadline, so that a client trickling
/// bytes cannot hold a handler (and its connection slot) for longer than that.
pub(crate) struct TimedBody<B> {
    body: B,
    deadline: Instant,
    timeout: Duration,
    /// Set on the first poll: bodies nobody reads cost no timer.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Instant::now() + timeout,
            timeout,
            timer: None,
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // The deadline first: a client that always has one more byte ready is still cut.
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Pin::new(&mut this.body)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error a [`TimedBody`] ends with; axum's body extractors answer it with 400.
#[derive(Debug)]
struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body, Bytes};

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_fails() {
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let timed = Body::new(TimedBody::new(never, Duration::from_millis(50)));
        let err = to_bytes(timed, usize::MAX).await.unwrap_err();
        assert!(err.to_string().contains("did not arrive"), "{err}");
    }

    #[tokio::test]
    async fn a_body_that_arrives_in_time_passes() {
        let timed = Body::new(TimedBody::new(Body::from("abc"), Duration::from_secs(5)));
        assert_eq!(to_bytes(timed, usize::MAX).await.unwrap(), "abc");
    }
}
