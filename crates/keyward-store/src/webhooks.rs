//! Webhook records (API.md §Webhooks): subscriptions, the events recorded for them in the
//! transaction of the change that causes them (the outbox), deliveries and their attempts.

use keyward_core::webhook::EventType;
use keyward_core::{AccountId, EventId, WebhookId};
use serde_json::Value;
use time::OffsetDateTime;

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub webhook_id: WebhookId,
    /// The account whose events it receives; `None` for an operator's subscription, which
    /// receives the events of every account.
    pub account_id: Option<AccountId>,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<EventType>,
    /// The caller's note.
    pub description: Option<String>,
    /// The signing secret (`whsec_…`): stored, since every delivery is signed with it, and
    /// never shown after creation.
    pub secret: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
}

/// An event for subscribers, recorded with [`crate::Store`]'s changes in their own
/// transaction.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Its id, the same for every subscription and attempt.
    pub event_id: EventId,
    /// The account it is about.
    pub account_id: AccountId,
    /// Its type.
    pub kind: EventType,
    /// When it happened.
    pub time: OffsetDateTime,
    /// What it carries (`data` of the payload); never a secret.
    pub data: Value,
}

impl OutboxEvent {
    /// The body every delivery sends: `{"type", "timestamp", "data"}`.
    #[must_use]
    pub fn payload(&self) -> String {
        serde_json::json!({
            "type": self.kind.as_str(),
            "timestamp": keyward_core::timefmt::format(self.time),
            "data": self.data,
        })
        .to_string()
    }
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its position.
    pub delivery_id: i64,
    /// The subscription.
    pub webhook_id: WebhookId,
    /// The subscription's URL.
    pub url: String,
    /// The subscription's secret.
    pub secret: String,
    /// The event.
    pub event_id: EventId,
    /// The event's type.
    pub kind: String,
    /// The body to send.
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// One attempt, as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// When it was made.
    pub time: OffsetDateTime,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub kind: String,
    /// The response's status, or `None` when none came (refused, timed out).
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When the next attempt is due (`None`: delivered, or failed for good).
    pub next_attempt_at: Option<OffsetDateTime>,
}

/// A finished attempt of a claimed delivery, to be recorded
/// ([`crate::Store::record_attempts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedAttempt {
    /// The delivery ([`Delivery::delivery_id`]).
    pub delivery_id: i64,
    /// The delivery's subscription.
    pub webhook_id: WebhookId,
    /// The attempt, as the delivery log shows it.
    pub attempt: DeliveryAttempt,
}

impl FinishedAttempt {
    /// Whether the attempt failed in no way (a 2xx came back): the delivery is done.
    pub fn delivered(&self) -> bool {
        self.attempt.error.is_none()
    }
}
