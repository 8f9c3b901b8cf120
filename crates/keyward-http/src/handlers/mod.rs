//! The endpoints, one file per thing served: [`keys`] the key lifecycle, [`history`]
//! what keys did (history, usage, audit), [`webhooks`] subscriptions and their delivery
//! logs, [`ops`] liveness, readiness and metrics, [`gateway`] the platform's own routes
//! (gateway mode and forward auth), [`console`] the web console's files, [`operator`] the
//! operator API (accounts, plans, leaked keys), [`scanning`] GitHub secret scanning's
//! partner endpoint.
//! Handlers depend on the state, the caller and the extractors; nothing depends on a
//! handler but the router and the OpenAPI document.

pub mod console;
pub mod gateway;
pub mod history;
pub mod keys;
pub mod operator;
pub mod ops;
pub mod scanning;
pub mod webhooks;
