//! keyward's pure domain core: the key format, scopes, plans and the value types of the
//! contract (`docs/API.md`).
//!
//! It must not depend on tokio, sqlx or axum, nor read a clock or an RNG on its own:
//! callers pass `now` and a [`key::RandomSource`], so every rule here is testable
//! without I/O.

pub mod chain;
pub mod key;
pub mod leak;
pub mod metric;
pub mod model;
pub mod policy;
pub mod scope;
pub mod timefmt;
pub mod webhook;

pub use key::{KeyDigest, KeyFormatError, KeyPrefix, KeySecret, OsRandom, RandomSource, hint_of};
pub use model::{
    AccountId, AccountStatus, EventId, ExternalId, InvalidValue, KeyId, KeyName, KeyStatus, Limits,
    MAX_REQUEST_ID_LEN, Metadata, OperatorId, PlanName, RequestId, StoredStatus, WebhookId,
    has_expired,
};
pub use policy::{AllowedIps, Credits, KeyPolicies, Refill, RefillInterval};
pub use scope::{Scope, ScopeError, ScopeSet};
