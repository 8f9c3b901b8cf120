//! Wire types shared by several endpoints. Storage records are never serialised directly.

use keyward_core::{KeyName, ScopeSet, timefmt};
use keyward_store::ApiKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A key's status on the wire.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatusDto {
    /// Authenticates.
    Active,
    /// Disabled by a caller.
    Inactive,
    /// `expires_at` has passed.
    Expired,
}

impl From<keyward_core::KeyStatus> for KeyStatusDto {
    fn from(s: keyward_core::KeyStatus) -> Self {
        match s {
            keyward_core::KeyStatus::Active => Self::Active,
            keyward_core::KeyStatus::Inactive => Self::Inactive,
            keyward_core::KeyStatus::Expired => Self::Expired,
        }
    }
}

/// The API key object of the seed document, plus `hint` and `metadata`. It borrows the
/// stored key and is serialised straight from it: no copies of names, scopes or
/// metadata per response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyObject<'a> {
    /// Unique, opaque id (`key_01J…`).
    #[schema(value_type = String, example = "key_01JD8X4ZQ5V7W0000000000000")]
    pub key_id: &'a str,
    /// Optional label.
    #[schema(value_type = Option<String>, example = "Production Key")]
    pub name: Option<&'a str>,
    /// Permission scopes, in the order given.
    #[schema(value_type = Vec<String>)]
    #[serde(serialize_with = "serialize_scopes")]
    pub scopes: &'a ScopeSet,
    /// When the key last authenticated (lags by at most a second); `null` if never.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(serialize_with = "serialize_optional_time")]
    pub last_used: Option<OffsetDateTime>,
    /// Creation time.
    #[schema(value_type = String, format = DateTime)]
    #[serde(serialize_with = "serialize_time")]
    pub created_at: OffsetDateTime,
    /// When the key expires; `null` if never.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(serialize_with = "serialize_optional_time")]
    pub expires_at: Option<OffsetDateTime>,
    /// Current status.
    pub status: KeyStatusDto,
    /// Display hint of the current secret: prefix, first 4, last 4.
    #[schema(value_type = String, example = "kw_AbCd…wxyz")]
    pub hint: &'a str,
    /// Caller-defined object.
    #[schema(value_type = Object)]
    pub metadata: &'a Map<String, Value>,
}

impl<'a> ApiKeyObject<'a> {
    /// The wire form of a key at `now` (which decides `expired`).
    #[must_use]
    pub fn new(key: &'a ApiKey, now: OffsetDateTime) -> Self {
        Self {
            key_id: key.key_id.as_str(),
            name: key.name.as_ref().map(KeyName::as_str),
            scopes: &key.scopes,
            last_used: key.last_used,
            created_at: key.created_at,
            expires_at: key.expires_at,
            status: key.status_at(now).into(),
            hint: &key.hint,
            metadata: key.metadata.as_map(),
        }
    }
}

/// Serialises a time as API.md §Times asks, without allocating.
///
/// # Errors
/// The serializer's.
pub fn serialize_time<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 20];
    s.serialize_str(timefmt::format_into(*t, &mut buf))
}

/// [`serialize_time`] for an optional time (`null` when absent).
///
/// # Errors
/// The serializer's.
pub fn serialize_optional_time<S: Serializer>(
    t: &Option<OffsetDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

fn serialize_scopes<S: Serializer>(scopes: &&ScopeSet, s: S) -> Result<S::Ok, S::Error> {
    serialize_scope_set(scopes, s)
}

/// Serialises scopes as a list of strings, in order.
///
/// # Errors
/// The serializer's.
pub fn serialize_scope_set<S: Serializer>(scopes: &ScopeSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(scopes.iter().map(keyward_core::Scope::as_str))
}

/// A key object with its secret: the one response that shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyWithSecret<'a> {
    /// The key.
    #[serde(flatten)]
    pub key: ApiKeyObject<'a>,
    /// The secret. Shown once; store it now.
    #[schema(example = "kw_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AB")]
    pub api_key: &'a str,
}

/// For `PATCH` fields where `null` means something: absent is `None`, `null` is
/// `Some(None)`.
///
/// # Errors
/// The inner type's error.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The opaque cursor of history and audit pages.
#[must_use]
pub fn encode_cursor(seq: i64) -> String {
    format!("cur_{seq}")
}

/// Reads a cursor made by [`encode_cursor`].
#[must_use]
pub fn decode_cursor(raw: &str) -> Option<i64> {
    raw.strip_prefix("cur_")
        .filter(|digits| {
            !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|digits| digits.parse().ok())
}
