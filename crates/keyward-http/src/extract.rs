//! Our own extractors, so that no rejection ever leaks axum's plain text: bodies, query
//! strings and path segments all fail with the documented JSON errors.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

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
    Unreadable,
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        let bytes = read_body(req.into_body(), state.body_limit).await;
        Ok(Self { json_type, bytes })
    }
}

/// The whole body, reading no more than `limit` bytes of it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyReadError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over_limit {
            BodyReadError::TooLarge(limit)
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
        let bytes = self.bytes()?;
        if !self.json_type {
            return Err(ApiError::invalid_request(
                "the request body must be JSON with content-type application/json",
            ));
        }
        parse_json(bytes)
    }

    fn bytes(&self) -> Result<&Bytes, ApiError> {
        match &self.bytes {
            Ok(bytes) => Ok(bytes),
            Err(BodyReadError::TooLarge(limit)) => Err(ApiError::payload_too_large(*limit)),
            Err(BodyReadError::Unreadable) => Err(ApiError::invalid_request(
                "the request body could not be read",
            )),
        }
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

fn is_json_content_type(value: &str) -> bool {
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

/// The top-level field an error is about: the first path segment, or the name in
/// serde's "missing field" / "unknown field" messages, or `body` for the whole body.
fn field_of(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let message = e.inner().to_string();
    for marker in ["unknown field `", "missing field `"] {
        if let Some(name) = message
            .split(marker)
            .nth(1)
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

/// A query string, parsed to pairs; endpoints take what they know and
/// [`QueryParams::finish`] refuses the rest.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pairs = parts
            .uri
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self(pairs))
    }
}

impl QueryParams {
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

    /// Refuses any parameter not taken.
    ///
    /// # Errors
    /// `VALIDATION_ERROR` naming the first unknown parameter.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => {
                let shown: Cow<'_, str> = if name.len() > 64 {
                    Cow::Owned(format!("{}…", name.chars().take(64).collect::<String>()))
                } else {
                    Cow::Borrowed(name)
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
}
