//! The HTTP server around the router: accepting connections up to a cap, the deadlines
//! every connection lives under, and the drain at shutdown.
//!
//! hyper serves each connection; what it does not bound, this module does:
//! - **header timeout**: a request's head must arrive within it, counted from the
//!   connection's start for the first request and from the first byte of each later one;
//! - **idle timeout**: a kept-alive connection with no request (or a response its client
//!   won't read) is closed once it passes; for a response forwarded from the gateway's
//!   upstream it starts once the body has been sent, since such a body may stream for
//!   longer than the idle timeout;
//! - **body timeout**: a body must arrive whole within it from when a handler first
//!   waits for it, or the handler's read fails with [`BodyTimedOut`] (a `408`) and the
//!   connection closes; a body forwarded to the gateway's upstream has none (API.md
//!   §Gateway: only `--upstream-body-limit` bounds it);
//! - **connection cap**: at the cap, keyward stops accepting, so further connections
//!   wait in the kernel's listen backlog until one closes, rather than being accepted
//!   and refused. A burst past the cap is served late instead of failed, keyward never
//!   spends a file descriptor on a connection it will not serve, and the timeouts above
//!   bound how long a slot can be held by a client that sends nothing.
//!
//! Shutdown: stop accepting, mark the node draining (`/readyz` answers `503`), let
//! in-flight requests finish (idle connections close at once, busy ones after their
//! response), and once the drain timeout passes close whatever is left.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use keyward_core::metric;
use keyward_http::AppState;
use keyward_http::context::PeerAddr;
use keyward_http::extract::BodyTimedOut;
use keyward_http::middleware::MAX_REQUEST_HEADERS;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::Service as _;

/// How many headers hyper reads before answering a bare `431` itself: well above
/// keyward's own limit, so that keyward's check, with its JSON and request id, is the
/// one a client meets (API.md §Errors names both). Any value above hyper's default of
/// 100 costs hyper two heap buffers per request head, of 32 bytes a header each; at
/// 256 they are 8 KiB, small enough for the allocator's fast path.
const HTTP_MAX_HEADERS: usize = 256;
const _: () = assert!(HTTP_MAX_HEADERS > MAX_REQUEST_HEADERS);

/// The limits of `keyward serve`'s connections (README "Operating it").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest wait for a request's head.
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body.
    pub body_timeout: Duration,
    /// Longest a kept-alive connection may sit without a request.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: u32,
    /// At shutdown, longest wait for in-flight requests.
    pub drain_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then drains: calls
/// `on_drain`, stops accepting, and returns once every connection has closed, closing
/// those still open when the drain timeout passes. `platform` is the state when it
/// serves a routes file: a request the gateway forwards then has no body timeout. Every
/// request carries its connection's peer (`PeerAddr`).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    platform: Option<AppState>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    on_drain: impl FnOnce(),
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    // Asks each connection to finish its request and close.
    let drain = CancellationToken::new();
    // Closes each connection where it stands.
    let cut = CancellationToken::new();
    let mut http = http1::Builder::new();
    // The header timeout is this module's (hyper's own would run from the end of the
    // previous response, and so also be the idle timeout).
    http.max_headers(HTTP_MAX_HEADERS).header_read_timeout(None);
    tokio::pin!(shutdown);
    let open = metrics::gauge!(metric::HTTP_OPEN_CONNECTIONS);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close
                    // rather than spin.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            app: app.clone(),
            platform: platform.clone(),
            http: http.clone(),
            limits,
            drain: drain.clone(),
            cut: cut.clone(),
        };
        let open = open.clone();
        open.increment(1.0);
        tokio::spawn(async move {
            connection.run(stream, peer).await;
            open.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    on_drain();
    drain.cancel();
    let all = limits.max_connections;
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        let open = limits.max_connections as usize - slots.available_permits();
        tracing::warn!(
            connections = open,
            drain_timeout_secs = limits.drain_timeout.as_secs_f64(),
            "the drain timeout passed; closing the connections still open"
        );
        cut.cancel();
        let _ = slots.acquire_many(all).await;
    }
}

/// Counts a connection cut by `timeout` (`header`, `body` or `idle`); rare, so the
/// metric is looked up each time.
fn count_timeout(timeout: &'static str) {
    metrics::counter!(metric::HTTP_CONNECTION_TIMEOUTS, "timeout" => timeout).increment(1);
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What each connection's task needs.
struct Connection {
    app: Router,
    platform: Option<AppState>,
    http: http1::Builder,
    limits: Limits,
    drain: CancellationToken,
    cut: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let exchanges = Arc::new(Exchanges::default());
        let io = TokioIo::new(Deadlines::new(
            stream,
            Arc::clone(&exchanges),
            self.limits.header_timeout,
            self.limits.idle_timeout,
        ));
        let service = Exchange {
            app: self.app,
            platform: self.platform,
            exchanges,
            body_timeout: self.limits.body_timeout,
            peer: PeerAddr(peer),
        };
        let connection = self.http.serve_connection(io, service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = self.drain.cancelled() => {
                // Closes an idle connection now, a busy one after its response.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = self.cut.cancelled() => return,
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection closed on an error");
        }
    }
}

/// How many requests of one connection have reached the router and how many have been
/// answered: shared by its service, which counts them, and its socket, whose deadline
/// depends on whether a request is in hand.
#[derive(Debug, Default)]
struct Exchanges {
    started: AtomicU64,
    answered: AtomicU64,
}

/// The hyper service of one connection: the router, with each request's body under the
/// body timeout.
#[derive(Clone)]
struct Exchange {
    app: Router,
    platform: Option<AppState>,
    exchanges: Arc<Exchanges>,
    body_timeout: Duration,
    /// The connection's peer, which every request carries (the client's address, or
    /// its proxy's).
    peer: PeerAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Exchange {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: hyper::Request<Incoming>) -> Answer {
        self.exchanges.started.fetch_add(1, Ordering::Relaxed);
        let forwarded = self
            .platform
            .as_ref()
            .is_some_and(|state| state.forwards(req.method(), req.uri().path()));
        let timeout = (!forwarded).then_some(self.body_timeout);
        let mut req: hyper::Request<TimedBody> = req.map(|body| TimedBody {
            body,
            timeout,
            timer: None,
        });
        req.extensions_mut().insert(self.peer);
        // The router is always ready (axum's contract), so it is called without
        // `poll_ready`, as `axum::serve` does.
        let answer = self.app.clone().call(req);
        Answer {
            answer,
            exchanges: Arc::clone(&self.exchanges),
            streamed: forwarded,
        }
    }
}

pin_project_lite::pin_project! {
    /// The router's future, counting its answer: once its head is ready, or for a
    /// forwarded response (`streamed`), once its body has been sent or dropped, so that
    /// the idle timeout never cuts an upstream's long response.
    struct Answer {
        #[pin]
        answer: RouteFuture<Infallible>,
        exchanges: Arc<Exchanges>,
        streamed: bool,
    }
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.answer.poll(cx));
        if *this.streamed {
            let exchanges = Arc::clone(this.exchanges);
            return Poll::Ready(Ok(response.map(|body| {
                axum::body::Body::new(AnsweredAtEnd {
                    body,
                    exchanges: Some(exchanges),
                })
            })));
        }
        this.exchanges.answered.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(response))
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request answered when it ends, fails or is
    /// dropped.
    #[project = AnsweredAtEndProj]
    struct AnsweredAtEnd {
        #[pin]
        body: axum::body::Body,
        exchanges: Option<Arc<Exchanges>>,
    }

    impl PinnedDrop for AnsweredAtEnd {
        fn drop(this: Pin<&mut Self>) {
            this.project().answered();
        }
    }
}

impl AnsweredAtEndProj<'_> {
    fn answered(&mut self) {
        if let Some(exchanges) = self.exchanges.take() {
            exchanges.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl HttpBody for AnsweredAtEnd {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            this.answered();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] once it has kept a reader waiting
    /// for the body timeout (`None`: a forwarded body, which has none). The clock starts
    /// at the first wait, so a request without a body, or whose body came with its head,
    /// never starts one.
    struct TimedBody {
        #[pin]
        body: Incoming,
        timeout: Option<Duration>,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl HttpBody for TimedBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let Some(timeout) = *this.timeout else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                count_timeout("body");
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a connection stands between requests, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request is with the router: no deadline here (its body has its own).
    Request,
    /// Answered, and nothing of the next request read yet: the idle timeout.
    Idle,
    /// Reading a request's head: the header timeout.
    Head,
}

pin_project_lite::pin_project! {
    /// A connection's socket under its deadline: while keyward waits on the socket (to
    /// read, or to write to a client that does not read), the header or idle timeout
    /// applies; when it passes, the socket fails with `TimedOut` and hyper closes it.
    #[project = DeadlinesProj]
    struct Deadlines {
        #[pin]
        io: TcpStream,
        exchanges: Arc<Exchanges>,
        header_timeout: Duration,
        idle_timeout: Duration,
        phase: Phase,
        answered: u64,
        deadline: Option<Instant>,
        timer: Pin<Box<Sleep>>,
        timer_at: Instant,
    }
}

impl Deadlines {
    fn new(
        io: TcpStream,
        exchanges: Arc<Exchanges>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        // The first request's head is due within the header timeout of the connection.
        let deadline = Instant::now() + header_timeout;
        Self {
            io,
            exchanges,
            header_timeout,
            idle_timeout,
            phase: Phase::Head,
            answered: 0,
            deadline: Some(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_at: deadline,
        }
    }
}

impl DeadlinesProj<'_> {
    /// Follows the service: a request in hand has no deadline; a new answer starts the
    /// idle timeout.
    fn follow(&mut self) {
        let started = self.exchanges.started.load(Ordering::Relaxed);
        let answered = self.exchanges.answered.load(Ordering::Relaxed);
        if started != answered {
            *self.phase = Phase::Request;
            *self.deadline = None;
        } else if answered != *self.answered || *self.phase == Phase::Request {
            *self.answered = answered;
            *self.phase = Phase::Idle;
            *self.deadline = Some(Instant::now() + *self.idle_timeout);
        }
    }

    /// Sets the timer to wake the connection by the deadline, if there is one; `Ready`
    /// if it has passed.
    ///
    /// A deadline that moved later (each answer pushes the idle deadline on) leaves the
    /// timer where it was: it fires early, once, and is set again then. Resetting it at
    /// every request would cost a timer-wheel update per request.
    fn arm(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.follow();
        let Some(deadline) = *self.deadline else {
            return Poll::Pending;
        };
        if deadline < *self.timer_at {
            self.timer.as_mut().reset(deadline);
            *self.timer_at = deadline;
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if *self.timer_at >= deadline {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
            *self.timer_at = deadline;
        }
    }

    /// The socket is not ready: `TimedOut` if the deadline has passed, else `Pending`
    /// with the timer set to wake the connection at the deadline.
    fn wait<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        ready!(self.arm(cx));
        let timeout = if *self.phase == Phase::Idle {
            "idle"
        } else {
            "header"
        };
        tracing::debug!(timeout, "closing a connection past its timeout");
        count_timeout(timeout);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the {timeout} timeout passed"),
        )))
    }
}

impl AsyncRead for Deadlines {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let before = buf.filled().len();
        match this.io.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.follow();
                    // The first bytes of the next request start its header timeout.
                    if *this.phase == Phase::Idle {
                        *this.phase = Phase::Head;
                        *this.deadline = Some(Instant::now() + *this.header_timeout);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.wait(cx),
        }
    }
}

impl AsyncWrite for Deadlines {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        match this.io.as_mut().poll_write(cx, buf) {
            Poll::Pending => this.wait(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        match this.io.as_mut().poll_write_vectored(cx, bufs) {
            Poll::Pending => this.wait(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        match this.io.as_mut().poll_flush(cx) {
            Poll::Pending => this.wait(cx),
            Poll::Ready(Ok(())) => {
                // A response is out: the idle timeout starts. hyper may already wait on
                // the socket's read side (it looks for the client closing while a request
                // runs) and not read again until woken, so the timer is set here.
                let _ = this.arm(cx);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::routing::get;
    use keyward_http::AppStateBuilder;
    use keyward_http::middleware::EnvelopeLayer;

    use super::*;

    async fn panics() -> Response {
        panic!("a test route panicked")
    }

    async fn fine() -> &'static str {
        "fine"
    }

    /// The envelope (as in `keyward_http::router`) around a route that panics, served
    /// by [`serve`] on a real socket.
    #[tokio::test]
    async fn a_panicking_handler_gets_a_json_500_and_the_server_serves_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = keyward_store_sql::SqliteStore::open(&dir.path().join("k.db"))
            .await
            .expect("store");
        let state = AppStateBuilder::new(
            Arc::new(store),
            Arc::new(keyward_workers::Meter::new(16)),
            Arc::new(keyward_ratelimit::LocalRateLimiter::new()),
        )
        .build();
        let app = Router::new()
            .route("/v1/boom", get(panics))
            .route("/fine", get(fine))
            .layer(EnvelopeLayer::new(&state))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_connections: 8,
            drain_timeout: Duration::from_secs(5),
        };
        let server = tokio::spawn(serve(
            listener,
            app,
            None,
            limits,
            async {
                let _ = stopped.await;
            },
            || {},
        ));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();

        let boom = client
            .get(format!("{base}/v1/boom"))
            .header("x-request-id", "boom-1")
            .send()
            .await
            .expect("an answer");
        let status = boom.status();
        let request_id = boom.headers().get("x-request-id").cloned();
        let body: serde_json::Value = boom.json().await.expect("JSON");
        // The same client again (its kept-alive connection), and a fresh one.
        let again = client
            .get(format!("{base}/fine"))
            .send()
            .await
            .expect("an answer");
        let fresh = reqwest::Client::new()
            .get(format!("{base}/fine"))
            .send()
            .await
            .expect("an answer");

        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "PROCESSING_ERROR");
        assert_eq!(body["request_id"], "boom-1");
        assert_eq!(
            request_id.as_ref().map(|v| v.as_bytes()),
            Some(&b"boom-1"[..])
        );
        assert_eq!(again.status(), 200);
        assert_eq!(fresh.status(), 200);
        drop((again, fresh, client));
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the drain ends")
            .expect("the server task");
    }
}
