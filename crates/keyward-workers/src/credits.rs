//! `credits.exhausted` (API.md §Webhooks, §Key policies). Credit balances live in the
//! rate limiter, not in storage, so the request path that sees a key's balance at 0
//! reports it through [`ExhaustionReports`] (a bounded channel: no storage round trip,
//! no wait) and [`run_exhaustion_recorder`] writes the event in the background.
//!
//! Each event is recorded under a scan mark naming the key, the credits' generation
//! (a PATCH that sets `credits` starts a new one) and the refill period it ran out in,
//! through [`keyward_store::Store::record_scanned_events`]: the mark exists once, so the
//! requests that find the balance at 0, on this node or any other, make one event per
//! balance. A report the full channel drops is made again by the key's next request,
//! which finds the balance still at 0.

use std::collections::HashSet;
use std::sync::Arc;

use keyward_core::{AccountId, Credits, EventId, KeyId, timefmt, webhook::EventType};
use keyward_store::{OutboxEvent, Store};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reports waiting for the recorder at most; more are dropped (and made again).
const CAPACITY: usize = 1024;
/// Reports recorded in one call of the store at most.
const BATCH: usize = 64;
/// Marks this node remembers having recorded, so that the requests refused at 0 cost no
/// storage call each; past this many it forgets them all (the store's mark still holds).
const REMEMBERED: usize = 100_000;

/// A key whose credits the request path found at 0.
#[derive(Debug, Clone)]
pub struct Exhaustion {
    /// The key's account.
    pub account_id: AccountId,
    /// The key.
    pub key_id: KeyId,
    /// The key's name, if it has one.
    pub name: Option<String>,
    /// The key's credits as the limiter charged them.
    pub credits: Credits,
    /// When the request was made.
    pub time: OffsetDateTime,
}

impl Exhaustion {
    /// The mark the event is recorded under: the key, the credits' generation and the
    /// refill period (`-1` without a refill).
    #[must_use]
    pub fn mark(&self) -> String {
        let period = self
            .credits
            .refill
            .map_or(-1, |r| r.interval.period_of(self.time));
        format!(
            "{}:{}:{}:{period}",
            self.key_id,
            EventType::CreditsExhausted.as_str(),
            self.credits.generation
        )
    }

    /// The event: `data` names the account, the key, its name and when its credits
    /// refill (`null` without a refill). Never a secret.
    #[must_use]
    pub fn event(&self) -> OutboxEvent {
        let refills_at = self
            .credits
            .refill
            .map(|r| timefmt::format(r.interval.next_start(self.time)));
        OutboxEvent {
            event_id: EventId::from_ulid(ulid::Ulid::generate()),
            account_id: self.account_id.clone(),
            kind: EventType::CreditsExhausted,
            time: self.time,
            data: serde_json::json!({
                "account_id": self.account_id.as_str(),
                "key_id": self.key_id.as_str(),
                "name": self.name,
                "refills_at": refills_at,
            }),
        }
    }
}

/// The request path's end of the channel: cloned into the application state.
#[derive(Debug, Clone)]
pub struct ExhaustionReports(mpsc::Sender<Exhaustion>);

impl ExhaustionReports {
    /// A channel: the reports, and the receiver [`run_exhaustion_recorder`] takes.
    #[must_use]
    pub fn channel() -> (Self, mpsc::Receiver<Exhaustion>) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        (Self(tx), rx)
    }

    /// Hands a report to the recorder without waiting: when the channel is full (or the
    /// recorder stopped) the report is dropped, and the key's next request makes it again.
    pub fn report(&self, exhaustion: Exhaustion) {
        let _ = self.0.try_send(exhaustion);
    }
}

/// Records the reports' events in batches, each once per mark, until cancelled and the
/// reports sent before are recorded.
pub async fn run_exhaustion_recorder(
    store: Arc<dyn Store>,
    mut reports: mpsc::Receiver<Exhaustion>,
    cancel: CancellationToken,
) {
    let mut recorded: HashSet<String> = HashSet::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            // Stopping: the reports already sent are still recorded, then it ends.
            () = cancel.cancelled() => {
                reports.close();
                reports.recv_many(&mut batch, BATCH).await
            }
            n = reports.recv_many(&mut batch, BATCH) => n,
        };
        if received == 0 {
            return;
        }
        let mut events: Vec<(String, OutboxEvent)> = Vec::new();
        for report in batch.drain(..) {
            let mark = report.mark();
            if !recorded.contains(&mark) && !events.iter().any(|(m, _)| *m == mark) {
                events.push((mark, report.event()));
            }
        }
        if events.is_empty() {
            continue;
        }
        match store.record_scanned_events(&events).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(events = n, "recorded credits.exhausted events");
                }
                if recorded.len() + events.len() > REMEMBERED {
                    recorded.clear();
                }
                recorded.extend(events.into_iter().map(|(mark, _)| mark));
            }
            // Not remembered: the key's next request at 0 reports it again.
            Err(e) => tracing::warn!(error = %e, "recording credits.exhausted events failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{Refill, RefillInterval};
    use time::macros::datetime;

    fn exhaustion(refill: Option<Refill>, generation: i64, time: OffsetDateTime) -> Exhaustion {
        Exhaustion {
            account_id: AccountId::from_trusted("acct_1".to_owned()),
            key_id: KeyId::from_trusted("key_1".to_owned()),
            name: Some("ci".to_owned()),
            credits: Credits {
                remaining: 2,
                refill,
                generation,
                set_at: 0,
            },
            time,
        }
    }

    #[test]
    fn the_mark_changes_with_the_generation_and_the_refill_period_only() {
        let daily = Some(Refill {
            amount: 5,
            interval: RefillInterval::Day,
        });
        let morning = exhaustion(daily, 3, datetime!(2026-12-03 08:00 UTC));
        let evening = exhaustion(daily, 3, datetime!(2026-12-03 20:00 UTC));
        let next_day = exhaustion(daily, 3, datetime!(2026-12-04 08:00 UTC));
        let patched = exhaustion(daily, 4, datetime!(2026-12-03 20:00 UTC));
        assert_eq!(morning.mark(), evening.mark());
        assert_ne!(morning.mark(), next_day.mark());
        assert_ne!(evening.mark(), patched.mark());
        let once = exhaustion(None, 3, datetime!(2026-12-03 08:00 UTC));
        let later = exhaustion(None, 3, datetime!(2027-01-03 08:00 UTC));
        assert_eq!(once.mark(), later.mark());
    }

    #[test]
    fn the_event_names_the_key_and_its_next_refill_and_no_secret() {
        let daily = Some(Refill {
            amount: 5,
            interval: RefillInterval::Day,
        });
        let event = exhaustion(daily, 1, datetime!(2026-12-03 08:00 UTC)).event();
        assert_eq!(event.kind, EventType::CreditsExhausted);
        assert_eq!(
            event.data,
            serde_json::json!({
                "account_id": "acct_1",
                "key_id": "key_1",
                "name": "ci",
                "refills_at": "2026-12-04T00:00:00Z",
            })
        );
        let none = exhaustion(None, 1, datetime!(2026-12-03 08:00 UTC)).event();
        assert_eq!(none.data["refills_at"], serde_json::Value::Null);
    }
}
