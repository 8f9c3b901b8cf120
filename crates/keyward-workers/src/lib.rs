//! keyward's background work and per-request accounting: the metering batch writer,
//! history retention, webhooks (the dispatcher, the expiry scan and the address rule
//! of targets), and the recorder of `credits.exhausted` events.
//!
//! Depends on `keyward-core` and `keyward-store` only; never on axum or sqlx.

pub mod credits;
pub mod meter;
pub mod retention;
pub mod webhooks;

pub use meter::{Meter, day_of, month_of, run_meter};
pub use retention::{prune_once, run_retention};
