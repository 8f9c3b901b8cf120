//! The JSON body extractor, driven with the request types of the handlers that take a
//! body: create (`POST /v1/api-keys`), update (`PATCH /v1/api-keys/{key_id}`) and rotate
//! (`POST /v1/api-keys/{key_id}/rotate`, an optional body). `validate` has no body: its
//! input is `x-api-key`, which the `key` target covers. An accepted body's fields then go
//! through the core parsers the handlers call.
//!
//! Input: the first line is `<kind> <content-type>` (`create`, `update` or `rotate`;
//! the content type may be empty, for no header); the rest is the body.
#![no_main]

use axum::body::Bytes;
use keyward_core::{KeyName, Metadata, ScopeSet, timefmt};
use keyward_http::error::{ApiError, ErrorCode};
use keyward_http::extract::{JsonBody, is_json_content_type};
use keyward_http::handlers::keys::{CreateApiKeyRequest, RotateApiKeyRequest, UpdateApiKeyRequest};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let (kind, content_type) = head.split_once(' ').unwrap_or((head, ""));
    let content_type = (!content_type.is_empty()).then_some(content_type);
    let request = JsonBody::from_bytes(content_type, Bytes::copy_from_slice(body));
    match kind {
        "create" => {
            if let Some(req) = parsed::<CreateApiKeyRequest>(&request, body, content_type, CREATE) {
                if let Some(name) = &req.name {
                    check_name(name);
                }
                check_scopes(&req.scopes);
                if let Some(raw) = &req.expires_at {
                    check_time(raw);
                }
                if let Some(metadata) = req.metadata {
                    check_metadata(metadata);
                }
            }
        }
        "update" => {
            if let Some(req) = parsed::<UpdateApiKeyRequest>(&request, body, content_type, UPDATE) {
                if let Some(Some(name)) = &req.name {
                    check_name(name);
                }
                if let Some(Some(scopes)) = &req.scopes {
                    check_scopes(scopes);
                }
                if let Some(Some(raw)) = &req.expires_at {
                    check_time(raw);
                }
                if let Some(Some(metadata)) = req.metadata {
                    check_metadata(metadata);
                }
            }
        }
        "rotate" => match request.parse_optional::<RotateApiKeyRequest>() {
            Ok(None) => assert!(
                body.iter().all(u8::is_ascii_whitespace)
                    || serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.is_null()),
                "a body that is neither empty nor null read as no body"
            ),
            Ok(Some(_)) => assert!(is_json(content_type)),
            Err(e) => check_error(&e, body, content_type, false, ROTATE),
        },
        _ => {}
    }
});

/// The fields of each request type.
const CREATE: &[&str] = &["name", "scopes", "expires_at", "expires_in", "metadata"];
const UPDATE: &[&str] = &["name", "scopes", "status", "expires_at", "metadata"];
const ROTATE: &[&str] = &["grace_period_seconds"];

/// `T` from the body through the extractor, with the properties every body has.
fn parsed<T: DeserializeOwned>(
    request: &JsonBody,
    body: &[u8],
    content_type: Option<&str>,
    fields: &[&str],
) -> Option<T> {
    // serde's derived structs also read an array field by field; every body keyward takes
    // is an object, so only an object counts as one serde accepts.
    let direct = serde_json::from_slice::<T>(body).is_ok() && !is_array(body);
    match request.parse::<T>() {
        Ok(value) => {
            // The extractor accepts what serde accepts, and only as JSON.
            assert!(direct, "accepted a body serde refuses");
            assert!(is_json(content_type));
            Some(value)
        }
        Err(e) => {
            check_error(&e, body, content_type, direct, fields);
            None
        }
    }
}

/// A refused body gets the contract's codes: `INVALID_REQUEST` for what is not JSON,
/// `VALIDATION_ERROR` naming a field for JSON that does not fit.
fn check_error(
    e: &ApiError,
    body: &[u8],
    content_type: Option<&str>,
    serde_accepts: bool,
    fields: &[&str],
) {
    assert!(e.retry_after_secs.is_none());
    match e.code {
        ErrorCode::InvalidRequest => {
            // Well-formed JSON of the JSON content type is never called "not JSON".
            let well_formed = serde_json::from_slice::<serde_json::Value>(body).is_ok();
            assert!(
                !(well_formed && is_json(content_type)),
                "well-formed JSON refused as invalid: {}",
                e.message
            );
        }
        ErrorCode::ValidationError => {
            assert!(is_json(content_type));
            assert!(
                !serde_accepts,
                "serde accepts what was refused: {}",
                e.message
            );
            let field = e
                .details
                .as_ref()
                .and_then(|d| d.get("field"))
                .and_then(serde_json::Value::as_str);
            let field = field.expect("a validation error names its field");
            let reason = e
                .details
                .as_ref()
                .and_then(|d| d.get("reason"))
                .and_then(serde_json::Value::as_str)
                .expect("a validation error gives its reason");
            // The field is one of the type's, the whole body, or the unknown one sent;
            // never a name the client quoted inside a value.
            assert!(
                field == "body" || fields.contains(&field) || reason.starts_with("unknown field `"),
                "field {field:?} for {reason:?}"
            );
            // serde's position suffix (" at line 1 column 5") is not part of the reason.
            let suffix = reason.rsplit_once(" at line ").map(|(_, s)| s);
            assert!(
                !suffix.is_some_and(|s| s.split(" column ").all(|n| n.parse::<u64>().is_ok())),
                "{reason}"
            );
        }
        other => panic!("a body refused with {other:?}"),
    }
}

/// Whether the body is a JSON array (its first byte that is not white space opens one).
fn is_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(is_json_content_type)
}

fn check_name(raw: &str) {
    if let Ok(name) = KeyName::parse(raw) {
        assert_eq!(name.as_str(), raw);
        assert!((1..=100).contains(&raw.chars().count()));
        assert!(!raw.chars().any(char::is_control));
    }
}

fn check_scopes(raw: &[String]) {
    if let Ok(scopes) = ScopeSet::parse(raw) {
        let strings = scopes.to_strings();
        assert_eq!(strings, raw, "scopes read back in the order given");
        assert!((1..=32).contains(&strings.len()));
        let again = ScopeSet::parse(&strings).expect("accepted scopes parse again");
        assert!(again.same_scopes_as(&scopes));
    }
}

fn check_time(raw: &str) {
    if let Ok(t) = timefmt::parse(raw) {
        // The wire form of an accepted time reads back as the same second (for the
        // years keyward formats).
        let t = timefmt::truncate(t);
        if (0..=9999).contains(&t.to_offset(time::UtcOffset::UTC).year()) {
            let shown = timefmt::format(t);
            assert_eq!(
                timefmt::parse(&shown).ok(),
                Some(t),
                "{raw:?} shown as {shown}"
            );
        }
    }
}

fn check_metadata(raw: serde_json::Value) {
    if let Ok(metadata) = Metadata::parse(raw) {
        let stored = metadata.to_json();
        assert!(
            stored.len() <= 4096,
            "stored metadata of {} bytes",
            stored.len()
        );
        assert_eq!(
            Metadata::from_stored(&stored),
            metadata,
            "metadata reads back"
        );
    }
}
