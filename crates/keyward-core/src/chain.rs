//! Tamper evidence of the audit logs (API.md §`GET /v1/audit-log`): each event's `hash`
//! is the lowercase hex SHA-256 of its `prev_hash` followed by the event's canonical JSON.
//!
//! The event is hashed as it is served, not as it is stored: the caller passes the wire
//! object (the one `GET /v1/audit-log` returns), and every field of it but `hash` is
//! covered, so a field added to the wire is chained without touching this module. The
//! canonical form is RFC 8785 (JCS), made by `serde_json_canonicalizer`: keys sorted by
//! UTF-16 code units, no whitespace, the shortest escapes, numbers as ECMAScript prints
//! them. `serde_json`'s compact writer with sorted objects would match it for the ASCII keys
//! and integers keyward itself writes, but not for a caller's metadata (a float such as
//! `1e21`, or keys beyond the Basic Multilingual Plane), which key events carry in
//! `changes`; an auditor's own JCS library must get the same bytes.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `prev_hash` of a chain's first event: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The field [`link`] leaves out: the hash itself.
pub const HASH_FIELD: &str = "hash";

/// The hash of an event whose wire object (its `hash` field, if present, is left out) is
/// `event`, chained to `prev_hash`.
#[must_use]
pub fn link(prev_hash: &str, event: &Map<String, Value>) -> String {
    let without_hash: std::collections::BTreeMap<&str, &Value> = event
        .iter()
        .filter(|(k, _)| k.as_str() != HASH_FIELD)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    // A map of strings to JSON values always serialises.
    let canonical = serde_json_canonicalizer::to_vec(&without_hash).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(&canonical);
    let digest: [u8; 32] = hasher.finalize().into();
    crate::KeyDigest(digest).to_hex()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    #[test]
    fn the_hash_is_sha256_of_prev_hash_and_the_sorted_compact_json_without_hash() {
        let event = object(json!({"b": 1, "a": "x", "hash": "ignored", "prev_hash": GENESIS}));
        let expected = format!(r#"{GENESIS}{{"a":"x","b":1,"prev_hash":"{GENESIS}"}}"#);
        let digest: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
        assert_eq!(link(GENESIS, &event), crate::KeyDigest(digest).to_hex());
    }

    #[test]
    fn any_change_of_a_field_or_of_the_previous_hash_changes_the_hash() {
        let event = object(json!({"action": "key.created", "changes": {"n": 1.5}}));
        let base = link(GENESIS, &event);
        let edited = object(json!({"action": "key.created", "changes": {"n": 1.25}}));
        assert_ne!(link(GENESIS, &edited), base);
        assert_ne!(link(&"1".repeat(64), &event), base);
        let mut rehashed = event.clone();
        rehashed.insert(HASH_FIELD.to_owned(), json!("whatever"));
        assert_eq!(link(GENESIS, &rehashed), base);
    }

    #[test]
    fn numbers_are_written_as_ecmascript_prints_them() {
        // RFC 8785 §3.2.2.3: 1e21 is `1e+21`, 1e20 is written out in full.
        let a = object(json!({"n": 1e21}));
        let expected = format!(r#"{GENESIS}{{"n":1e+21}}"#);
        let digest: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
        assert_eq!(link(GENESIS, &a), crate::KeyDigest(digest).to_hex());
    }
}
