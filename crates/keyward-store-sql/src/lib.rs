//! keyward's storage on SQL: the [`Store`](keyward_store::Store) trait over one SQLite
//! file ([`SqliteStore`], the default) or a PostgreSQL database shared by several nodes
//! ([`PgStore`]).
//!
//! Both are one [`SqlStore`]: row mapping, the key-change transactions, listings,
//! accounts, audit, usage, history and retention are written once, generic over sqlx's
//! database. What each backend keeps is what its database really does differently:
//! connections and their settings, row locks, the metering flush, PostgreSQL's
//! notifications to other nodes, SQLite's group commit and checkpoints, error codes, and
//! the few statements whose SQL differs. Depends on `keyward-core` and `keyward-store`
//! only; it must not depend on axum or anything else of the HTTP layer.

mod common;
mod migrate;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

pub use common::SqlStore;
pub use migrate::{MigrationName, Migrations, SchemaError, latest_version};
pub use postgres::{
    KEY_CHANGES_CHANNEL, KEY_USES_CHANNEL, KeyChange, PgBackend, PgStore, decode_key_change,
    decode_key_uses,
};
pub use sqlite::{IfMissing, SqliteBackend, SqliteStore};
