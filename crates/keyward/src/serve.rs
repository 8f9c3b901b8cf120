//! `keyward serve`: wiring, background tasks and graceful shutdown.
//!
//! Shutdown order (SIGTERM or Ctrl-C): stop accepting and answer `/readyz` with `503` →
//! drain in-flight requests, for at most `--drain-timeout` (`connections`) → cancel the
//! workers → final metering flush → close the database.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyward_http::{AppStateBuilder, router};
use keyward_ratelimit::{LocalRateLimiter, RateLimiter, RedisRateLimiter, RedisRateLimiterOptions};
use keyward_store::Store;
use keyward_store_sql::KeyChange;
use keyward_workers::credits::{ExhaustionReports, run_exhaustion_recorder};
use keyward_workers::webhooks::{self, DispatchOptions};
use keyward_workers::{Meter, run_meter, run_retention};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::connections::{self, Limits};
use crate::{Backend, Open, bootstrap, open_store_with};

/// How often metering is flushed. API.md: `last_used` may lag by at most one second:
/// a flushed batch also moves `last_used` forward in this node's cached listings, and
/// with several nodes (PostgreSQL) in the others' too, through the uses feed.
const METER_INTERVAL: Duration = Duration::from_millis(250);
/// How often old history is pruned.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// How often keys are scanned for `key.expiring` and `key.expired` events.
const EXPIRY_SCAN_INTERVAL: Duration = Duration::from_secs(60);

/// The log filter: `RUST_LOG`, else `info`; sqlx's own lines (PostgreSQL's notices,
/// such as `relation "_sqlx_migrations" already exists, skipping` on every start) from
/// `warn` up unless `RUST_LOG` names sqlx.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    const DEFAULT: &str = "info,sqlx=warn";
    let directives = match rust_log.map(str::trim) {
        None | Some("") => DEFAULT.to_owned(),
        Some(given) if given.contains("sqlx") => given.to_owned(),
        Some(given) => format!("{given},sqlx=warn"),
    };
    tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT))
}

/// Colour only for a person: standard error is a terminal and `NO_COLOR` is unset or
/// empty (no-color.org).
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: &str) {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    // A second init (tests calling serve twice in one process) keeps the first one.
    let _ = if format == "json" {
        crate::set_json_logs();
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Panics are logged like everything else (one JSON line in JSON mode) rather than
    // printed by the default hook. A handler's panic is also logged, with its request id,
    // as that request's `500`.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(
            panic.message = info.payload_as_str().unwrap_or("a panic without a message"),
            panic.location = %info.location().map_or_else(|| "-".to_owned(), ToString::to_string),
            "a thread panicked"
        );
    }));
}

/// The routes of `--routes` and the upstream of `--upstream`, if given.
fn gateway(args: &ServeArgs) -> anyhow::Result<Option<keyward_http::gateway::Gateway>> {
    let Some(path) = &args.routes else {
        return Ok(None);
    };
    let routes = keyward_http::gateway::RouteTable::load(path).map_err(|e| {
        anyhow::anyhow!(
            "the routes file {} (set by --routes or KEYWARD_ROUTES), {e}",
            path.display()
        )
    })?;
    let upstream = match &args.upstream {
        None => None,
        Some(url) => Some(
            keyward_http::gateway::Upstream::new(
                url,
                args.upstream_timeout,
                args.upstream_body_limit
                    .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
            )
            .map_err(|e| anyhow::anyhow!("{e} (set by --upstream or KEYWARD_UPSTREAM)"))?,
        ),
    };
    tracing::info!(
        routes = routes.routes().len(),
        upstream = args.upstream.as_deref().unwrap_or("-"),
        "serving the platform's routes"
    );
    Ok(Some(keyward_http::gateway::Gateway { routes, upstream }))
}

/// GitHub secret scanning's public keys of `--github-scanning-keys`, if given.
fn github_keys(args: &ServeArgs) -> anyhow::Result<Option<keyward_core::leak::GithubKeys>> {
    let Some(path) = &args.github_scanning_keys else {
        return Ok(None);
    };
    let named = || {
        format!(
            "the GitHub secret scanning keys file {} (set by --github-scanning-keys or KEYWARD_GITHUB_SCANNING_KEYS)",
            path.display()
        )
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", named()))?;
    let keys = keyward_core::leak::GithubKeys::parse(&text)
        .map_err(|e| anyhow::anyhow!("{} {e}", named()))?;
    tracing::info!(
        keys = keys.len(),
        "serving GitHub secret scanning on /secret-scanning/github"
    );
    Ok(Some(keys))
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let metrics = crate::metrics::install()?;
    // Read before anything else starts: a routes file with a fault stops `serve` with its
    // line, having touched nothing.
    let gateway = gateway(&args)?;
    let github_keys = github_keys(&args)?;

    let backend =
        open_store_with(&args.database.database_url, Open::serve(args.no_migrate)).await?;
    tracing::info!(
        database = %args.database.database_url.redacted(),
        listen = %args.listen,
        key_prefix = %args.keys.prefix,
        history_retention_days = args.history_retention_days,
        shared_rate_limits = args.redis_url.is_some(),
        "starting keyward"
    );
    let dyn_store: Arc<dyn Store> = backend.store();

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set by --listen or KEYWARD_LISTEN)",
                args.listen
            )
        })?;
    let local = listener.local_addr().context("reading the bound address")?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (set by --metrics-listen or KEYWARD_METRICS_LISTEN)")
        })?),
        None => None,
    };

    let bootstrapped = if args.no_bootstrap {
        None
    } else {
        bootstrap(dyn_store.as_ref(), &args.keys.prefix).await?
    };
    if let Some(created) = bootstrapped {
        // Printed once, on stderr, and never logged.
        if crate::json_logs() {
            eprintln!(
                "{}",
                serde_json::json!({
                    "timestamp": keyward_core::timefmt::format(time::OffsetDateTime::now_utc()),
                    "level": "WARN",
                    "fields": {
                        "message": "first start: created the account `default` and its first API key, shown only this once; store it now",
                        "account_id": created.account.account_id.as_str(),
                        "api_key": created.secret.expose(),
                    },
                    "target": "keyward::bootstrap",
                })
            );
        } else {
            eprintln!(
                "\nkeyward: first start, so it created the account `default` ({}) and its first API key.\n\
             The key is shown only this once; store it now:\n\n    {}\n\nTry it:\n\n    curl -s http://{local}/v1/api-keys -H \"x-api-key: {}\"\n",
                created.account.account_id,
                created.secret.expose(),
                created.secret.expose(),
            );
        }
    }

    let meter = Arc::new(Meter::new(args.meter_capacity));
    // Month windows start from the usage counters the meter writes.
    let stored_usage = Arc::new(keyward_http::usage::StoredUsage(dyn_store.clone()));
    let limiter: Arc<dyn RateLimiter> = match &args.redis_url {
        // Rate limits held across every node; if Redis is down, each node falls back to
        // its own counts (fail open) and says so once in the log.
        Some(url) => Arc::new(
            RedisRateLimiter::connect_with_options(url, redis_options(&args)?)
                .await
                .context(
                    "invalid Redis URL (set by --redis-url or KEYWARD_REDIS_URL) \
                     or CA certificates (set by --redis-ca-cert or KEYWARD_REDIS_CA_CERT)",
                )?
                .with_usage(stored_usage),
        ),
        None => Arc::new(LocalRateLimiter::with_usage(stored_usage)),
    };
    let render = crate::metrics::render(metrics.clone(), meter.clone());
    let (exhaustions, exhaustion_reports) = ExhaustionReports::channel();
    let mut state = AppStateBuilder::new(dyn_store.clone(), meter.clone(), limiter.clone())
        .prefix(args.keys.prefix.clone())
        .body_limit(args.body_limit as usize)
        .key_cache_capacity(args.key_cache_capacity)
        .access_log(args.access_log)
        .trusted_proxies(args.trusted_proxies.clone())
        .clock_offset(time::Duration::seconds(args.test_clock_offset))
        .webhooks_allow_private(args.webhooks_allow_private)
        .on_leak(args.on_leak)
        .exhaustions(exhaustions);
    // With a private metrics address, the public one answers `/metrics` with `404`.
    if metrics_listener.is_none() {
        state = state.metrics(render.clone());
    }
    if let Some(gateway) = gateway {
        state = state.gateway(gateway);
    }
    if let Some(keys) = github_keys {
        state = state.github_keys(keys);
    }
    let state = state.build();

    let cancel = CancellationToken::new();
    let follower_task = match &backend {
        // Other nodes change keys too: follow their changes so that a revoke anywhere is
        // enforced here within the notification's delay (milliseconds), and bypass the
        // cache whenever the feed is down.
        Backend::Postgres(pg) => {
            let caches = state.clone();
            caches.set_caches_coherent(false);
            let pg = pg.clone();
            let stop = cancel.clone();
            Some(tokio::spawn(async move {
                pg.follow_key_changes(
                    move |change| match change {
                        KeyChange::Changed {
                            account_id,
                            digests,
                        } => {
                            caches.forget_changed_key(account_id.as_ref(), &digests);
                        }
                        KeyChange::Used(uses) => caches.note_uses(&uses),
                        KeyChange::Lost => caches.set_caches_coherent(false),
                        KeyChange::Resynced => caches.set_caches_coherent(true),
                    },
                    stop.cancelled_owned(),
                )
                .await;
            }))
        }
        Backend::Sqlite(_) => None,
    };
    let meter_task = tokio::spawn(run_meter(
        meter.clone(),
        dyn_store.clone(),
        METER_INTERVAL,
        cancel.clone(),
        {
            let state = state.clone();
            move |batch| state.note_uses(&batch.last_used)
        },
    ));
    let retention_task = tokio::spawn(run_retention(
        dyn_store.clone(),
        Duration::from_secs(u64::from(args.history_retention_days) * 86_400),
        RETENTION_INTERVAL,
        cancel.clone(),
    ));
    let (dispatch, expiry_every) = if args.webhooks_fast_retries {
        (
            DispatchOptions::fast(args.webhooks_allow_private),
            Duration::from_secs(1),
        )
    } else {
        (
            DispatchOptions::standard(args.webhooks_allow_private),
            EXPIRY_SCAN_INTERVAL,
        )
    };
    let webhook_client = webhooks::client(&dispatch).context("building the webhook client")?;
    let dispatcher_task = tokio::spawn(webhooks::run_dispatcher(
        dyn_store.clone(),
        webhook_client,
        dispatch,
        backend.deliveries_enqueued(),
        cancel.clone(),
    ));
    let exhaustion_task = tokio::spawn(run_exhaustion_recorder(
        dyn_store.clone(),
        exhaustion_reports,
        cancel.clone(),
    ));
    let expiry_task = tokio::spawn(webhooks::run_expiry_scan(
        dyn_store.clone(),
        expiry_every,
        cancel.clone(),
    ));
    let upkeep_task = tokio::spawn({
        let cancel = cancel.clone();
        let limiter = limiter.clone();
        async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                metrics.run_upkeep();
                limiter.forget_idle(time::OffsetDateTime::now_utc());
            }
        }
    });

    let metrics_task = match metrics_listener {
        Some(listener) => {
            let address = listener
                .local_addr()
                .context("reading the bound metrics address")?;
            tracing::info!(address = %address, "serving /metrics");
            let private = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let render = render.clone();
                        async move { keyward_http::handlers::ops::metrics_text(render()) }
                    }),
                )
                .fallback(|| async { keyward_http::error::ApiError::no_such_route() })
                .layer(keyward_http::middleware::EnvelopeLayer::new(&state));
            let stop = cancel.clone();
            Some(tokio::spawn(async move {
                let served = axum::serve(listener, private)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            }))
        }
        None => None,
    };

    let shutdown = shutdown_signal();
    // Tests and operators read this line to find the port when listening on :0 (in
    // JSON mode, the `listening` line's `address`).
    if !crate::json_logs() {
        eprintln!("keyward listening on http://{local}");
    }
    tracing::info!(address = %local, "listening");
    let limits = Limits {
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        drain_timeout: args.drain_timeout,
    };
    let platform = state.has_routes().then(|| state.clone());
    connections::serve(
        listener,
        router(state.clone()),
        platform,
        limits,
        shutdown,
        || {
            state.start_draining();
        },
    )
    .await;

    tracing::info!("draining done; flushing metering");
    cancel.cancel();
    let tasks = [
        ("metering", Some(meter_task)),
        ("retention", Some(retention_task)),
        ("upkeep", Some(upkeep_task)),
        ("webhook dispatcher", Some(dispatcher_task)),
        ("key expiry scan", Some(expiry_task)),
        ("credits.exhausted recorder", Some(exhaustion_task)),
        ("key changes", follower_task),
        ("metrics listener", metrics_task),
    ];
    for (name, task) in tasks.into_iter().filter_map(|(n, t)| t.map(|t| (n, t))) {
        if let Err(e) = task.await {
            tracing::error!(task = name, error = %e, "background task ended abnormally");
        }
    }
    if meter.pending_rows() > 0 {
        tracing::warn!(rows = meter.pending_rows(), "metering rows left unflushed");
    }
    backend.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// How the Redis limiter connects: the default options, with the CA certificates of
/// `--redis-ca-cert` when given.
fn redis_options(args: &ServeArgs) -> anyhow::Result<RedisRateLimiterOptions> {
    let ca_certificates = match &args.redis_ca_cert {
        Some(path) => Some(std::fs::read(path).with_context(|| {
            format!(
                "cannot read the Redis CA certificates at {} (set by --redis-ca-cert or KEYWARD_REDIS_CA_CERT)",
                path.display()
            )
        })?),
        None => None,
    };
    Ok(RedisRateLimiterOptions {
        ca_certificates,
        ..RedisRateLimiterOptions::default()
    })
}

/// Completes at the first SIGTERM or Ctrl-C (SIGINT). The handlers are installed when
/// this is called, not when it is first awaited, so that a signal sent as soon as the
/// "listening" line appears is already keyward's to handle.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::error!(error = %e, signal = name, "cannot listen for the signal");
            None
        }
    };
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = received(terminate.as_mut()) => {},
            () = received(interrupt.as_mut()) => {},
        }
        tracing::info!("shutdown signal received; draining in-flight requests");
    }
}

/// The next delivery of `signal`; never, without one.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn sqlx_logs_from_warn_up_unless_rust_log_names_sqlx() {
        let shown = |rust_log: Option<&str>| log_filter(rust_log).to_string();
        for default in [None, Some(""), Some("  ")] {
            let filter = shown(default);
            assert!(
                filter.contains("sqlx=warn") && filter.contains("info"),
                "{filter}"
            );
        }
        let debug = shown(Some("debug"));
        assert!(
            debug.contains("sqlx=warn") && debug.contains("debug"),
            "{debug}"
        );
        assert!(!shown(Some("info,sqlx=debug")).contains("sqlx=warn"));
    }
}
