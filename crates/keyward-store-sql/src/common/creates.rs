//! Group commit of key creations, on both backends. Every 201 waits for a commit, and
//! every creation moves its account's audit chain, whose head each creation of the
//! account takes in turn. A transaction of its own for each key would cap creation near
//! 2,000 per second on SQLite (one writer; each statement a round trip to its thread),
//! and on PostgreSQL line an account's creations up behind one row lock, each holding a
//! pooled connection through its commit. Creations that arrive while a commit is running
//! queue up instead, and the next one to take the lead commits them all in one
//! transaction of one insert per table.

use std::sync::{Mutex, MutexGuard, PoisonError};

use keyward_store::{ApiKey, AuditContext, NewKey, StoreError, StoreResult};
use tokio::sync::oneshot;

use super::{Backend, insert_keys, stored_key};

/// The creations waiting for a commit, and the lead of the next one.
#[derive(Default)]
pub(crate) struct CreateQueue {
    waiting: Mutex<Vec<QueuedCreate>>,
    leader: tokio::sync::Mutex<()>,
}

struct QueuedCreate {
    key: NewKey,
    audit: AuditContext,
    reply: oneshot::Sender<StoreResult<ApiKey>>,
}

impl std::fmt::Debug for CreateQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateQueue").finish_non_exhaustive()
    }
}

impl CreateQueue {
    fn lock(&self) -> MutexGuard<'_, Vec<QueuedCreate>> {
        // Pushing and taking can't leave the vector half-changed: a poisoned lock is
        // still consistent.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`keyward_store::Store::insert_key`], group-committed on `backend`'s queue.
pub(crate) async fn insert_key<B: Backend>(
    backend: &B,
    key: &NewKey,
    audit: &AuditContext,
) -> StoreResult<ApiKey> {
    let queue = backend.creates();
    let (reply, mut outcome) = oneshot::channel();
    queue.lock().push(QueuedCreate {
        key: key.clone(),
        audit: audit.clone(),
        reply,
    });
    // Either another leader's batch answers this key first, or this request leads:
    // it commits everything queued, its own key included unless already taken.
    tokio::select! {
        biased;
        answered = &mut outcome => return answered.unwrap_or_else(|_| Err(abandoned())),
        _leader = queue.leader.lock() => {
            let batch = std::mem::take(&mut *queue.lock());
            if !batch.is_empty() {
                // Spawned so that the batch completes and every waiter hears back even
                // if this request goes away mid-commit.
                let backend = backend.clone();
                let _ = tokio::spawn(async move { commit_creates(&backend, batch).await }).await;
            }
        }
    }
    outcome.await.unwrap_or_else(|_| Err(abandoned()))
}

/// Commits queued creations in one transaction and answers each of them. If the batch
/// fails, each key is retried in its own transaction, so that a failing key fails alone.
async fn commit_creates<B: Backend>(backend: &B, batch: Vec<QueuedCreate>) {
    let keys: Vec<_> = batch.iter().map(|c| (&c.key, &c.audit)).collect();
    let outcomes: Vec<StoreResult<()>> = match insert_keys(backend, &keys).await {
        Ok(()) => batch.iter().map(|_| Ok(())).collect(),
        Err(e) if batch.len() == 1 => vec![Err(e)],
        Err(_) => {
            let mut one_by_one = Vec::with_capacity(batch.len());
            for key in &keys {
                one_by_one.push(insert_keys(backend, std::slice::from_ref(key)).await);
            }
            one_by_one
        }
    };
    for (create, outcome) in batch.into_iter().zip(outcomes) {
        let _ = create.reply.send(outcome.map(|()| stored_key(&create.key)));
    }
}

fn abandoned() -> StoreError {
    StoreError::Other("the key creation was abandoned".into())
}
