//! How nodes tell each other of key changes and key uses: `NOTIFY` in the transaction that
//! makes them, delivered only if and when it commits, and [`PgStore::follow_key_changes`]
//! on every node.

use std::time::Duration;

use keyward_core::{AccountId, KeyDigest, KeyId};
use keyward_store::{MeterBatch, StoreResult};
use sqlx::Postgres;
use time::OffsetDateTime;

use super::PgStore;
use crate::common::{Statement as _, Tx, on};

/// The channel on which every key change is announced, so that all nodes drop the key
/// and its account's listing from their caches. Payload: `<account_id>:<digest hex>,…`
/// (the key's digests before the change; none for a new key).
pub const KEY_CHANGES_CHANNEL: &str = "keyward_key_changes";

/// The channel on which each node announces the uses of keys it has just stored, so
/// that the others move `last_used` forward in their cached listings, which can then
/// live as long as a cached key. Payload: `<account_id> <key_id> <unix seconds>,…`.
pub const KEY_USES_CHANNEL: &str = "keyward_key_uses";

/// The longest payload sent on [`KEY_USES_CHANNEL`] (PostgreSQL refuses 8,000 bytes).
const MAX_USES_PAYLOAD: usize = 7_000;

/// What a node hears from [`PgStore::follow_key_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A key of this account changed; these were its digests before the change.
    Changed {
        /// The key's account (`None` if the payload did not carry a valid one).
        account_id: Option<AccountId>,
        /// The key's digests before the change.
        digests: Vec<KeyDigest>,
    },
    /// Keys used through some node: account, key, latest use.
    Used(Vec<(AccountId, KeyId, OffsetDateTime)>),
    /// The listening connection is gone; changes may be missed until [`KeyChange::Resynced`],
    /// so nothing cached may be trusted meanwhile.
    Lost,
    /// Listening again (or for the first time): drop everything cached before this point.
    Resynced,
}

/// Reads a [`KEY_CHANGES_CHANNEL`] payload; malformed entries are skipped.
#[must_use]
pub fn decode_key_change(payload: &str) -> KeyChange {
    let (account, digests) = payload.split_once(':').unwrap_or(("", payload));
    KeyChange::Changed {
        account_id: AccountId::parse(account).ok(),
        digests: digests.split(',').filter_map(KeyDigest::from_hex).collect(),
    }
}

/// Reads a [`KEY_USES_CHANNEL`] payload; malformed entries are skipped.
#[must_use]
pub fn decode_key_uses(payload: &str) -> KeyChange {
    let uses = payload
        .split(',')
        .filter_map(|entry| {
            let mut fields = entry.split(' ');
            let account_id = AccountId::parse(fields.next()?).ok()?;
            let key_id = KeyId::parse(fields.next()?).ok()?;
            let at = OffsetDateTime::from_unix_timestamp(fields.next()?.parse().ok()?).ok()?;
            Some((account_id, key_id, at))
        })
        .collect();
    KeyChange::Used(uses)
}

/// The [`KEY_USES_CHANNEL`] payloads announcing a batch's uses, each of at most
/// [`MAX_USES_PAYLOAD`] bytes.
fn uses_payloads(batch: &MeterBatch) -> Vec<String> {
    let mut payloads: Vec<String> = Vec::new();
    for (account_id, key_id, at) in &batch.last_used {
        let entry = format!("{account_id} {key_id} {}", at.unix_timestamp());
        match payloads.last_mut() {
            Some(current) if current.len() + 1 + entry.len() <= MAX_USES_PAYLOAD => {
                current.push(',');
                current.push_str(&entry);
            }
            _ => payloads.push(entry),
        }
    }
    payloads
}

/// Sends `payload` on `channel` when `tx` commits.
async fn notify(tx: &mut Tx<Postgres>, channel: &str, payload: String) -> StoreResult<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .run(on(tx))
        .await?;
    Ok(())
}

/// Announces the uses a metering batch stores.
pub(super) async fn announce_uses(tx: &mut Tx<Postgres>, batch: &MeterBatch) -> StoreResult<()> {
    for payload in uses_payloads(batch) {
        notify(tx, KEY_USES_CHANNEL, payload).await?;
    }
    Ok(())
}

/// Announces a change of one of `account_id`'s keys, which had `digests`. No node hears
/// of a change that did not commit, and none can miss one while it stays connected.
pub(super) async fn announce_change(
    tx: &mut Tx<Postgres>,
    account_id: &AccountId,
    digests: &[KeyDigest],
) -> StoreResult<()> {
    // A notification's payload is at most 8000 bytes: an account's keys (a suspension,
    // a plan change) are announced 100 digests at a time.
    if digests.is_empty() {
        return notify(tx, KEY_CHANGES_CHANNEL, format!("{account_id}:")).await;
    }
    for chunk in digests.chunks(100) {
        let hexes: Vec<String> = chunk.iter().map(KeyDigest::to_hex).collect();
        let payload = format!("{account_id}:{}", hexes.join(","));
        notify(tx, KEY_CHANGES_CHANNEL, payload).await?;
    }
    Ok(())
}

impl PgStore {
    /// Follows key changes and key uses announced by any node until `shutdown`
    /// completes, calling `on_change` for each. When the listening connection drops it
    /// reports [`KeyChange::Lost`], reconnects (retrying every 200 ms) and reports
    /// [`KeyChange::Resynced`] once listening again: a node that may have missed
    /// notifications resyncs instead of serving stale keys.
    pub async fn follow_key_changes<F, S>(&self, mut on_change: F, shutdown: S)
    where
        F: FnMut(KeyChange) + Send,
        S: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(shutdown);
        let mut logged_down = false;
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(self.pool()).await?;
                // Without this, a lost connection is reconnected inside `try_recv`, which
                // waits out the pool's acquire timeout while PostgreSQL refuses
                // connections, and the caches would be trusted all that time.
                listener.eager_reconnect(false);
                listener
                    .listen_all([KEY_CHANGES_CHANNEL, KEY_USES_CHANNEL])
                    .await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                () = &mut shutdown => return,
                result = listener => match result {
                    Ok(listener) => listener,
                    Err(e) => {
                        on_change(KeyChange::Lost);
                        if !logged_down {
                            tracing::warn!(error = %e, "cannot listen for key changes; the key cache is bypassed until it can");
                            logged_down = true;
                        }
                        tokio::select! {
                            () = &mut shutdown => return,
                            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                },
            };
            if logged_down {
                tracing::info!("listening for key changes again; the key cache is back");
                logged_down = false;
            }
            on_change(KeyChange::Resynced);
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    message = listener.try_recv() => match message {
                        Ok(Some(notification)) => {
                            on_change(if notification.channel() == KEY_USES_CHANNEL {
                                decode_key_uses(notification.payload())
                            } else {
                                decode_key_change(notification.payload())
                            });
                        }
                        // `None`: the connection was lost; `Err`: it broke. Either way
                        // notifications may have been missed.
                        Ok(None) | Err(_) => {
                            on_change(KeyChange::Lost);
                            break;
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use keyward_store::UsageKey;

    use super::*;

    #[test]
    fn uses_travel_in_bounded_payloads_and_decode_whole() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut batch = MeterBatch::default();
        let mut sent = Vec::new();
        for _ in 0..500 {
            let account_id = AccountId::from_ulid(ulid::Ulid::generate());
            let key_id = KeyId::from_ulid(ulid::Ulid::generate());
            batch
                .last_used
                .push((account_id.clone(), key_id.clone(), at));
            batch.usage.push((
                UsageKey {
                    account_id: account_id.clone(),
                    day: "2027-01-15".into(),
                    endpoint: "GET /v1/api-keys".into(),
                    key_id: key_id.clone(),
                },
                1,
            ));
            sent.push((account_id, key_id, at));
        }
        let payloads = uses_payloads(&batch);
        assert!(payloads.len() > 1, "500 uses need several payloads");
        assert!(payloads.iter().all(|p| p.len() <= MAX_USES_PAYLOAD));
        let mut heard = Vec::new();
        for payload in &payloads {
            let KeyChange::Used(uses) = decode_key_uses(payload) else {
                unreachable!("decode_key_uses only returns uses");
            };
            heard.extend(uses);
        }
        assert_eq!(heard, sent);
        assert!(uses_payloads(&MeterBatch::default()).is_empty());
        assert_eq!(
            decode_key_uses("garbage,acct_x key_y 1"),
            KeyChange::Used(Vec::new())
        );
    }
}
