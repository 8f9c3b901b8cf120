//! keyward's background work and per-request accounting: the metering batch writer,
//! rate limiting and history retention.
//!
//! Depends on `keyward-core` and `keyward-store` only; never on axum or sqlx.

pub mod meter;
pub mod ratelimit;
pub mod retention;

pub use meter::{Meter, month_of, run_meter};
pub use ratelimit::{LocalRateLimiter, RateDecision, RateLimiter};
pub use retention::{prune_once, run_retention};
