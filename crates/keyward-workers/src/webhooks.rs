//! Webhook delivery (API.md §Webhooks): the address rule of targets, checked on resolved
//! addresses ([`resolve_target`] for subscriptions, the client's resolver for deliveries),
//! the dispatcher ([`run_dispatcher`]) and the scan that makes `key.expiring` and
//! `key.expired` ([`run_expiry_scan`]).
//!
//! Deliveries are rows of the store (the outbox): a node claims due ones with a lease,
//! sends each with Standard Webhooks headers, and records the attempts that finish
//! together in one transaction. A crash leaves a lease that runs out, and the delivery is
//! due again; on PostgreSQL nodes claim with `skip locked`, so each delivery has one
//! attempt at a time.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keyward_core::webhook::{self, EventType, Host, WebhookUrl, address_allowed};
use keyward_core::{EventId, timefmt};
use keyward_store::{Delivery, DeliveryAttempt, FinishedAttempt, OutboxEvent, Store};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Why a target may not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The addresses `host` resolves to, each checked by [`address_allowed`] unless
/// `allow_private`: one refused address refuses the host (a name that resolves to a
/// public and a private address could be steered to the private one).
///
/// # Errors
/// [`Refused`] naming why: the name does not resolve, or an address is not allowed.
pub async fn checked_addresses(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Refused("its host does not resolve".to_owned()))?
        .collect();
    if addrs.is_empty() {
        return Err(Refused("its host does not resolve".to_owned()));
    }
    for addr in &addrs {
        check_ip(addr.ip(), allow_private)?;
    }
    Ok(addrs)
}

fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), Refused> {
    if allow_private || address_allowed(ip) {
        Ok(())
    } else {
        Err(Refused(
            "its host is a loopback, private, link-local or reserved address; \
             --webhooks-allow-private allows those"
                .to_owned(),
        ))
    }
}

/// Checks a subscription's target: every address its host resolves to (or its address
/// literal) must be allowed.
///
/// # Errors
/// [`Refused`] naming why.
pub async fn resolve_target(url: &WebhookUrl, allow_private: bool) -> Result<(), Refused> {
    match url.host() {
        Host::Ip(ip) => check_ip(ip, allow_private),
        Host::Name(name) => checked_addresses(name, url.port(), allow_private)
            .await
            .map(drop),
    }
}

/// The HTTP client's resolver: the addresses it returns are the ones checked, so a
/// delivery connects to a checked address and never to a second resolution of the name.
#[derive(Debug, Clone, Copy)]
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = checked_addresses(name.as_str(), 0, allow_private).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// How the dispatcher works.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Whether private and loopback targets are allowed (`--webhooks-allow-private`).
    pub allow_private: bool,
    /// The waits before each retry; after the last, a delivery is failed.
    pub schedule: Vec<Duration>,
    /// How long an attempt may take.
    pub timeout: Duration,
    /// How long a claim holds a delivery: longer than an attempt can take.
    pub lease: Duration,
    /// Attempts in flight at most, per node.
    pub concurrency: usize,
    /// How often the dispatcher looks for due deliveries when it found none.
    pub poll: Duration,
}

impl DispatchOptions {
    /// The contract's schedule and timeout.
    #[must_use]
    pub fn standard(allow_private: bool) -> Self {
        Self {
            allow_private,
            schedule: webhook::RETRY_SCHEDULE.to_vec(),
            timeout: webhook::ATTEMPT_TIMEOUT,
            lease: webhook::ATTEMPT_TIMEOUT * 4,
            concurrency: 32,
            poll: Duration::from_millis(200),
        }
    }

    /// For tests: every retry after a second, attempts of at most 2 s, leases of 4 s.
    #[must_use]
    pub fn fast(allow_private: bool) -> Self {
        Self {
            schedule: vec![Duration::from_secs(1); webhook::RETRY_SCHEDULE.len()],
            timeout: Duration::from_secs(2),
            lease: Duration::from_secs(4),
            ..Self::standard(allow_private)
        }
    }
}

/// Builds the delivery client: no redirects (a 3xx is not a success, and a redirect could
/// lead to an address never checked), no proxy, the checked resolver, the attempt timeout.
///
/// # Errors
/// If the TLS configuration can't be built.
pub fn client(options: &DispatchOptions) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(CheckedResolver {
            allow_private: options.allow_private,
        })
        .timeout(options.timeout)
        .user_agent(concat!("keyward-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// An attempt's outcome on its way to the recorder, with the slot it holds until then.
type Finished = (FinishedAttempt, OwnedSemaphorePermit);

/// Claims due deliveries and attempts them, at most `options.concurrency` at a time,
/// until cancelled. It looks again every `options.poll`, and at once when `enqueued` is
/// told (this process committed new deliveries) or a slot frees after all were taken.
/// Finished attempts go to one recorder, which writes whatever has arrived in one
/// transaction ([`Store::record_attempts`]): a lone attempt at once, a batch under load.
/// An attempt's slot is free again only once its record is written (or has failed).
///
/// At cancellation the recorder writes the attempts that have finished; attempts still in
/// flight are dropped: their leases run out and another node, or the next start, makes
/// them again.
pub async fn run_dispatcher(
    store: Arc<dyn Store>,
    client: reqwest::Client,
    options: DispatchOptions,
    enqueued: Arc<Notify>,
    cancel: CancellationToken,
) {
    let concurrency = options.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let (finished, arrived) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(run_recorder(
        store.clone(),
        arrived,
        concurrency,
        cancel.clone(),
    ));
    let options = Arc::new(options);
    loop {
        let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
        if free == 0 {
            // Every slot is taken: look again when one frees.
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = slots.acquire() => {}
            }
            continue;
        }
        let mut claimed = 0;
        match store
            .claim_deliveries(OffsetDateTime::now_utc(), options.lease, free)
            .await
        {
            Ok(deliveries) => {
                claimed = deliveries.len();
                for delivery in deliveries {
                    let Ok(slot) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let (client, options, finished) =
                        (client.clone(), options.clone(), finished.clone());
                    tokio::spawn(async move {
                        let outcome = attempt(&client, &options, &delivery).await;
                        // Closed only at cancellation: the lease runs out.
                        let _ = finished.send((outcome, slot));
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming webhook deliveries failed; will retry")
            }
        }
        if claimed > 0 && claimed == free as usize {
            // A full claim: more may be due at once.
            tokio::task::yield_now().await;
            if cancel.is_cancelled() {
                break;
            }
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = enqueued.notified() => {}
            () = tokio::time::sleep(options.poll) => {}
        }
    }
    drop(finished);
    let _ = recorder.await;
}

/// Writes the attempts that have arrived on `arrived`, up to `most` in one
/// [`Store::record_attempts`], until cancelled; then what has arrived, and no more.
///
/// Each attempt's slot is freed after its record is written, not when its response came:
/// the lease keeps the delivery from a second claim either way, but slots held until
/// then bound the attempts waiting for their record to the dispatcher's concurrency.
/// Were slots freed earlier, a slow store (SQLite's one writer under load) would see
/// claims go on beside a growing queue of records, which could outlast the leases: the
/// delivery claimed and sent again while its first record is still to come.
async fn run_recorder(
    store: Arc<dyn Store>,
    mut arrived: mpsc::UnboundedReceiver<Finished>,
    most: usize,
    cancel: CancellationToken,
) {
    let mut batch: Vec<Finished> = Vec::with_capacity(most);
    loop {
        let n = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                // What has arrived is written; attempts still in flight are dropped.
                arrived.close();
                arrived.recv_many(&mut batch, most).await
            }
            n = arrived.recv_many(&mut batch, most) => n,
        };
        if n == 0 {
            return;
        }
        let (attempts, slots): (Vec<FinishedAttempt>, Vec<OwnedSemaphorePermit>) =
            batch.drain(..).unzip();
        if let Err(e) = store.record_attempts(&attempts).await {
            // The leases run out and the deliveries are attempted again: at least once.
            tracing::warn!(
                error = %e,
                attempts = attempts.len(),
                "recording webhook attempts failed"
            );
        }
        drop(slots);
    }
}

/// Sends one delivery: the attempt to record.
async fn attempt(
    client: &reqwest::Client,
    options: &DispatchOptions,
    delivery: &Delivery,
) -> FinishedAttempt {
    let now = OffsetDateTime::now_utc();
    let (status, error) = match send(client, options, delivery, now).await {
        Ok(status) if (200..300).contains(&status) => (Some(status), None),
        Ok(status) => (
            Some(status),
            Some(format!("the response's status was {status}")),
        ),
        Err(error) => (None, Some(error)),
    };
    let mut finished = FinishedAttempt {
        delivery_id: delivery.delivery_id,
        webhook_id: delivery.webhook_id.clone(),
        attempt: DeliveryAttempt {
            time: now,
            event_id: delivery.event_id.to_string(),
            kind: delivery.kind.clone(),
            status,
            error,
            next_attempt_at: None,
        },
    };
    if finished.delivered() {
        tracing::debug!(webhook = %delivery.webhook_id, event = %delivery.event_id, "webhook delivered");
    } else {
        let index = usize::try_from(delivery.attempts).unwrap_or(usize::MAX);
        let record = &mut finished.attempt;
        record.next_attempt_at = options.schedule.get(index).map(|wait| now + *wait);
        tracing::info!(
            webhook = %delivery.webhook_id,
            event = %delivery.event_id,
            attempt = delivery.attempts + 1,
            error = record.error.as_deref().unwrap_or(""),
            next_attempt_at = record.next_attempt_at.map(timefmt::format).unwrap_or_default(),
            "webhook delivery failed"
        );
    }
    finished
}

/// One POST of a delivery: its response's status, or why none came. Never names the
/// URL (it may hold a token of the receiver's) or the secret.
async fn send(
    client: &reqwest::Client,
    options: &DispatchOptions,
    delivery: &Delivery,
    now: OffsetDateTime,
) -> Result<u16, String> {
    let url = WebhookUrl::parse(&delivery.url).map_err(|e| format!("the URL {e}"))?;
    if let Host::Ip(ip) = url.host() {
        check_ip(ip, options.allow_private).map_err(|e| e.0)?;
    }
    let timestamp = now.unix_timestamp();
    let id = delivery.event_id.as_str();
    let signature = webhook::sign(&delivery.secret, id, timestamp, delivery.payload.as_bytes())
        .ok_or_else(|| "the subscription's secret is damaged".to_owned())?;
    let response = client
        .post(url.as_str())
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.payload.clone())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(response.status().as_u16())
}

/// Why a request got no response, in a few words.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no response within the timeout".to_owned()
    } else if let Some(refused) = source_of::<Refused>(e) {
        refused.0.clone()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    }
}

fn source_of<T: std::error::Error + 'static>(e: &reqwest::Error) -> Option<&T> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref::<T>() {
            return Some(found);
        }
        source = s.source();
    }
    None
}

/// How far ahead `key.expiring` looks: the first notice comes 7 days before expiry.
const NOTICE_AHEAD: time::Duration = time::Duration::days(7);
/// The second notice comes a day before expiry.
const LAST_NOTICE: time::Duration = time::Duration::days(1);
/// How far back `key.expired` looks: a key whose expiry passed longer ago (while no node
/// ran) gets no event.
const EXPIRED_BEHIND: time::Duration = time::Duration::days(7);

/// The events one scan at `now` makes: for each key expiring within 7 days,
/// `key.expiring` (`days`: 7, or 1 once a day or less is left), and for each key whose
/// expiry passed, `key.expired`; each under a mark naming the key, the notice and the
/// expiry, so that it is made once (a changed expiry is a new one).
///
/// # Errors
/// The store's error.
pub async fn scan_expiry_once(
    store: &dyn Store,
    now: OffsetDateTime,
) -> keyward_store::StoreResult<u64> {
    let keys = store
        .keys_expiring_between(now - EXPIRED_BEHIND, now + NOTICE_AHEAD)
        .await?;
    let events: Vec<(String, OutboxEvent)> = keys
        .into_iter()
        .map(|(account_id, key_id, expires_at)| {
            let left = expires_at - now;
            let (kind, notice, days) = if left <= time::Duration::ZERO {
                (EventType::KeyExpired, "expired", None)
            } else if left <= LAST_NOTICE {
                (EventType::KeyExpiring, "1d", Some(1))
            } else {
                (EventType::KeyExpiring, "7d", Some(7))
            };
            let mark = format!("{key_id}:{notice}:{}", expires_at.unix_timestamp());
            let mut data = serde_json::json!({
                "account_id": account_id.as_str(),
                "key_id": key_id.as_str(),
                "expires_at": timefmt::format(expires_at),
            });
            if let Some(days) = days {
                data["days"] = serde_json::json!(days);
            }
            let event = OutboxEvent {
                event_id: EventId::from_ulid(ulid::Ulid::generate()),
                account_id,
                kind,
                time: now,
                data,
            };
            (mark, event)
        })
        .collect();
    store.record_scanned_events(&events).await
}

/// Runs [`scan_expiry_once`] every `every` until cancelled.
pub async fn run_expiry_scan(store: Arc<dyn Store>, every: Duration, cancel: CancellationToken) {
    loop {
        match scan_expiry_once(store.as_ref(), OffsetDateTime::now_utc()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "recorded key expiry events"),
            Err(e) => tracing::warn!(error = %e, "scanning key expiries failed; will retry"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
