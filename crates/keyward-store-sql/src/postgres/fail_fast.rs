//! Failing fast when PostgreSQL refuses connections.
//!
//! sqlx's pool takes a refused connection for a server still starting, and retries it
//! with backoff until the acquire timeout: during an outage, every request would wait
//! the whole timeout (5 s) for its 503. So while a caller waits for a connection, a probe
//! opens a bare TCP (or Unix socket) connection to the server beside the pool: if the
//! server refuses it, the wait ends at once with that error, which the store reports as
//! `Unavailable`. A server that does not answer at all (a silent network) makes the probe
//! time out, and the caller waits for the pool's own timeout, as before.
//!
//! The probe only runs while a caller is waiting: the first one at once when the pool is
//! about to open a connection (none idle, room for one), then every [`PROBE_EVERY`] while
//! the wait lasts, so idle connections that turn out dead are caught too. Answers are shared for
//! [`PROBE_EVERY`] between callers, so an outage costs one probe per interval, not one per
//! request. PostgreSQL logs nothing for a connection closed before its startup message.

use std::future::Future;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::future::BoxFuture;
use futures_core::stream::{BoxStream, Stream};
use sqlx::postgres::{PgConnectOptions, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, Postgres, SqlStr};

/// How often a waiting caller probes again, and how long a probe's answer is shared.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a probe waits for the server to accept or refuse.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the server listens, and the last probe's answer.
#[derive(Debug)]
pub(crate) struct Probe {
    target: Target,
    last: Mutex<Option<(Instant, Answer)>>,
}

#[derive(Debug, Clone)]
enum Target {
    Tcp(String, u16),
    Unix(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Refused,
    NotRefused,
}

impl Probe {
    /// The probe of the server `options` connect to.
    pub(crate) fn new(options: &PgConnectOptions) -> Arc<Self> {
        let port = options.get_port();
        let target = match options.get_socket() {
            Some(dir) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            None => Target::Tcp(options.get_host().to_owned(), port),
        };
        Arc::new(Self {
            target,
            last: Mutex::new(None),
        })
    }

    /// Whether the server refuses connections now (or did within [`PROBE_EVERY`]).
    async fn refused(&self) -> bool {
        let recent = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, answer)) = recent
            && at.elapsed() < PROBE_EVERY
        {
            return answer == Answer::Refused;
        }
        let refused = |e: std::io::Error| {
            matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound)
        };
        let answer = match &self.target {
            Target::Tcp(host, port) => tokio::time::timeout(
                PROBE_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map(|r| r.err().is_some_and(refused)),
            Target::Unix(path) => {
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path))
                    .await
                    .map(|r| r.err().is_some_and(refused))
            }
        };
        // A probe that timed out says nothing: the network is silent, the pool's own
        // timeout decides.
        let answer = if answer == Ok(true) {
            Answer::Refused
        } else {
            Answer::NotRefused
        };
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), answer));
        answer == Answer::Refused
    }

    /// Resolves, with the error to report, once the server refuses connections while a
    /// caller of `pool` waits; never otherwise.
    fn watch(self: &Arc<Self>, pool: &PgPool) -> BoxFuture<'static, sqlx::Error> {
        let probe = self.clone();
        // Read now: whether this caller is about to open a connection (none idle, room for
        // one). Otherwise it waits for one in use, and probes only if that lasts.
        let must_connect =
            pool.num_idle() == 0 && pool.size() < pool.options().get_max_connections();
        Box::pin(async move {
            if !must_connect {
                tokio::time::sleep(PROBE_EVERY).await;
            }
            loop {
                if probe.refused().await {
                    return sqlx::Error::Io(std::io::Error::new(
                        ErrorKind::ConnectionRefused,
                        "the PostgreSQL server refuses connections",
                    ));
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        })
    }

    /// `work` (which waits for one of `pool`'s connections), ended early if the server
    /// refuses connections meanwhile.
    pub(crate) async fn race<T>(
        self: &Arc<Self>,
        pool: &PgPool,
        work: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let refused = self.watch(pool);
        tokio::select! {
            biased;
            done = work => done,
            e = refused => Err(e),
        }
    }
}

/// The pool as an executor whose statements fail fast when the server refuses
/// connections ([`Probe`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailFast<'p> {
    pub(crate) pool: &'p PgPool,
    pub(crate) probe: &'p Arc<Probe>,
}

impl<'p> Executor<'p> for FailFast<'p> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(Racing {
            refused: Some(self.probe.watch(self.pool)),
            inner: self.pool.fetch_many(query),
            done: false,
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let work = self.pool.fetch_optional(query);
        let (probe, pool) = (self.probe.clone(), self.pool.clone());
        Box::pin(async move { probe.race(&pool, work).await })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let work = self.pool.prepare_with(sql, parameters);
        let (probe, pool) = (self.probe.clone(), self.pool.clone());
        Box::pin(async move { probe.race(&pool, work).await })
    }
}

/// A statement's results, ended with the probe's error if the server refuses
/// connections before the first result (the connection) arrives.
struct Racing<'e, T> {
    refused: Option<BoxFuture<'static, sqlx::Error>>,
    inner: BoxStream<'e, Result<T, sqlx::Error>>,
    done: bool,
}

impl<T> Stream for Racing<'_, T> {
    type Item = Result<T, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = self.inner.as_mut().poll_next(cx);
        if next.is_ready() {
            // Results flow: the statement has its connection.
            self.refused = None;
            return next;
        }
        if let Some(refused) = self.refused.as_mut()
            && let Poll::Ready(e) = refused.as_mut().poll(cx)
        {
            self.done = true;
            self.refused = None;
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Pending
    }
}
