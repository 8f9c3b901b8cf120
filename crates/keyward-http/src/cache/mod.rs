//! In-process caches in front of storage, each kept coherent with it:
//! [`coherent::CoherentCache`] is the mechanism (invalidation, fill epochs, the bypass
//! switch); [`key::KeyCache`] holds keys by digest for authentication, and
//! [`listing::Listing`] an account's whole key listing.
//!
//! No cache depends on a handler (the listing renders its page with the wire types of
//! `dto`), so the state can hold them and every handler can depend on the state.

pub mod coherent;
pub mod key;
pub mod listing;
