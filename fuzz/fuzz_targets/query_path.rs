//! The query and path extractors: `QueryParams` with the parameter sets of the listing
//! (`GET /v1/api-keys`), history, usage and audit endpoints, and the `{key_id}` path
//! segment.
//!
//! Input: UTF-8 text `<endpoint>?<query>`, the endpoint being `list`, `history`,
//! `usage` or `audit`; or `key_id <segment>` for a path segment.
#![no_main]

use keyward_core::KeyId;
use keyward_http::error::{ApiError, ErrorCode};
use keyward_http::extract::{KeyIdSegment, QueryParams};
use keyward_http::handlers::history::{audit_query, history_query, usage_month};
use keyward_http::handlers::keys::list_query;
use keyward_store::PageQuery;
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

/// A fixed "now", so that a run does not depend on the clock.
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(segment) = text.strip_prefix("key_id ") {
        key_id_segment(segment);
        return;
    }
    let Some((endpoint, query)) = text.split_once('?') else {
        return;
    };
    let now = OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time");
    let pairs = pairs_of(query);
    let result = match endpoint {
        "list" => list_query(QueryParams::parse(query), now).map(|q| {
            assert!(q.limit.is_none_or(|l| (1..=1000).contains(&l)));
            assert_eq!(q.now, now);
            if let Some(after) = &q.after {
                assert_eq!(KeyId::parse(after.as_str()).ok().as_ref(), Some(after));
            }
            known_only(&pairs, &["status", "limit", "after"]);
        }),
        "history" => history_query(QueryParams::parse(query)).map(|page| {
            check_page(&page);
            assert!(page.action.is_none());
            assert!(
                page.endpoint
                    .as_ref()
                    .is_none_or(|e| !e.is_empty() && e.len() <= 200)
            );
            assert!(page.status.is_none_or(|s| (100..=599).contains(&s)));
            known_only(
                &pairs,
                &[
                    "limit", "before", "key_id", "since", "until", "endpoint", "status",
                ],
            );
        }),
        "audit" => audit_query(QueryParams::parse(query)).map(|page| {
            check_page(&page);
            assert!(page.endpoint.is_none() && page.status.is_none());
            if let Some(action) = page.action {
                assert_eq!(
                    keyward_store::AuditAction::parse(action.as_str()),
                    Some(action)
                );
            }
            known_only(
                &pairs,
                &["limit", "before", "key_id", "since", "until", "action"],
            );
        }),
        "usage" => usage_month(QueryParams::parse(query), now).map(|month| {
            let b = month.as_bytes();
            assert_eq!(b.len(), 7, "{month}");
            assert_eq!(b[4], b'-');
            let m: u8 = month[5..].parse().expect("a month number");
            assert!((1..=12).contains(&m) && month[..4].parse::<u16>().is_ok());
            known_only(&pairs, &["month"]);
        }),
        _ => return,
    };
    if let Err(e) = result {
        check_error(&e, &pairs);
    }
});

fn pairs_of(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding, written out here independently of the
/// extractor's, to check it against.
fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: &u8) -> Option<u8> {
    char::from(*b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// An accepted query holds each parameter at most once, none empty, none unknown.
fn known_only(pairs: &[(String, String)], known: &[&str]) {
    for (i, (name, value)) in pairs.iter().enumerate() {
        assert!(
            known.contains(&name.as_str()),
            "unknown parameter {name:?} accepted"
        );
        assert!(!value.is_empty(), "empty {name} accepted");
        assert!(
            !pairs[..i].iter().any(|(n, _)| n == name),
            "repeated {name} accepted"
        );
    }
}

fn check_page(page: &PageQuery) {
    // One more than asked, to tell whether another page follows.
    assert!((2..=1001).contains(&page.limit), "limit {}", page.limit);
    if let Some(before) = page.before {
        assert!(before >= 0);
        let cursor = keyward_http::dto::encode_cursor(before);
        assert_eq!(keyward_http::dto::decode_cursor(&cursor), Some(before));
    }
    if let (Some(since), Some(until)) = (page.since, page.until) {
        assert!(since <= until);
    }
}

/// A refused query is a `VALIDATION_ERROR` naming a parameter the client sent (cut to
/// 64 characters).
fn check_error(e: &ApiError, pairs: &[(String, String)]) {
    assert_eq!(e.code, ErrorCode::ValidationError, "{}", e.message);
    let field = e
        .details
        .as_ref()
        .and_then(|d| d.get("field"))
        .and_then(serde_json::Value::as_str)
        .expect("a validation error names its parameter");
    let named = pairs.iter().any(|(name, _)| {
        name == field
            || (field.ends_with('…')
                && name.chars().count() > 64
                && name.starts_with(field.trim_end_matches('…')))
    });
    // `until` is named when it falls before `since`, both given.
    assert!(named, "error names {field:?}, which was not sent");
}

fn key_id_segment(segment: &str) {
    let raw = KeyIdSegment(segment.to_owned());
    match raw.parse() {
        Ok(id) => {
            // Only the canonical spelling is an id: it reads back as given.
            assert_eq!(id.as_str(), segment);
            assert_eq!(id.to_string(), segment);
            assert_eq!(segment.len(), 4 + 26);
            assert!(segment.starts_with("key_"));
        }
        Err(e) => assert_eq!(e.code, ErrorCode::ResourceNotFound),
    }
}
