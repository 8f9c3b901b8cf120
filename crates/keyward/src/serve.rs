//! `keyward serve`: wiring, background tasks and graceful shutdown.
//!
//! Shutdown order (SIGTERM or Ctrl-C): stop accepting → drain in-flight requests →
//! cancel the workers → final metering flush → close the database.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keyward_http::{AppStateBuilder, router};
use keyward_ratelimit_redis::RedisRateLimiter;
use keyward_store::Store;
use keyward_store_postgres::KeyChange;
use keyward_workers::{LocalRateLimiter, Meter, RateLimiter, run_meter, run_retention};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::{Backend, bootstrap, open_store};

/// How often metering is flushed. API.md: `last_used` may lag by at most one second:
/// a flushed batch also moves `last_used` forward in this node's cached listings, and
/// with several nodes (PostgreSQL) in the others' too, through the uses feed.
const METER_INTERVAL: Duration = Duration::from_millis(250);
/// How often old history is pruned.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling serve twice in one process) keeps the first one.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])
        .context("configuring metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;

    let backend = open_store(&args.database.database_url).await?;
    tracing::info!(
        database = %args.database.database_url.redacted(),
        listen = %args.listen,
        key_prefix = %args.key_prefix,
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

    let bootstrapped = if args.no_bootstrap {
        None
    } else {
        bootstrap(dyn_store.as_ref(), &args.key_prefix).await?
    };
    if let Some(created) = bootstrapped {
        // Printed once, on stderr, and never logged.
        eprintln!(
            "\nkeyward: first start, so it created the account `default` ({}) and its first API key.\n\
             The key is shown only this once; store it now:\n\n    {}\n\nTry it:\n\n    curl -s http://{local}/v1/api-keys -H \"x-api-key: {}\"\n",
            created.account.account_id,
            created.secret.expose(),
            created.secret.expose(),
        );
    }

    let meter = Arc::new(Meter::new(args.meter_capacity));
    let limiter: Arc<dyn RateLimiter> = match &args.redis_url {
        // Rate limits held across every node; if Redis is down, each node falls back to
        // its own counts (fail open) and says so once in the log.
        Some(url) => Arc::new(
            RedisRateLimiter::connect(url)
                .await
                .context("invalid Redis URL (set by --redis-url or KEYWARD_REDIS_URL)")?,
        ),
        None => Arc::new(LocalRateLimiter::new()),
    };
    let render = {
        let handle = metrics.clone();
        let meter = meter.clone();
        Arc::new(move || {
            meter.publish_depth();
            handle.render()
        }) as keyward_http::MetricsRender
    };
    let state = AppStateBuilder::new(dyn_store.clone(), meter.clone(), limiter.clone())
        .prefix(args.key_prefix.clone())
        .body_limit(args.body_limit as usize)
        .key_cache_capacity(args.key_cache_capacity)
        .metrics(render)
        .build();

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

    // Tests and operators read this line to find the port when listening on :0.
    eprintln!("keyward listening on http://{local}");
    tracing::info!(address = %local, "listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;

    tracing::info!("draining done; flushing metering");
    cancel.cancel();
    let tasks = [
        ("metering", Some(meter_task)),
        ("retention", Some(retention_task)),
        ("upkeep", Some(upkeep_task)),
        ("key changes", follower_task),
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

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}
