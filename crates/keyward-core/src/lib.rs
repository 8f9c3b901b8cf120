//! keyward's pure domain core: the key format, scopes, plans and the value types of the
//! contract (`shared/spec/API.md`).
//!
//! It must not depend on tokio, sqlx or axum, nor read a clock or an RNG on its own:
//! callers pass `now` and a [`key::RandomSource`], so every rule here is testable
//! without I/O.

pub mod key;
pub mod model;
pub mod scope;
pub mod timefmt;

pub use key::{KeyDigest, KeyFormatError, KeyPrefix, KeySecret, OsRandom, RandomSource};
pub use model::{
    AccountId, InvalidValue, KeyId, KeyName, KeyStatus, Limits, MAX_REQUEST_ID_LEN, Metadata, Plan,
    RequestId, StoredStatus,
};
pub use scope::{Scope, ScopeError, ScopeSet};
