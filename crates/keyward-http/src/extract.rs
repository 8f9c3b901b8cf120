//! Our own extractors, so that no rejection ever leaks axum's plain text: bodies, query
//! strings and path segments all fail with the documented JSON errors.

use std::borrow::Cow;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::dto::decode_cursor;
use crate::error::ApiError;
use crate::state::AppState;

/// A request body read up to the body limit but not yet parsed: handlers
/// check scopes first, then parse, so that a key lacking a scope gets its `403` whatever
/// it sent.
#[derive(Debug)]
pub struct JsonBody {
    json_type: bool,
    /// The body, or why it could not be read (over the limit, or broken off). Kept
    /// until `parse` so that even a `413` comes after the scope and rate-limit checks.
    bytes: Result<Bytes, BodyReadError>,
}

#[derive(Debug, Clone, Copy)]
enum BodyReadError {
    TooLarge(usize),
    TimedOut,
    Unreadable,
}

/// The error of a request body that stopped arriving before the server's body timeout:
/// the server's connection layer makes the body fail with it, and a handler reading that
/// body answers `408` (API.md §Errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within the body timeout")
    }
}

impl std::error::Error for BodyTimedOut {}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    /// Not an `async fn`: its future would keep room for the whole request it no longer
    /// holds, and every handler with a body keeps this future inside its own, which
    /// past 1 KiB is allocated outside the allocator's fast path.
    fn from_request(
        req: Request,
        state: &AppState,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        let bytes = read_body(req.into_body(), state.body_limit);
        async move {
            Ok(Self {
                json_type,
                bytes: bytes.await,
            })
        }
    }
}

impl JsonBody {
    /// A body already read, with the request's `content-type` (if any): what
    /// [`FromRequest`] builds, without a request. The fuzz targets (`fuzz/`) drive the
    /// parsers through it.
    #[must_use]
    pub fn from_bytes(content_type: Option<&str>, bytes: Bytes) -> Self {
        Self {
            json_type: content_type.is_some_and(is_json_content_type),
            bytes: Ok(bytes),
        }
    }
}

/// The whole body, reading no more than `limit` bytes of it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyReadError> {
    // A request without a body (validate's KonPro form) has nothing to collect.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        // The body's own error sits under axum's wrappers, one or two deep.
        let timed_out = std::iter::successors(std::error::Error::source(&e), |e| e.source())
            .any(|source| source.is::<BodyTimedOut>());
        if over_limit {
            BodyReadError::TooLarge(limit)
        } else if timed_out {
            BodyReadError::TimedOut
        } else {
            BodyReadError::Unreadable
        }
    })
}

impl JsonBody {
    /// Parses a required JSON body.
    ///
    /// # Errors
    /// `INVALID_REQUEST` for a non-JSON body or content type, `VALIDATION_ERROR` for
    /// data that does not fit `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(self.json_bytes()?)
    }

    /// The body, if it arrived whole and its content type is JSON.
    fn json_bytes(&self) -> Result<&Bytes, ApiError> {
        let bytes = self.bytes()?;
        if !self.json_type {
            return Err(ApiError::invalid_request(
                "the request body must be JSON with content-type application/json",
            ));
        }
        Ok(bytes)
    }

    /// The body as it arrived, for a check over its exact bytes (a signature) before
    /// [`JsonBody::parse`].
    ///
    /// # Errors
    /// `413` over the body limit, `408` for a body that stopped arriving, `400` for one
    /// that broke off.
    pub fn raw(&self) -> Result<&Bytes, ApiError> {
        self.bytes()
    }

    fn bytes(&self) -> Result<&Bytes, ApiError> {
        match &self.bytes {
            Ok(bytes) => Ok(bytes),
            Err(BodyReadError::TooLarge(limit)) => Err(ApiError::payload_too_large(*limit)),
            Err(BodyReadError::TimedOut) => Err(ApiError::body_timed_out()),
            Err(BodyReadError::Unreadable) => Err(ApiError::invalid_request(
                "the request body could not be read",
            )),
        }
    }

    /// Parses a required JSON body that is an array (GitHub secret scanning's format),
    /// each item a `T`.
    ///
    /// # Errors
    /// As [`JsonBody::parse`]; `VALIDATION_ERROR` (field `body`) for JSON that is not an
    /// array or an item that is not a `T`.
    pub fn parse_array<T: DeserializeOwned>(&self) -> Result<Vec<T>, ApiError> {
        let bytes = self.json_bytes()?;
        if !matches!(first_byte(bytes), Some(b'[') | None) {
            return Err(ApiError::validation("body", "must be a JSON array"));
        }
        deserialize(bytes)
    }

    /// Parses an optional JSON body: an empty one, or JSON `null`, is `None`.
    ///
    /// # Errors
    /// As [`JsonBody::parse`] when a body is present.
    pub fn parse_optional<T: DeserializeOwned>(&self) -> Result<Option<T>, ApiError> {
        if self.bytes()?.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        self.parse::<Option<T>>()
    }
}

/// Whether a `content-type` value names JSON: `application/json` or `application/*+json`,
/// any parameters and letter case aside.
#[must_use]
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON: syntax errors are `INVALID_REQUEST`, data errors `VALIDATION_ERROR`
/// with the top-level field named.
///
/// # Errors
/// The documented error for the first problem found.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde's derived structs also read a JSON array, field by field in order: every
    // body keyward takes is an object (but GitHub's, [`JsonBody::parse_array`]), so an
    // array is refused before it gets there.
    if first_byte(bytes) == Some(b'[') {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    deserialize(bytes)
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Reads JSON as `T`, with the errors of [`parse_json`].
fn deserialize<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_of(&e);
        let inner = e.into_inner();
        if inner.is_data() {
            ApiError::validation(&field, data_reason(&inner))
        } else {
            ApiError::invalid_request(format!("the request body is not valid JSON: {inner}"))
        }
    })?;
    de.end().map_err(|e| {
        ApiError::invalid_request(format!("the request body is not valid JSON: {e}"))
    })?;
    Ok(value)
}

/// For `#[serde(default, deserialize_with = "crate::extract::object")]` on an optional
/// field holding a struct: `null` is `None`, an object is the struct, anything else (an
/// array, which serde's derived structs would read field by field) is refused.
///
/// # Errors
/// The deserializer's error for a value that is not an object or `null`, or the struct's.
pub fn object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let Some(map) =
        Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
    else {
        return Ok(None);
    };
    T::deserialize(serde_json::Value::Object(map))
        .map(Some)
        .map_err(D::Error::custom)
}

/// The top-level field an error is about: the first path segment, or the name in
/// serde's "missing field" / "unknown field" messages, or `body` for the whole body.
/// Only a message that starts with those words names a field: elsewhere they may be the
/// client's own text, quoted back in an "invalid type" message.
fn field_of(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let message = e.inner().to_string();
    for marker in ["unknown field `", "missing field `"] {
        if let Some(name) = message
            .strip_prefix(marker)
            .and_then(|rest| rest.split('`').next())
        {
            return name.to_owned();
        }
    }
    match e.path().iter().next() {
        Some(serde_path_to_error::Segment::Map { key }) => key.clone(),
        _ => "body".to_owned(),
    }
}

/// serde's message without its " at line 1 column 12" suffix.
fn data_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// Default size of a page read by cursor ([`QueryParams::take_page`]).
const DEFAULT_PAGE: u64 = 50;

/// A query string, parsed to pairs; endpoints take what they know and
/// [`QueryParams::finish`] refuses the rest.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.uri.query().map(Self::parse).unwrap_or_default())
    }
}

impl QueryParams {
    /// The pairs of a query string (the part after `?`), percent-decoded; never fails
    /// (bytes that are not UTF-8 become U+FFFD, as `form_urlencoded` decodes them).
    #[must_use]
    pub fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Takes a parameter given at most once.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` if it is repeated or empty.
    pub fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut found: Vec<String> = Vec::new();
        self.0.retain(|(k, v)| {
            if k == name {
                found.push(v.clone());
                false
            } else {
                true
            }
        });
        match found.len() {
            0 => Ok(None),
            1 if found[0].is_empty() => Err(ApiError::validation(name, "must not be empty")),
            1 => Ok(found.pop()),
            _ => Err(ApiError::validation(name, "must be given at most once")),
        }
    }

    /// Takes a whole number in `min..=max`.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` if it is not one.
    pub fn take_number(&mut self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(raw) = self.take(name)? else {
            return Ok(None);
        };
        match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::validation(
                name,
                format!("must be a whole number from {min} to {max}"),
            )),
        }
    }

    /// Takes an RFC 3339 timestamp.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` if it is not one.
    pub fn take_time(&mut self, name: &str) -> Result<Option<time::OffsetDateTime>, ApiError> {
        self.take(name)?
            .map(|raw| {
                keyward_core::timefmt::parse(&raw)
                    .map_err(|_| ApiError::validation(name, "must be an RFC 3339 timestamp"))
            })
            .transpose()
    }

    /// Takes the `limit` and `before` of a page read newest first by cursor (request
    /// history, audit logs, delivery logs): how many rows to read, one more than asked
    /// (its presence tells whether another page follows, [`crate::dto::trim_page`]), and
    /// the cursor to read before.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` naming the parameter at fault.
    pub(crate) fn take_page(&mut self) -> Result<(u32, Option<i64>), ApiError> {
        let limit = self.take_number("limit", 1, 1000)?.unwrap_or(DEFAULT_PAGE);
        let before = self
            .take("before")?
            .map(|raw| {
                decode_cursor(&raw)
                    .ok_or_else(|| ApiError::validation("before", "must be a next_before cursor"))
            })
            .transpose()?;
        Ok((u32::try_from(limit).unwrap_or(1000) + 1, before))
    }

    /// Refuses any parameter not taken.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` naming the first unknown parameter.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => {
                // At most 64 characters of it, and `…` only when some were left out.
                let shown: Cow<'_, str> = match name.char_indices().nth(64) {
                    Some((cut, _)) => Cow::Owned(format!("{}…", &name[..cut])),
                    None => Cow::Borrowed(name),
                };
                Err(ApiError::validation(&shown, "unknown query parameter"))
            }
        }
    }
}

/// The `{key_id}` path segment as given. Never rejects: handlers check scopes first and
/// then turn a malformed id into the same `404` as a missing one.
#[derive(Debug)]
pub struct KeyIdSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyIdSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| s)
            .unwrap_or_default();
        Ok(Self(raw))
    }
}

impl KeyIdSegment {
    /// The id, or the `404` a missing key gets.
    ///
    /// # Errors
    /// `RESOURCE_NOT_FOUND` when the segment is not a key id at all.
    pub fn parse(&self) -> Result<keyward_core::KeyId, ApiError> {
        keyward_core::KeyId::parse(&self.0).map_err(|_| ApiError::key_not_found())
    }

    /// The segment as a subscription's id (`{webhook_id}`), or the `404` a missing one
    /// gets.
    ///
    /// # Errors
    /// `RESOURCE_NOT_FOUND` when the segment is not a subscription id at all.
    pub fn webhook_id(&self) -> Result<keyward_core::WebhookId, ApiError> {
        keyward_core::WebhookId::parse(&self.0).map_err(|_| ApiError::webhook_not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields exist to be parsed")]
    struct Body {
        name: Option<String>,
        scopes: Vec<String>,
    }

    fn field(e: &ApiError) -> String {
        e.details.as_ref().unwrap()["field"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, ErrorCode, Option<&str>)] = &[
            (r#"{"scopes": ["read"]"#, ErrorCode::InvalidRequest, None),
            ("not json", ErrorCode::InvalidRequest, None),
            (
                r#"{"scopes": ["read"]} trailing"#,
                ErrorCode::InvalidRequest,
                None,
            ),
            ("", ErrorCode::InvalidRequest, None),
            (
                r#"{"name": "x"}"#,
                ErrorCode::ValidationError,
                Some("scopes"),
            ),
            (
                r#"{"scopes": "read"}"#,
                ErrorCode::ValidationError,
                Some("scopes"),
            ),
            (
                r#"{"scopes": [1]}"#,
                ErrorCode::ValidationError,
                Some("scopes"),
            ),
            (
                r#"{"scopes": [], "nam": 1}"#,
                ErrorCode::ValidationError,
                Some("nam"),
            ),
            (
                r#"{"scopes": [], "name": 5}"#,
                ErrorCode::ValidationError,
                Some("name"),
            ),
            ("[]", ErrorCode::ValidationError, Some("body")),
        ];
        for (raw, code, expected_field) in cases {
            let e = parse_json::<Body>(raw.as_bytes()).unwrap_err();
            assert_eq!(e.code, *code, "case {raw}");
            if let Some(f) = expected_field {
                assert_eq!(field(&e), *f, "case {raw}");
            }
        }
    }

    #[test]
    fn a_field_name_quoted_in_the_clients_own_text_is_not_taken_for_the_field() {
        // Found by the `json_body` fuzz target: a string holding "missing field `" made
        // the error name whatever followed it.
        let e = parse_json::<Body>(br#""missing field `xx""#).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationError);
        assert_eq!(field(&e), "body");
        let e = parse_json::<Body>(br#"{"scopes": "unknown field `name`"}"#).unwrap_err();
        assert_eq!(field(&e), "scopes");
    }

    #[test]
    fn an_array_is_refused_even_where_its_items_would_fill_the_fields() {
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "fields exist to be parsed")]
        struct AllOptional {
            per_minute: Option<u32>,
            per_day: Option<u32>,
        }
        for body in [&b"[null, null]"[..], b"  [1, 2]", b"[]"] {
            let e = parse_json::<AllOptional>(body).unwrap_err();
            assert_eq!(e.code, ErrorCode::ValidationError);
            assert_eq!(field(&e), "body");
        }
        assert!(parse_json::<AllOptional>(br#"{"per_minute": 1}"#).is_ok());
    }

    #[test]
    fn a_nested_struct_is_an_object_or_null_never_an_array() {
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "fields exist to be parsed")]
        struct Window {
            per_minute: Option<u32>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "fields exist to be parsed")]
        struct Outer {
            #[serde(default, deserialize_with = "object")]
            limits: Option<Window>,
        }
        let e = parse_json::<Outer>(br#"{"limits": [null]}"#).unwrap_err();
        assert_eq!(
            (e.code, field(&e).as_str()),
            (ErrorCode::ValidationError, "limits")
        );
        assert!(parse_json::<Outer>(br#"{"limits": null}"#).is_ok());
        assert!(parse_json::<Outer>(br#"{}"#).is_ok());
        assert!(parse_json::<Outer>(br#"{"limits": {"per_minute": 3}}"#).is_ok());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
    }

    #[test]
    fn query_params_refuse_repeats_and_unknowns() {
        let mut q = QueryParams(vec![("limit".into(), "5".into()), ("x".into(), "1".into())]);
        assert_eq!(q.take_number("limit", 1, 10).unwrap(), Some(5));
        assert_eq!(field(&q.finish().unwrap_err()), "x");
        let mut q = QueryParams(vec![
            ("limit".into(), "5".into()),
            ("limit".into(), "6".into()),
        ]);
        assert!(q.take_number("limit", 1, 10).is_err());
        let mut q = QueryParams(vec![("limit".into(), "0".into())]);
        assert!(q.take_number("limit", 1, 10).is_err());
        let mut q = QueryParams(vec![("since".into(), "yesterday".into())]);
        assert_eq!(field(&q.take_time("since").unwrap_err()), "since");
    }

    #[test]
    fn an_unknown_parameter_is_named_whole_up_to_64_characters_and_cut_after() {
        // Found by the `query_path` fuzz target: 33 two-byte characters were marked cut.
        let unknown = |name: &str| {
            field(
                &QueryParams::parse(&format!("{name}=1"))
                    .finish()
                    .unwrap_err(),
            )
        };
        let short = "\u{e9}".repeat(33);
        assert_eq!(unknown(&short), short);
        let exact = "\u{e9}".repeat(64);
        assert_eq!(unknown(&exact), exact);
        let long = format!("{exact}x");
        assert_eq!(unknown(&long), format!("{exact}…"));
        assert_eq!(unknown(&"a".repeat(65)), format!("{}…", "a".repeat(64)));
    }

    /// A body whose client stops sending after `sent` and then fails.
    async fn broken_off(sent: &'static [u8]) -> axum::body::Body {
        let (mut sender, body) = http_body_util::Channel::<Bytes, std::io::Error>::new(1);
        sender.send_data(Bytes::from_static(sent)).await.unwrap();
        sender.abort(std::io::Error::other("connection reset by peer"));
        axum::body::Body::new(body)
    }

    #[tokio::test]
    async fn a_body_broken_off_mid_read_is_a_400_and_not_a_413() {
        let read = read_body(broken_off(br#"{"scopes": ["re"#).await, 1024).await;
        assert!(matches!(read, Err(BodyReadError::Unreadable)), "{read:?}");
        let e = JsonBody {
            json_type: true,
            bytes: read,
        }
        .parse::<Body>()
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.message, "the request body could not be read");

        let over = read_body(axum::body::Body::from(vec![b' '; 1025]), 1024).await;
        assert!(
            matches!(over, Err(BodyReadError::TooLarge(1024))),
            "{over:?}"
        );
        let exact = read_body(axum::body::Body::from(vec![b' '; 1024]), 1024).await;
        assert_eq!(exact.map(|b| b.len()).ok(), Some(1024));
    }

    #[tokio::test]
    async fn a_body_that_timed_out_is_a_408_invalid_request() {
        let (mut sender, body) = http_body_util::Channel::<Bytes, BodyTimedOut>::new(1);
        sender.send_data(Bytes::from_static(b"{")).await.unwrap();
        sender.abort(BodyTimedOut);
        let read = read_body(axum::body::Body::new(body), 1024).await;
        assert!(matches!(read, Err(BodyReadError::TimedOut)), "{read:?}");
        let e = JsonBody {
            json_type: true,
            bytes: read,
        }
        .parse::<Body>()
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.status, axum::http::StatusCode::REQUEST_TIMEOUT);
    }
}
